"""``nnUNetTrainerMMFinetune``: stock nnU-Net segmentation training that starts from a pretrained
encoder bundle.

    export nnUNet_mmpretrain_bundle=/path/to/bundle       # or: transfer_plans --bundle writes it into the plans
    nnUNetv2_train DATASET 3d_fullres FOLD -tr nnUNetTrainerMMFinetune -p mmPretrainPlans

The bundle is named by ``$nnUNet_mmpretrain_bundle`` or, when that is unset, by the plans entry
``mmpretrain_transfer.bundle``; the stem strategy by ``$nnUNet_mmpretrain_stem`` or
``mmpretrain_transfer.stem_strategy`` (default ``modality``). The weights are injected when a
fresh training starts (not on ``--c`` / ``--val``, where the checkpoint holds them), after nnU-Net
built (and maybe compiled / DDP-wrapped) the network; what was loaded, adapted or left random is
written to the log and to ``pretrained_weights_report.json``. Inference is plain nnU-Net: the
architecture is the plans' own, so ``nnUNetv2_predict -tr nnUNetTrainerMMFinetune`` works without
the bundle.
"""
from __future__ import annotations

import logging
import os

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_mmpretrain.training.finetune_augment import AlignedTemplateSubstitution, DADAugmentation

ENV_BUNDLE = "nnUNet_mmpretrain_bundle"
ENV_STEM = "nnUNet_mmpretrain_stem"


class FinetuneError(RuntimeError):
    """A clear, user-facing problem with the bundle or its settings."""


def freeze_encoder_stages(network, key_to_stem: str = "encoder.stem") -> int:
    """Set ``requires_grad=False`` on every ``encoder.*`` parameter outside the stem
    (``key_to_stem``); returns the number of parameter tensors frozen. The stem (adapted to the
    downstream channels), the decoder and the heads keep training. Works on wrapped networks."""
    from nnunet_mmpretrain.transfer.inject import unwrap
    n = 0
    for k, p in unwrap(network).named_parameters():
        if k.startswith("encoder.") and not k.startswith(key_to_stem + "."):
            p.requires_grad_(False)
            n += 1
    return n


class PretrainedEncoder:
    """Mixin (before the nnU-Net trainer class): inject the bundle when a fresh training starts."""

    freeze_encoder: bool = False     # keep the loaded encoder stages fixed (the stem still adapts)

    def bundle_settings(self):
        """(bundle path or None, stem strategy). The plans entry is resolved against the current
        ``$nnUNet_results`` / ``$nnUNet_preprocessed`` (it survives moving the folders); a missing
        bundle raises :class:`FinetuneError` naming the path looked at and the one recorded."""
        from nnunet_mmpretrain.planning.transfer import resolve_bundle
        transfer = self.plans_manager.plans.get("mmpretrain_transfer", {})
        strategy = os.environ.get(ENV_STEM) or transfer.get("stem_strategy") or "modality"
        if os.environ.get(ENV_BUNDLE):
            if transfer.get("bundle"):
                msg = (f"OVERRIDE: ${ENV_BUNDLE} = {os.environ[ENV_BUNDLE]} is used instead of the plans' bundle "
                       f"{transfer['bundle']} (mmpretrain_transfer.bundle); unset it to use the plans' bundle")
                logging.getLogger(__name__).warning("%s", msg)
                if hasattr(self, "print_to_log_file"):
                    self.print_to_log_file("WARNING " + msg)
            return os.environ[ENV_BUNDLE], strategy
        path, recorded = resolve_bundle(transfer)
        if path and not os.path.exists(path):
            raise FinetuneError(f"the plans' encoder bundle is missing: looked for {path} (recorded as {recorded} "
                                f"when the plans were written); put the bundle there, set {ENV_BUNDLE}=FOLDER, or "
                                f"transfer the plans again with --bundle FOLDER.")
        return path, strategy

    def on_train_start(self):
        super().on_train_start()
        if self.current_epoch == 0:
            self.load_pretrained_encoder()
        if self.freeze_encoder:   # every start, also on --c (a checkpoint does not keep requires_grad)
            from nnunet_mmpretrain.transfer.inject import unwrap
            stem = getattr(unwrap(self.network), "key_to_stem", "encoder.stem")
            n = freeze_encoder_stages(self.network, stem)
            self.print_to_log_file(f"encoder frozen: {n} parameter tensors fixed ({stem}, decoder and heads train)")

    def load_pretrained_encoder(self):
        from nnunet_mmpretrain.io_utils import atomic_write_json
        from nnunet_mmpretrain.transfer.bundle import load_bundle
        from nnunet_mmpretrain.transfer.inject import inject_bundle
        from nnunet_mmpretrain.transfer.stem import channel_modalities_from_dataset_json
        path, strategy = self.bundle_settings()
        if not path:
            raise FinetuneError(f"{type(self).__name__} needs a pretrained encoder bundle: export {ENV_BUNDLE}=FOLDER "
                                f"(made by nnUNetv2_mmpretrain_export) or transfer plans with --bundle FOLDER.")
        bundle = load_bundle(path)
        mods = channel_modalities_from_dataset_json(self.dataset_json, keep_unknown=True)  # names kept for the report
        cm = self.configuration_manager
        report = inject_bundle(self.network, bundle, mods, strategy,
                               arch={"network_class_name": cm.network_arch_class_name,
                                     "arch_kwargs": cm.network_arch_init_kwargs})
        self.print_to_log_file(f"bundle {path}\n{report.summary()}")
        if self.local_rank == 0:
            atomic_write_json({"bundle": os.path.abspath(path), **report.to_dict()},
                              os.path.join(self.output_folder, "pretrained_weights_report.json"))


