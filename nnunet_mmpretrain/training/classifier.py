"""``nnUNetTrainerMMClassifier``: image classification (tumour grade, diagnosis) on nnU-Net's
preprocessing, splits and folders, with the plans' encoder (pretrained or from scratch).

    nnUNetv2_train DATASET CONFIG FOLD -tr nnUNetTrainerMMClassifier -p PLANS

This module only wires pure pieces into nnU-Net's trainer:

* labels: ``classes.csv`` (:mod:`nnunet_mmpretrain.classification.labels`), checked against the
  preprocessed cases before anything else; a bad table ends the command with one line, exit code 2;
* network: the plans' encoder + global average pooling + a small head
  (:mod:`~nnunet_mmpretrain.classification.network`); the encoder bundle (``$nnUNet_mmpretrain_bundle``
  or the plans entry of ``transfer_plans --bundle``) is injected with the segmentation stem
  strategies when configured (``_scratch`` never loads one, ``_linearProbe`` needs one);
* data: the whole preprocessed case cropped / padded to the planned input size, nnU-Net's
  augmentation, class-balanced sampling (:mod:`~nnunet_mmpretrain.classification.data`);
* loss: cross-entropy (optional label smoothing); AdamW, linear warm-up then cosine;
* folds: nnU-Net's ``splits_final.json`` (written class-stratified when missing); after training the
  validation cases are classified, ``summary.json`` + ``validation_probabilities.csv`` are written
  in the fold folder (:mod:`~nnunet_mmpretrain.classification.metrics`).

Plans keys read from the configuration (both optional): ``classification_input_size`` [X, Y, Z]
(default: the largest preprocessed case, rounded up to the encoder's total stride) and
``classification_batch_size`` (default: the configuration's batch size).

nnU-Net's progress plot is kept: its "pseudo dice" is the balanced accuracy of the validation
batches (it also selects ``checkpoint_best.pth``). Checkpoints load with ``weights_only=True``.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from time import time
from typing import List, Optional

import numpy as np
import torch
from torch import distributed as dist

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_mmpretrain.classification.labels import ClassLabelError, load_labels_for_plans
from nnunet_mmpretrain.training.finetune import FinetuneError, PretrainedEncoder
from nnunet_mmpretrain.training.schedules import Schedule, ShortSchedule, backward_and_step, restore_training_state

log = logging.getLogger(__name__)

__all__ = ["MMClassifierBase"] + [f"nnUNetTrainerMMClassifier{v}" for v in (
    "", "_scratch", "_linearProbe", "_decoderFeatures", "_labelSmoothing", "_demo", "_scratch_demo")]


class MMClassifierBase(PretrainedEncoder, nnUNetTrainer):
    """Everything but the schedule; concrete trainers add ``ShortSchedule`` (or a benchmark cell)."""

    features: str = "bottleneck"       # or "decoder": pooled features of the last decoder stage
    dropout: float = 0.0
    head_hidden: int = 0               # 0: linear head; > 0: one hidden layer of that width
    label_smoothing: float = 0.0
    balanced_sampling: bool = True
    use_bundle: Optional[bool] = None  # None: when configured; False: never (scratch); True: required
    linear_probe: bool = False         # encoder (stem included) frozen, only the head trains
    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup_epochs: int = 5
    grad_clip: float = 12.0

    def __init__(self, plans: dict, configuration: str, fold, dataset_json: dict, device=torch.device("cuda")):
        try:                               # before nnU-Net makes any folder or log file
            self.class_table = load_labels_for_plans(plans, configuration, dataset_json)
        except ClassLabelError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.enable_deep_supervision = False
        self.input_size: Optional[List[int]] = None
        self._best_ema = None
        self._weights_from = "end of training"

    def _log(self, msg: str) -> None:
        log.info("%s", msg)
        self.print_to_log_file(msg)

    def _net(self):
        from nnunet_mmpretrain.transfer.inject import unwrap
        return unwrap(self.network)

    # ------------------------------------------------------------ set-up
    def _plan_input_size(self) -> List[int]:
        from nnunet_mmpretrain.classification.network import plan_input_size, total_stride
        given = self.configuration_manager.configuration.get("classification_input_size")
        if given:
            return [int(s) for s in given]
        folder = self.preprocessed_dataset_folder
        ids = self.dataset_class.get_identifiers(folder)
        ds = self.dataset_class(folder, ids)
        return plan_input_size([ds.load_case(k)[0].shape[1:] for k in ids], total_stride(self.configuration_manager))

    def initialize(self):
        if self.was_initialized:
            return
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
        from nnunet_mmpretrain.classification.network import build_classifier
        if self.device.type == "cpu" and os.environ.get("OMP_NUM_THREADS", "").isdigit():
            torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))   # nnU-Net takes every core
        self._set_batch_size_and_oversample()
        self.batch_size = int(self.configuration_manager.configuration.get("classification_batch_size",
                                                                           self.batch_size))
        self.num_input_channels = determine_num_input_channels(self.plans_manager, self.configuration_manager,
                                                               self.dataset_json)
        self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        self.input_size = self.input_size or self._plan_input_size()
        self.network = build_classifier(self.configuration_manager, self.num_input_channels,
                                        self.class_table.num_classes, self.features, self.dropout,
                                        self.head_hidden).to(self.device)
        if self.linear_probe:              # every start, also on --c (checkpoints do not keep requires_grad)
            for p in self.network.encoder.parameters():
                p.requires_grad_(False)
        self.optimizer, self.lr_scheduler = self.configure_optimizers()
        if self.is_ddp:
            from torch.nn.parallel import DistributedDataParallel as DDP
            self.network = DDP(torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.network),
                               device_ids=[self.local_rank] if self.device.type == "cuda" else None)
        self.loss = torch.nn.CrossEntropyLoss(label_smoothing=self.label_smoothing)
        self.was_initialized = True
        n_train = sum(p.numel() for p in self.network.parameters() if p.requires_grad)
        counts = ", ".join(f"{self.class_table.names[k]}: {c}" for k, c in self.class_table.counts().items())
        self._log(f"classifier: {type(self._net().encoder).__name__} of {self.configuration_manager.network_arch_class_name} "
                  f"+ {self.features} pooling + head ({n_train:,} trainable parameters); whole-case input "
                  f"{self.input_size}, batch {self.batch_size}; classes ({self.class_table.path}): {counts}")

    def configure_optimizers(self):
        from nnunet_mmpretrain.training.pretrain import WarmupCosine
        params = [p for p in self.network.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        return opt, WarmupCosine(opt, self.num_epochs, self.warmup_epochs)

    def do_split(self):
        """nnU-Net's ``splits_final.json``; when there is none yet, it is written with class-stratified folds."""
        path = os.path.join(self.preprocessed_dataset_folder_base, "splits_final.json")
        if self.fold != "all" and not os.path.isfile(path) and self.local_rank == 0:
            from nnunet_mmpretrain.classification.data import stratified_splits
            from nnunet_mmpretrain.io_utils import atomic_write_json
            atomic_write_json(stratified_splits(self.class_table.labels), path)
            self._log(f"wrote class-stratified folds to {path}")
        return super().do_split()

    def set_deep_supervision_enabled(self, enabled: bool):
        pass                               # no segmentation output

    def plot_network_architecture(self):
        pass

    def load_pretrained_encoder(self):
        path, _ = self.bundle_settings()
        if self.use_bundle and not path:
            raise FinetuneError(f"{type(self).__name__} needs a pretrained encoder bundle: export "
                                f"nnUNet_mmpretrain_bundle=FOLDER or transfer plans with --bundle FOLDER.")
        if self.use_bundle is False or not path:
            return self._log("encoder from scratch (" + ("this trainer never loads a bundle)" if self.use_bundle is
                                                         False else "no encoder bundle configured)"))
        super().load_pretrained_encoder()

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        """nnU-Net's rules, applied to the whole-case input size instead of the patch size."""
        from nnunetv2.configuration import ANISO_THRESHOLD
        from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size
        size = list(self.input_size)
        dummy_2d = (max(size) / size[0]) > ANISO_THRESHOLD
        rot = (-np.pi, np.pi) if dummy_2d else (-30. / 360 * 2. * np.pi, 30. / 360 * 2. * np.pi)
        initial = get_patch_size(size, rot, rot, rot, (0.85, 1.25))
        if dummy_2d:
            initial[0] = size[0]
        self.inference_allowed_mirroring_axes = (0, 1, 2)
        return rot, dummy_2d, initial, (0, 1, 2)

    def get_dataloaders(self):
        from nnunet_mmpretrain.classification.data import ClassificationLoader, background_loaders
        lm, cm = self.label_manager, self.configuration_manager
        rot, dummy_2d, initial, mirror = self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        tr_t = self.get_training_transforms(self.input_size, rot, None, mirror, dummy_2d,
                                            use_mask_for_norm=cm.use_mask_for_norm, is_cascaded=False,
                                            foreground_labels=lm.foreground_labels, regions=None,
                                            ignore_label=lm.ignore_label)
        val_t = self.get_validation_transforms(None, is_cascaded=False, foreground_labels=lm.foreground_labels,
                                               regions=None, ignore_label=lm.ignore_label)
        ds_tr, ds_val = self.get_tr_and_val_datasets()
        labels = self.class_table.labels
        dl_tr = ClassificationLoader(ds_tr, self.batch_size, initial, self.input_size, lm, labels,
                                     self.balanced_sampling, tr_t)
        dl_val = ClassificationLoader(ds_val, self.batch_size, self.input_size, self.input_size, lm, labels, False, val_t)
        return background_loaders(dl_tr, dl_val, pin_memory=self.device.type == "cuda")

    def on_train_start(self):
        super().on_train_start()           # nnU-Net's set-up, then the bundle (PretrainedEncoder)
        from nnunet_mmpretrain.io_utils import atomic_write_json
        if self.local_rank == 0:
            atomic_write_json({"classes": self.class_table.names_json(), "class_table": self.class_table.path,
                               "input_size": self.input_size, "features": self.features,
                               "counts": {str(k): v for k, v in self.class_table.counts().items()}},
                              os.path.join(self.output_folder_base, "classification.json"))

    # ------------------------------------------------------------ steps
    def _forward(self, batch):
        from torch import autocast
        from nnunetv2.utilities.helpers import dummy_context
        x = batch["data"].to(self.device, non_blocking=True)
        y = batch["class"].to(self.device, non_blocking=True)
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            logits = self.network(x)
            loss = self.loss(logits, y)
        return logits, y, loss

    def train_step(self, batch: dict) -> dict:
        self.optimizer.zero_grad(set_to_none=True)
        _, _, loss = self._forward(batch)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        backward_and_step(loss, self.optimizer, self.grad_scaler, params, self.grad_clip)
        return {"loss": loss.detach().cpu().numpy()}

    def validation_step(self, batch: dict) -> dict:
        logits, y, loss = self._forward(batch)
        return {"loss": loss.detach().cpu().numpy(), "pred": logits.argmax(1).cpu().numpy(), "true": y.cpu().numpy()}

    def on_validation_epoch_end(self, val_outputs: List[dict]):
        from sklearn import metrics as skm
        loss = np.array([o["loss"] for o in val_outputs], dtype=float)
        pred = np.concatenate([o["pred"] for o in val_outputs])
        true = np.concatenate([o["true"] for o in val_outputs])
        if self.is_ddp:
            got = [None] * dist.get_world_size()
            dist.all_gather_object(got, (loss, pred, true))
            loss, pred, true = (np.concatenate([g[i] for g in got]) for i in range(3))
        labels = list(range(self.class_table.num_classes))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bacc = float(skm.balanced_accuracy_score(true, pred))
            recall = skm.recall_score(true, pred, labels=labels, average=None, zero_division=np.nan)
        self.logger.log("mean_fg_dice", bacc, self.current_epoch)
        self.logger.log("dice_per_class_or_region", [float(r) for r in recall], self.current_epoch)
        self.logger.log("val_losses", float(loss.mean()), self.current_epoch)

    def on_epoch_end(self):
        g = lambda k: self.logger.get_value(k, step=-1)
        self.logger.log("epoch_end_timestamps", time(), self.current_epoch)
        self._log(f"train loss {g('train_losses'):.4f} | val loss {g('val_losses'):.4f} | val batches: balanced "
                  f"accuracy {g('mean_fg_dice'):.3f}, recall per class {[round(r, 3) for r in g('dice_per_class_or_region')]}"
                  f" | epoch time {g('epoch_end_timestamps') - g('epoch_start_timestamps'):.2f} s")
        if (self.current_epoch + 1) % self.save_every == 0 and self.current_epoch != self.num_epochs - 1:
            self.save_checkpoint(os.path.join(self.output_folder, "checkpoint_latest.pth"))
        if self._best_ema is None or g("ema_fg_dice") > self._best_ema:
            self._best_ema = g("ema_fg_dice")
            self.save_checkpoint(os.path.join(self.output_folder, "checkpoint_best.pth"))
        if self.local_rank == 0:
            self.logger.plot_progress_png(self.output_folder)
        self.current_epoch += 1

    # ------------------------------------------------------------ checkpoints
    def _identity(self) -> dict:
        cm = self.configuration_manager
        return {"plans_name": self.plans_manager.plans_name, "dataset_name": self.plans_manager.dataset_name,
                "configuration": self.configuration_name,
                "architecture": json.dumps(cm.network_arch_init_kwargs, sort_keys=True, default=str),
                "classes": json.dumps(self.class_table.names_json(), sort_keys=True)}

    def classification_block(self) -> dict:
        return {"classes": self.class_table.names_json(), "input_size": [int(s) for s in self.input_size],
                "features": self.features, "dropout": float(self.dropout), "head_hidden": int(self.head_hidden),
                "num_input_channels": int(self.num_input_channels)}

    def save_checkpoint(self, filename: str) -> None:
        if self.local_rank != 0 or self.disable_checkpointing:
            return
        from nnunet_mmpretrain.io_utils import atomic_path
        logging_ck = {k: [None if x is None else ([float(y) for y in x] if isinstance(x, (list, tuple)) else float(x))
                          for x in v] for k, v in self.logger.get_checkpoint().items()}
        ck = {"network_weights": self._net().state_dict(), "optimizer_state": self.optimizer.state_dict(),
              "grad_scaler_state": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
              "current_epoch": self.current_epoch + 1, "logging": logging_ck,
              "_best_ema": None if self._best_ema is None else float(self._best_ema),
              "identity": self._identity(), "classification": self.classification_block(),
              "trainer_name": type(self).__name__,
              "init_args": {"plans": json.dumps(self.plans_manager.plans), "configuration": self.configuration_name,
                            "fold": str(self.fold), "dataset_json": json.dumps(self.dataset_json),
                            "device": str(self.device),
                            # settings a subclass records with the run (the benchmark cells'), kept as they are
                            **{k: v for k, v in self.my_init_kwargs.items() if k.startswith("mmpretrain_")}},
              "inference_allowed_mirroring_axes": list(self.inference_allowed_mirroring_axes or [])}
        with atomic_path(filename) as tmp:
            torch.save(ck, tmp)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        if not isinstance(filename_or_checkpoint, str):
            raise FinetuneError("load_checkpoint takes a checkpoint path")
        try:
            ck = torch.load(filename_or_checkpoint, map_location="cpu", weights_only=True)
        except Exception as e:
            raise FinetuneError(f"cannot read checkpoint {filename_or_checkpoint} ({type(e).__name__}): it is not a "
                                f"classifier checkpoint of this plugin or is damaged.") from None
        mine_cls = ck.get("classification") or {}
        self.input_size = list(mine_cls.get("input_size") or []) or None
        if not self.was_initialized:
            self.initialize()
        diff = [k for k, v in self._identity().items() if (ck.get("identity") or {}).get(k) != v]
        if diff:
            raise FinetuneError(f"{filename_or_checkpoint} was written for other plans or classes ({', '.join(diff)} "
                                f"differ): continue with the same -p/-c and classes.csv, or train in a new folder.")
        restore_training_state(self, ck)
        self.my_init_kwargs.update({k: v for k, v in (ck.get("init_args") or {}).items() if k.startswith("mmpretrain_")})
        self.logger.load_checkpoint(ck["logging"])
        self._best_ema = ck.get("_best_ema")
        self._weights_from = os.path.basename(filename_or_checkpoint)

    # ------------------------------------------------------------ after training
    def perform_actual_validation(self, save_probabilities: bool = False):
        """Classify every validation case (whole case, centred) and write ``summary.json`` and
        ``validation_probabilities.csv`` in the fold folder."""
        if self.local_rank != 0:
            return
        from nnunet_mmpretrain.classification.metrics import write_fold_summary
        from nnunet_mmpretrain.classification.predict import predict_arrays
        _, val_keys = self.do_split()
        val_keys = sorted(val_keys)
        ds = self.dataset_class(self.preprocessed_dataset_folder, val_keys)
        probs = predict_arrays(self._net(), (ds.load_case(k)[0] for k in val_keys), self.input_size, self.device)
        y = [self.class_table.labels[k] for k in val_keys]
        s = write_fold_summary(self.output_folder, val_keys, y, probs, self.class_table.names, {
            "dataset": self.plans_manager.dataset_name, "trainer": type(self).__name__,
            "plans": self.plans_manager.plans_name, "configuration": self.configuration_name, "fold": str(self.fold),
            "checkpoint": self._weights_from, "input_size": self.input_size})
        m = s["metrics"]
        auc = "n/a" if m["roc_auc"] is None else f"{m['roc_auc']:.3f}"
        self._log(f"validation ({len(val_keys)} cases): accuracy {m['accuracy']:.3f}, balanced accuracy "
                  f"{m['balanced_accuracy']:.3f}, macro F1 {m['macro_f1']:.3f}, ROC AUC {auc}; confusion "
                  f"{m['confusion_matrix']} -> {os.path.join(self.output_folder, 'summary.json')}")


