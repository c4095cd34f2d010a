"""nnU-Net trainers of the plugin. nnU-Net finds them by name through the folder that
``nnUNet_extTrainer`` points at (``nnunet_mmpretrain_ext``); every class name starts with
``nnUNetTrainerMM`` so it never collides with nnU-Net's own trainers."""