class WarmupPoly:
    """Linear warm-up over ``warmup`` epochs, then nnU-Net's polynomial decay (exponent 0.9)."""

    def __init__(self, optimizer, initial_lr: float, num_epochs: int, warmup: int):
        self.optimizer, self.initial_lr, self.num_epochs, self.warmup = optimizer, initial_lr, num_epochs, warmup

    def step(self, epoch: int) -> None:
        if epoch < self.warmup:
            lr = self.initial_lr * (epoch + 1) / (self.warmup + 1)
        else:
            lr = self.initial_lr * (1 - (epoch - self.warmup) / max(1, self.num_epochs - self.warmup)) ** 0.9
        for g in self.optimizer.param_groups:
            g["lr"] = lr


class LinearWarmup:
    """Mixin: nnU-Net's SGD with a linear warm-up of ``warmup_epochs`` (nnssl uses 50 of 1000)."""

    warmup_epochs: int = 50

    def configure_optimizers(self):
        opt, _ = super().configure_optimizers()
        return opt, WarmupPoly(opt, self.initial_lr, self.num_epochs, self.warmup_epochs)


class RandomTemplateSubstitution:
    """Mixin for bundles whose templates have no place in the world (corpus not on one grid):
    after nnU-Net's spatial transform, with probability ``template_p`` a sample gets
    1..min(3, C-1) channels replaced by a crop of their modality's template at a random position.
    The anatomy of the substituted channel does not match the others; use
    :class:`TemplateSubstitution` (aligned) whenever the bundle has template geometry."""

    template_p: float = 0.75

    def get_training_transforms(self, *args, **kwargs):
        from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
        from nnunet_mmpretrain.modalities import channels_to_modalities
        from nnunet_mmpretrain.transfer.bundle import load_bundle
        from nnunet_mmpretrain.transfer.substitution import TemplateBank, TemplateSubstitutionTransform
        composed = nnUNetTrainer.get_training_transforms(*args, **kwargs)
        path, _ = self.bundle_settings()
        if not path:
            raise FinetuneError(f"{type(self).__name__} needs a bundle with templates: export {ENV_BUNDLE}=FOLDER.")
        bank = TemplateBank.from_bundle(load_bundle(path), target_spacing=self.configuration_manager.spacing,
                                        position_free=True)
        t = TemplateSubstitutionTransform(bank, channels_to_modalities(self.dataset_json["channel_names"]),
                                          p_per_sample=self.template_p)
        at = next((i + 1 for i, x in enumerate(composed.transforms) if isinstance(x, SpatialTransform)), 0)
        composed.transforms.insert(at, t)
        self.print_to_log_file(f"template substitution (random positions) after transform #{at} (p={self.template_p}; "
                               f"templates: {', '.join(bank.modalities)})")
        return composed


TemplateSubstitution = AlignedTemplateSubstitution


class nnUNetTrainerMMFinetune(PretrainedEncoder, nnUNetTrainer):
    """nnU-Net's default schedule (1000 epochs), pretrained encoder."""


class nnUNetTrainerMMFinetune_frozen(PretrainedEncoder, nnUNetTrainer):
    """Linear-probe-like: encoder stages frozen, stem and decoder trained."""
    freeze_encoder = True


class nnUNetTrainerMMFinetune_warmup(LinearWarmup, PretrainedEncoder, nnUNetTrainer):
    """Linear LR warm-up over 50 epochs, then nnU-Net's poly decay."""


class nnUNetTrainerMMFinetune_templateAug(TemplateSubstitution, PretrainedEncoder, nnUNetTrainer):
    """Pretrained encoder + BrainMVP's template substitution, templates aligned with each case
    (k ~ U{0..min(3, C-1)} channels per sample)."""


class nnUNetTrainerMMFinetune_templateAugConsistency(TemplateSubstitution, PretrainedEncoder, nnUNetTrainer):
    """Template substitution + BrainMVP's consistency term: two differently substituted copies of
    each sample, MSE between their bottleneck features x 0.1."""
    consistency_weight = 0.1


class nnUNetTrainerMMFinetune_templateAugRandom(RandomTemplateSubstitution, PretrainedEncoder, nnUNetTrainer):
    """Template substitution at random positions (for bundles of corpora that are not on one grid)."""


class nnUNetTrainerMMFinetune_dad(DADAugmentation, PretrainedEncoder, nnUNetTrainer):
    """Pretrained encoder + domain adaptive denormalization of the input channels (p = 0.3)."""
