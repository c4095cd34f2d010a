"""The mixin that starts an nnU-Net trainer from a pretrained encoder bundle (fine-tuning,
classification, benchmark cells): where the bundle and the stem strategy come from, and the
injection when a fresh training starts (see :mod:`nnunet_mmpretrain.training.finetune`)."""
from __future__ import annotations

import logging
import os

from nnunet_mmpretrain.io_utils import atomic_write_json
from nnunet_mmpretrain.training.errors import FinetuneError
from nnunet_mmpretrain.transfer.bundle import load_bundle
from nnunet_mmpretrain.transfer.inject import inject_bundle
from nnunet_mmpretrain.transfer.plans import resolve_bundle
from nnunet_mmpretrain.transfer.stem import channel_modalities_from_dataset_json

ENV_BUNDLE = "nnUNet_mmpretrain_bundle"
ENV_STEM = "nnUNet_mmpretrain_stem"
log = logging.getLogger(__name__)


class PretrainedEncoder:
    """Mixin (before the nnU-Net trainer class): inject the bundle when a fresh training starts."""

    def bundle_settings(self):
        """(bundle path or None, stem strategy). The plans entry is resolved against the current
        ``$nnUNet_results`` / ``$nnUNet_preprocessed`` (it survives moving the folders); a missing
        bundle raises :class:`FinetuneError` naming the path looked at and the one recorded."""
        transfer = self.plans_manager.plans.get("mmpretrain_transfer", {})
        strategy = os.environ.get(ENV_STEM) or transfer.get("stem_strategy") or "modality"
        if os.environ.get(ENV_BUNDLE):
            if transfer.get("bundle"):
                msg = (f"OVERRIDE: ${ENV_BUNDLE} = {os.environ[ENV_BUNDLE]} is used instead of the plans' bundle "
                       f"{transfer['bundle']} (mmpretrain_transfer.bundle); unset it to use the plans' bundle")
                log.warning("%s", msg)
                if hasattr(self, "print_to_log_file"):
                    self.print_to_log_file("WARNING " + msg)
            return os.environ[ENV_BUNDLE], strategy
        path, recorded = resolve_bundle(transfer)
        if path and not os.path.exists(path):
            raise FinetuneError(f"the plans' encoder bundle is missing: looked for {path} (recorded as {recorded} "
                                f"when the plans were written); put the bundle there, set {ENV_BUNDLE}=FOLDER, or "
                                f"transfer the plans again with --bundle FOLDER.")
        return path, strategy

    def bundle_path(self) -> str:
        """The bundle path; :class:`FinetuneError` naming the fix when none is configured."""
        path, _ = self.bundle_settings()
        if not path:
            raise FinetuneError(f"{type(self).__name__} needs a pretrained encoder bundle: export {ENV_BUNDLE}=FOLDER "
                                f"(made by nnUNetv2_mmpretrain_export) or transfer plans with --bundle FOLDER.")
        return path

    def on_train_start(self):
        # the bundle is loaded and injected before nnU-Net starts its data loader workers: a refusal
        # (FinetuneError, BundleError) is then the last line, not "background workers are no longer alive"
        if not self.was_initialized:
            self.initialize()
        if self.current_epoch == 0:
            self.load_pretrained_encoder()
        super().on_train_start()

    def load_pretrained_encoder(self):
        path = self.bundle_path()
        _, strategy = self.bundle_settings()
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
