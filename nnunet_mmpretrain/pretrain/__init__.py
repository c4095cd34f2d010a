"""Pure-PyTorch building blocks of the pretraining stage (no nnU-Net imports): masking,
cross_modal, templates, contrastive, dad, objectives, heads. Import the submodules directly."""
