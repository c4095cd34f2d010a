"""Image classification on nnU-Net's preprocessing: class tables (labels), metrics from
scikit-learn and cross-validation summaries (metrics), whole-case data (data), the encoder +
head network (network) and prediction (predict). The trainer is
:mod:`nnunet_mmpretrain.classification.trainer`; the commands :mod:`nnunet_mmpretrain.cli.classify`."""