class nnUNetTrainerMMClassifier(ShortSchedule, MMClassifierBase):
    """Encoder from the configured bundle (else scratch); 200 epochs x 100 iterations, mirroring."""
    schedule = Schedule(epochs=200, iterations=100, val_iterations=20, mirroring=True, save_every=25)


class nnUNetTrainerMMClassifier_scratch(nnUNetTrainerMMClassifier):
    """Same, never loads a bundle (the from-scratch baseline)."""
    use_bundle = False


class nnUNetTrainerMMClassifier_linearProbe(nnUNetTrainerMMClassifier):
    """Pretrained encoder (bundle required) frozen, stem included; only the head trains."""
    use_bundle, linear_probe, lr = True, True, 1e-3


class nnUNetTrainerMMClassifier_decoderFeatures(nnUNetTrainerMMClassifier):
    """Pooled features of the last decoder stage (full resolution) instead of the bottleneck."""
    features = "decoder"


class nnUNetTrainerMMClassifier_labelSmoothing(nnUNetTrainerMMClassifier):
    """Cross-entropy with label smoothing 0.1."""
    label_smoothing = 0.1


class nnUNetTrainerMMClassifier_demo(ShortSchedule, MMClassifierBase):
    """README measurement on CPU: 10 epochs x 6 iterations, lr 1e-3, no mirroring."""
    schedule = Schedule(epochs=10, iterations=6, val_iterations=1, save_every=50)
    warmup_epochs, lr = 1, 1e-3


class nnUNetTrainerMMClassifier_scratch_demo(nnUNetTrainerMMClassifier_demo):
    use_bundle = False
