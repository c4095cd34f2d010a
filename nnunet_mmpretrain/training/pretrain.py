"""``nnUNetTrainerMMPretrain``: BrainMVP pretraining as an nnU-Net trainer.

    nnUNetv2_train CORPUS_ID 3d_fullres all -tr nnUNetTrainerMMPretrain -p mmPretrainPlans

The trainer only wires the pure modules of :mod:`nnunet_mmpretrain.pretrain`:

* data: :class:`~nnunet_mmpretrain.training.pretrain_data.CorpusPatchLoader` draws (case, m, n),
* two views of the target modality m, each with its own block mask: the template view (masked
  blocks hold the learnable template of m at the patch's grid position) and the cross-modal view
  (masked blocks hold modality n of the same case; the template during the warm-up phase),
* one forward pass over both views (:func:`~nnunet_mmpretrain.pretrain.step.brainmvp_forward`),
* AdamW with linear warm-up + cosine decay; the templates have their own parameter group and
  learning rate, and are not part of the network's gradient clipping.

Templates live in the data's space (nnU-Net z-scores) and start from the corpus mean of their
modality (``template_init``). Validation measures the masked-voxel error of both views against
two trivial baselines (the patch mean; the fill left in place) on a *fixed* set of validation
patches (same cases, positions, masks and partners every epoch). ``checkpoint_best.pth`` is the
epoch with the lowest mean over both views of masked error / patch-mean baseline on that set.
After training (and with ``--val``) the templates are written as NIfTI on the corpus images' own
world grid, with a montage and a summary.
"""
from __future__ import annotations

import os
from dataclasses import asdict, replace
from typing import Dict, List

import numpy as np
import torch
from torch import distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_mmpretrain.corpus.means import load_or_compute_means
from nnunet_mmpretrain.geometry import GridGeometry, template_grid_shape
from nnunet_mmpretrain.io_utils import atomic_path, is_write_failure
from nnunet_mmpretrain.pretrain.objectives import ObjectiveConfig
from nnunet_mmpretrain.pretrain.step import MaskSpec, PretrainBatch, brainmvp_forward
from nnunet_mmpretrain.training.errors import PretrainingError
from nnunet_mmpretrain.training.loaders import background_loaders
from nnunet_mmpretrain.training.pretrain_checkpoint import checkpoint_dict, restore
from nnunet_mmpretrain.training.pretrain_corpus import (check_corpus, epoch_report, fixed_validation_batches,
                                                        load_corpus_properties, write_summary)
from nnunet_mmpretrain.training.pretrain_data import CorpusPatchLoader
from nnunet_mmpretrain.training.pretrain_network import MMPretrainNetwork
from nnunet_mmpretrain.training.schedules import Schedule, ShortSchedule, WarmupCosine, backward_and_step
from nnunet_mmpretrain.transfer.inject import unwrap

VIEW_KEYS = tuple(f"{v}_{k}" for v in ("md", "cmr") for k in ("masked_mse", "baseline_patch_mean", "baseline_fill"))
JOINT_KEYS = ("l_joint", "joint_masked_mse", "joint_baseline_patch_mean", "joint_baseline_fill")
LOG_KEYS = ("loss", "l_md", "l_cmr", "l_mcl") + VIEW_KEYS + ("emb_std",) + JOINT_KEYS   # joint: NaN when off
__all__ = ["nnUNetTrainerMMPretrain", "PretrainingError", "LOG_KEYS"]


