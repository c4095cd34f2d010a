"""Folder named by ``nnUNet_extTrainer``; see ``mmpretrain_trainers.py``."""
