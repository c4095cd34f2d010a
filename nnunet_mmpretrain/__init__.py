"""nnU-Net v2 plugin: multi-modal self-supervised pretraining for 3D medical images."""
__version__ = "0.1.0"