class nnUNetTrainerMMPretrain(ShortSchedule, nnUNetTrainer):
    """BrainMVP defaults; variants (``pretrain_variants``) change the class attributes."""

    schedule = Schedule(epochs=1500, iterations=250, val_iterations=25, save_every=50)
    objective = ObjectiveConfig()                 # w_md 10, w_cmr 1, w_mcl 1, MCL after 2/3, warm-up 20%
    mask_ratio: float = 0.875                     # paper default (released script: 0.8)
    block_size: int = 8
    lr: float = 3e-4
    weight_decay: float = 1e-5
    template_lr: float = 1e-3
    warmup_epochs: int = 10
    proj_dim: int = 128
    grad_clip: float = 12.0
    decoder: str = "skipfree"                     # or "hypercolumn"
    template_init: str = "corpus_mean"            # or "zeros" (BrainMVP)
    template_space: str = "data"                  # or "minmax" (BrainMVP's [0, 1] squeeze)
    dad_p: float = 0.0                            # domain adaptive denormalization of the views
    template_fill: bool = True                    # False: masked blocks filled with zeros (plain MAE)
    alarm_fraction: float = 0.25                  # warn if the task is not learned after this share
    allow_single_modality_corpus: bool = False    # or env nnUNet_mmpretrain_allow_single=1

    def __init__(self, plans: dict, configuration: str, fold, dataset_json: dict, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.is_ddp and dist.get_backend() == "gloo":   # nnU-Net assumes NCCL/CUDA under DDP
            self.device, self.grad_scaler = torch.device("cpu"), None
        elif self.is_ddp and self.device.type == "cuda" and "LOCAL_RANK" in os.environ:
            self.device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))   # nnU-Net uses the global rank
        self.enable_deep_supervision = False
        self.mm_log: Dict[str, List[float]] = {f"{s}_{k}": [] for s in ("train", "val") for k in LOG_KEYS}
        self.mm_log["lr"] = []
        self._best_val = None
        self._val_fixed: List[tuple] = []
        self._val_i = 0
        self._pictures = None
        self.grid_geometry = None

    # ---------------------------------------------------------------- set-up
    def initialize(self):
        if self.was_initialized:
            return
        from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
        self._set_batch_size_and_oversample()
        self.dataset_class, self.corpus_props = load_corpus_properties(self.preprocessed_dataset_folder,
                                                                       self.plans_manager.dataset_name)
        allow = self.allow_single_modality_corpus or os.environ.get("nnUNet_mmpretrain_allow_single") == "1"
        single_only = check_corpus(self, self.corpus_props, allow)
        # the objective is resolved here, once, and saved as resolved in every checkpoint
        self.objective = replace(self.objective, w_cmr=0.0 if single_only else self.objective.w_cmr,
                                 w_joint=0.0 if single_only else self.objective.w_joint,
                                 gather=self.is_ddp)
        cm, pm = self.configuration_manager, self.plans_manager
        self.num_input_channels = 1
        base = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                      cm.network_arch_init_kwargs_req_import, 1, 2, allow_init=True,
                                      deep_supervision=False)
        self.atlas_registered = bool(pm.plans.get("mmpretrain", {}).get("atlas_registered"))
        init = "zeros"
        if self.atlas_registered:
            grid = template_grid_shape(self.corpus_props, pm.transpose_forward, cm.spacing)
            ref = max(self.corpus_props, key=lambda k: np.prod(self.corpus_props[k]["shape_before_cropping"]))
            self.grid_geometry = GridGeometry.from_case(self.corpus_props[ref], pm.transpose_backward)
            if self.template_init == "corpus_mean":
                init = load_or_compute_means(os.path.dirname(self.preprocessed_dataset_folder), cm.data_identifier,
                                             self.dataset_class, self.corpus_props, pm.transpose_forward,
                                             cm.spacing, grid)
        else:
            grid = list(cm.patch_size)
        self.network = MMPretrainNetwork(base, grid, cm.network_arch_init_kwargs["strides"], self.proj_dim,
                                         position_free="random", decoder=self.decoder, template_init=init,
                                         template_space=self.template_space,
                                         joint=self.objective.w_joint > 0,
                                         joint_stem=self.objective.joint_stem).to(self.device)
        self.optimizer, self.lr_scheduler = self.configure_optimizers()
        if self.is_ddp:
            self.network = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.network)
            self.network = DDP(self.network, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                               find_unused_parameters=True)   # stems of modalities absent from a batch
        self.loss = None
        self.was_initialized = True
        n = sum(p.numel() for p in self._net().parameters())
        t = self._net().templates
        self.print_to_log_file(f"pretraining network: {n / 1e6:.2f} M parameters ({self.decoder} decoder); template "
                               f"bank {t.nbytes() / 2 ** 20 if t is not None else 0:.1f} MiB on grid {grid}, "
                               f"{self.template_space} space, init {'corpus mean' if isinstance(init, dict) else init}; "
                               f"objective {asdict(self.objective)}")

    def _net(self):
        return unwrap(self.network)

    def configure_optimizers(self):
        net = self._net() if self.network is not None else None
        tmpl = list(net.templates.parameters()) if net.templates is not None else []
        ids = {id(p) for p in tmpl}
        rest = [p for p in net.parameters() if id(p) not in ids]
        groups = [{"params": rest, "lr": self.lr, "weight_decay": self.weight_decay, "name": "network"}]
        if tmpl:
            groups.append({"params": tmpl, "lr": self.template_lr, "weight_decay": 0.0, "name": "templates"})
        try:   # the fused kernel updates the (large, mostly idle) template bank ~10x faster
            opt = torch.optim.AdamW(groups, fused=True)
        except (RuntimeError, TypeError):
            opt = torch.optim.AdamW(groups)
        return opt, WarmupCosine(opt, self.num_epochs, self.warmup_epochs)

    def set_deep_supervision_enabled(self, enabled: bool):
        pass   # no segmentation decoder

    def plot_network_architecture(self):
        pass

    def _loader(self, keys, seed):
        cm = self.configuration_manager
        ds = self.dataset_class(self.preprocessed_dataset_folder, sorted(keys))
        return CorpusPatchLoader(ds, keys, self.corpus_props, self.batch_size, patch_size=cm.patch_size,
                                 transpose_forward=self.plans_manager.transpose_forward, target_spacing=cm.spacing,
                                 allow_single=True, seed=seed, all_modalities=self.objective.joint_all)

    def get_dataloaders(self):
        tr, val = self.do_split()
        seed = 1234 + 7919 * self.local_rank
        return background_loaders(self._loader(tr, seed), self._loader(val, seed + 1),
                                  pin_memory=self.device.type == "cuda")

    def on_train_start(self):
        super().on_train_start()
        _, val = self.do_split()
        self._val_fixed = fixed_validation_batches(self._loader(val, 4242), self.num_val_iterations_per_epoch,
                                                   self.configuration_manager.patch_size, self.mask_ratio,
                                                   self.block_size, seed=4242)
        self.print_to_log_file(f"pretraining: {len(self.corpus_props)} cases, patch {self.configuration_manager.patch_size}, "
                               f"batch {self.batch_size}, mask {self.mask_ratio} of {self.block_size}^3 blocks; "
                               f"validation on {len(self._val_fixed)} fixed batches")

    # ---------------------------------------------------------------- the step
    def _step(self, batch, masks=None, evaluate=False):
        t = lambda k: torch.as_tensor(batch[k]).to(self.device, non_blocking=True)
        b = PretrainBatch(t("target"), t("partner"), t("m_idx"), t("n_idx"),
                          t("starts") if self.atlas_registered else None, list(batch["subject"]),
                          *((t("stack"), t("stack_idx")) if "stack" in batch else ()))
        return brainmvp_forward(self.network, b, objective=self.objective, epoch=self.current_epoch,
                                num_epochs=self.num_epochs, mask=MaskSpec(self.mask_ratio, self.block_size),
                                templates=self._net().templates if self.template_fill else None, masks=masks,
                                evaluate=evaluate,
                                dad_p=0.0 if evaluate else self.dad_p)

    def train_step(self, batch: dict) -> dict:
        from torch import autocast
        from nnunetv2.utilities.helpers import dummy_context
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            loss, logs, _ = self._step(batch)
        if not torch.isfinite(loss):
            last = [f for f in ("checkpoint_latest.pth", "checkpoint_best.pth")
                    if os.path.isfile(os.path.join(self.output_folder, f))]
            raise PretrainingError(
                f"non-finite loss ({float(loss.detach())}) at epoch {self.current_epoch}, cases {', '.join(batch['keys'])} "
                f"(terms {', '.join(f'{k}={v:.4g}' for k, v in logs.items() if k.startswith('l_'))}); last good "
                f"checkpoint: {os.path.join(self.output_folder, last[0]) if last else 'none yet'}. Lower the learning "
                f"rate or check these cases, then resume with --c.")
        net_params = [p for g in self.optimizer.param_groups if g.get("name") == "network" for p in g["params"]]
        backward_and_step(loss, self.optimizer, self.grad_scaler, net_params, self.grad_clip)
        return logs

    def validation_step(self, batch: dict) -> dict:
        """nnU-Net hands a random batch; the fixed set is used instead (comparable across epochs)."""
        if self._val_fixed:
            batch, masks = self._val_fixed[self._val_i % len(self._val_fixed)]
            self._val_i += 1
        else:
            masks = None
        _, logs, views = self._step(batch, masks=masks, evaluate=True)
        if self._pictures is None or self._val_i == 1:
            self._pictures = tuple(v[:4].float().cpu() for v in views) + (list(batch["keys"][:4]),)
        return logs

    # ---------------------------------------------------------------- logging
    def _reduce(self, outputs: List[dict]) -> Dict[str, float]:
        def mean(k):
            xs = [o.get(k, float("nan")) for o in outputs]
            return float(np.nanmean(xs)) if np.isfinite(xs).any() else float("nan")
        vals = torch.tensor([[mean(k)] for k in LOG_KEYS], dtype=torch.float64)
        if self.is_ddp:
            vals = vals.to(self.device)
            dist.all_reduce(vals)
            vals = vals.cpu() / dist.get_world_size()
        return {k: float(v) for k, v in zip(LOG_KEYS, vals[:, 0])}

    def on_train_epoch_end(self, train_outputs: List[dict]):
        for k, v in self._reduce(train_outputs).items():
            self.mm_log[f"train_{k}"].append(v)
        self.mm_log["lr"].append(float(self.optimizer.param_groups[0]["lr"]))
        self.logger.log("train_losses", self.mm_log["train_loss"][-1], self.current_epoch)

    def on_validation_epoch_start(self):
        super().on_validation_epoch_start()
        self._val_i = 0

    def on_validation_epoch_end(self, val_outputs: List[dict]):
        for k, v in self._reduce(val_outputs).items():
            self.mm_log[f"val_{k}"].append(v)
        self.logger.log("val_losses", self.mm_log["val_loss"][-1], self.current_epoch)

    def on_epoch_end(self):
        from time import time
        self.logger.log("epoch_end_timestamps", time(), self.current_epoch)
        lines, score = epoch_report(self.mm_log, self.current_epoch, self.num_epochs, self.alarm_fraction,
                                    self.objective.mcl_active(self.current_epoch, self.num_epochs),
                                    tuple(v for v in ("md", "cmr") if getattr(self.objective, f"w_{v}") > 0))
        for line in lines:
            self.print_to_log_file(line)
        ep = self.logger.get_value("epoch_end_timestamps", -1) - self.logger.get_value("epoch_start_timestamps", -1)
        self.print_to_log_file(f"Epoch time: {ep:.2f} s")
        if (self.current_epoch + 1) % self.save_every == 0 and self.current_epoch != self.num_epochs - 1:
            self.save_checkpoint(os.path.join(self.output_folder, "checkpoint_latest.pth"))
        if self._best_val is None or score < self._best_val:
            self._best_val = score
            self.save_checkpoint(os.path.join(self.output_folder, "checkpoint_best.pth"))
        if self.local_rank == 0:
            # imported here, not at the top: matplotlib loads slowly and only the progress plots need it
            from nnunet_mmpretrain.training.pretrain_plots import plot_montage, plot_progress
            plot_progress(self.mm_log, os.path.join(self.output_folder, "progress_pretrain.png"))
            if self._pictures is not None and ((self.current_epoch + 1) % self.save_every == 0
                                               or self.current_epoch == self.num_epochs - 1):
                plot_montage(self._net(), self._pictures, os.path.join(self.output_folder, "montage_pretrain.png"))
        self.current_epoch += 1

    # ---------------------------------------------------------------- checkpoints
    def save_checkpoint(self, filename: str) -> None:
        if self.local_rank != 0 or self.disable_checkpointing:
            return
        try:
            with atomic_path(filename) as tmp:
                torch.save(checkpoint_dict(self), tmp)
        except (OSError, RuntimeError) as e:
            if not is_write_failure(e):
                raise
            # the augmentation workers would keep the process waiting on their pipes: stop them first
            self._stop_loaders()
            reason = (str(e).strip().splitlines() or [type(e).__name__])[-1][:160]
            raise PretrainingError(f"writing the checkpoint {filename} failed ({reason}): the disk is full or "
                                   f"refuses the write; the previous {os.path.basename(filename)} is unchanged. Free "
                                   f"space, then resume with nnUNetv2_train ... --c.") from None

    def _stop_loaders(self) -> None:
        """Shut the background data loaders down as nnU-Net's on_train_end does."""
        for dl in (getattr(self, "dataloader_train", None), getattr(self, "dataloader_val", None)):
            if dl is not None and hasattr(dl, "_finish"):
                try:
                    dl._finish()
                except Exception:  # noqa: BLE001 - best effort while reporting the real error
                    pass

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        if not self.was_initialized:
            self.initialize()
        if not isinstance(filename_or_checkpoint, str):
            raise PretrainingError("load_checkpoint takes a checkpoint path")
        restore(self, filename_or_checkpoint)

    # ---------------------------------------------------------------- after training
    def perform_actual_validation(self, save_probabilities: bool = False):
        """No segmentation to validate: write the templates (NIfTI, montage) and a summary."""
        if self.local_rank != 0:
            return
        write_summary(self, os.path.join(self.output_folder, "pretraining_summary"))


