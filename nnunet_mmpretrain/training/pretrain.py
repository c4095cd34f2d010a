"""``nnUNetTrainerMMPretrain``: BrainMVP pretraining as an nnU-Net trainer.

    nnUNetv2_train CORPUS_ID 3d_fullres all -tr nnUNetTrainerMMPretrain -p mmPretrainPlans

The trainer only wires the pure modules of :mod:`nnunet_mmpretrain.pretrain`:

* data: :class:`~nnunet_mmpretrain.training.pretrain_data.CorpusPatchLoader` draws (case, m, n),
* two views of the target modality m, each with its own block mask: the template view (masked
  blocks hold the learnable template of m at the patch's atlas position) and the cross-modal view
  (masked blocks hold modality n of the same case; the template during the warm-up phase),
* one forward pass over both views (per-modality stems, the plans' encoder, a skip-free decoder),
* loss = w_md * MSE(template view) + w_cmr * MSE(cross-modal view) + w_mcl * InfoNCE(views),
  the contrastive term switched on after a fraction of training (:class:`ObjectiveConfig`),
* AdamW with linear warm-up + cosine decay; the templates have their own parameter group and
  learning rate, and are not part of the network's gradient clipping.

Checkpoints hold network (encoder, stems, decoder, head, templates), optimizer, epoch, the
per-term log, the objective and the identity of the plans; they load with ``weights_only=True``
and resume exactly. After training (and with ``--val``) a template montage, reconstructions and
template NIfTIs are written instead of nnU-Net's segmentation validation.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, replace
from typing import Dict, List

import numpy as np
import torch
from torch import distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_mmpretrain.modalities import MODALITIES
from nnunet_mmpretrain.pretrain.objectives import ObjectiveConfig
from nnunet_mmpretrain.training.schedules import Schedule, ShortSchedule

LOG_KEYS = ("loss", "l_md", "l_cmr", "l_mcl", "masked_mse", "baseline_patch_mean", "baseline_fill")


class PretrainingError(RuntimeError):
    """A clear, user-facing problem with the corpus, plans or checkpoint."""


class WarmupCosine:
    """Per-epoch LR: linear warm-up over ``warmup`` epochs, then cosine to 0; ``step(epoch)``
    sets every group's lr from its ``initial_lr`` (nnU-Net calls ``step(current_epoch)``)."""

    def __init__(self, optimizer, num_epochs: int, warmup: int):
        self.optimizer, self.num_epochs, self.warmup = optimizer, max(1, num_epochs), max(0, warmup)
        for g in optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])

    def factor(self, epoch: int) -> float:
        if epoch < self.warmup:
            return (epoch + 1) / (self.warmup + 1)
        t = (epoch - self.warmup) / max(1, self.num_epochs - self.warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    def step(self, epoch: int) -> None:
        f = self.factor(epoch)
        for g in self.optimizer.param_groups:
            g["lr"] = g["initial_lr"] * f


class nnUNetTrainerMMPretrain(ShortSchedule, nnUNetTrainer):
    """BrainMVP defaults (REFERENCE.md section 1); variants change the class attributes."""

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
    allow_single_modality_corpus: bool = False    # or env nnUNet_mmpretrain_allow_single=1

    def __init__(self, plans: dict, configuration: str, fold, dataset_json: dict, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.is_ddp and dist.get_backend() == "gloo":   # nnU-Net assumes NCCL/CUDA under DDP
            self.device, self.grad_scaler = torch.device("cpu"), None
        self.enable_deep_supervision = False
        self.mm_log: Dict[str, List[float]] = {f"{s}_{k}": [] for s in ("train", "val") for k in LOG_KEYS}
        self.mm_log["lr"] = []
        self._best_val = None
        self._montage_batch = None

    # ---------------------------------------------------------------- set-up
    def _load_corpus_properties(self):
        from batchgenerators.utilities.file_and_folder_operations import load_pickle
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
        folder = self.preprocessed_dataset_folder
        if not os.path.isdir(folder):
            raise PretrainingError(f"no preprocessed corpus at {folder}: run nnUNetv2_mmpretrain_plan_and_preprocess "
                                   f"-d {self.plans_manager.dataset_name.split('_')[0][7:]} first.")
        cls = infer_dataset_class(folder)
        ids = cls.get_identifiers(folder)
        props = {k: load_pickle(os.path.join(folder, k + ".pkl")) for k in ids}
        missing = [k for k, p in props.items() if "modalities" not in p]
        if missing:
            raise PretrainingError(f"{folder} was not preprocessed as a corpus (no modality list in "
                                   f"{missing[0]}.pkl): use nnUNetv2_mmpretrain_plan_and_preprocess.")
        return cls, props

    def _check_corpus(self, props: Dict[str, dict]) -> None:
        n_multi = sum(len(p["modalities"]) > 1 for p in props.values())
        allow = self.allow_single_modality_corpus or os.environ.get("nnUNet_mmpretrain_allow_single") == "1"
        if n_multi == 0:
            if not allow:
                raise PretrainingError(
                    "every case of this corpus has a single modality, so cross-modal reconstruction is impossible. "
                    "Set nnUNet_mmpretrain_allow_single=1 to pretrain with the template and contrastive tasks only.")
            self.objective = replace(self.objective, w_cmr=0.0)
            self.print_to_log_file("single-modality corpus: cross-modal term off (nnUNet_mmpretrain_allow_single=1)")
        singles = sorted(k for k, p in props.items() if len(p["modalities"]) == 1)
        if singles and n_multi:
            self.print_to_log_file(f"{len(singles)} case(s) have one modality; their cross-modal view uses the "
                                   f"template fill: {', '.join(singles[:10])}{' ...' if len(singles) > 10 else ''}")
        small = sorted(k for k, p in props.items()
                       if any(s < q for s, q in zip(self._case_shape(k), self.configuration_manager.patch_size)))
        if small:
            self.print_to_log_file(f"{len(small)} case(s) are smaller than the patch "
                                   f"{self.configuration_manager.patch_size} and are zero-padded: {', '.join(small[:10])}")

    def _case_shape(self, key):
        return self.dataset_class(self.preprocessed_dataset_folder, [key]).load_case(key)[0].shape[1:]

    def initialize(self):
        if self.was_initialized:
            return
        from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
        from nnunet_mmpretrain.training.pretrain_data import template_grid_shape
        from nnunet_mmpretrain.training.pretrain_network import MMPretrainNetwork
        self._set_batch_size_and_oversample()
        self.dataset_class, self.corpus_props = self._load_corpus_properties()
        self._check_corpus(self.corpus_props)
        cm, pm = self.configuration_manager, self.plans_manager
        self.num_input_channels = 1
        base = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                      cm.network_arch_init_kwargs_req_import, 1, 2, allow_init=True,
                                      deep_supervision=False)
        block = pm.plans.get("mmpretrain", {})
        grid = template_grid_shape(self.corpus_props, pm.transpose_forward, cm.spacing) \
            if block.get("atlas_registered") else list(cm.patch_size)
        self.atlas_registered = bool(block.get("atlas_registered"))
        self.network = MMPretrainNetwork(base, grid, cm.network_arch_init_kwargs["strides"], self.proj_dim,
                                         position_free="random").to(self.device)
        self.optimizer, self.lr_scheduler = self.configure_optimizers()
        if self.is_ddp:
            self.network = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.network)
            self.network = DDP(self.network, device_ids=[self.local_rank] if self.device.type == "cuda" else None,
                               find_unused_parameters=True)   # stems of modalities absent from a batch
            self.objective = replace(self.objective, gather=True)
        self.loss = None
        self.was_initialized = True
        n = sum(p.numel() for p in self._net().parameters())
        t = self._net().templates
        self.print_to_log_file(f"pretraining network: {n / 1e6:.2f} M parameters; template bank "
                               f"{t.nbytes() / 2 ** 20 if t is not None else 0:.1f} MiB on grid {grid}; "
                               f"objective {asdict(self.objective)}")

    def _net(self):
        net = self.network.module if isinstance(self.network, DDP) else self.network
        return getattr(net, "_orig_mod", net)

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

    def get_dataloaders(self):
        from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
        from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
        from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
        from nnunet_mmpretrain.training.pretrain_data import CorpusPatchLoader
        tr, val = self.do_split()
        ds = self.dataset_class(self.preprocessed_dataset_folder, sorted(set(tr) | set(val)))
        cm = self.configuration_manager
        kw = dict(patch_size=cm.patch_size, transpose_forward=self.plans_manager.transpose_forward,
                  target_spacing=cm.spacing, allow_single=True)
        seed = 1234 + 7919 * self.local_rank
        dl_tr = CorpusPatchLoader(ds, tr, self.corpus_props, self.batch_size, seed=seed, **kw)
        dl_val = CorpusPatchLoader(ds, val, self.corpus_props, self.batch_size, seed=seed + 1, **kw)
        n = get_allowed_n_proc_DA()
        if n == 0:
            return SingleThreadedAugmenter(dl_tr, None), SingleThreadedAugmenter(dl_val, None)
        mk = lambda dl, k: NonDetMultiThreadedAugmenter(dl, None, k, num_cached=max(2, k), seeds=None,
                                                        pin_memory=self.device.type == "cuda", wait_time=0.002)
        return mk(dl_tr, n), mk(dl_val, max(1, n // 2))

    def on_train_start(self):
        super().on_train_start()
        self.print_to_log_file(f"pretraining: {len(self.corpus_props)} cases, patch {self.configuration_manager.patch_size}, "
                               f"batch {self.batch_size}, mask {self.mask_ratio} of {self.block_size}^3 blocks")

    # ---------------------------------------------------------------- the step
    def _step(self, batch):
        from nnunet_mmpretrain.training.pretrain_step import MaskSpec, brainmvp_forward
        dev = self.device
        t = lambda k: torch.as_tensor(batch[k]).to(dev, non_blocking=True)
        return brainmvp_forward(self.network, self._net(), t("target"), t("partner"), t("m_idx"), t("n_idx"),
                                t("starts") if self.atlas_registered else None, self.objective,
                                self.current_epoch, self.num_epochs, MaskSpec(self.mask_ratio, self.block_size),
                                subject_ids=list(batch["subject"]))

    def train_step(self, batch: dict) -> dict:
        self.optimizer.zero_grad(set_to_none=True)
        from torch import autocast
        from nnunetv2.utilities.helpers import dummy_context
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            loss, logs, _ = self._step(batch)
        net_params = [p for g in self.optimizer.param_groups if g.get("name") == "network" for p in g["params"]]
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(net_params, self.grad_clip)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net_params, self.grad_clip)
            self.optimizer.step()
        return logs

    def validation_step(self, batch: dict) -> dict:
        loss, logs, views = self._step(batch)
        self._montage_batch = tuple(v[:4].float().cpu() for v in views) + (batch["keys"][:4],)
        return logs

    # ---------------------------------------------------------------- logging
    def _reduce(self, outputs: List[dict]) -> Dict[str, float]:
        keys = [k for k in LOG_KEYS]
        vals = torch.tensor([[float(np.nanmean([o[k] for o in outputs]))] for k in keys], dtype=torch.float64)
        if self.is_ddp:
            vals = vals.to(self.device)
            dist.all_reduce(vals)
            vals = vals.cpu() / dist.get_world_size()
        return {k: float(v) for k, v in zip(keys, vals[:, 0])}

    def on_train_epoch_end(self, train_outputs: List[dict]):
        r = self._reduce(train_outputs)
        for k, v in r.items():
            self.mm_log[f"train_{k}"].append(v)
        self.mm_log["lr"].append(float(self.optimizer.param_groups[0]["lr"]))
        self.logger.log("train_losses", r["loss"], self.current_epoch)

    def on_validation_epoch_end(self, val_outputs: List[dict]):
        r = self._reduce(val_outputs)
        for k, v in r.items():
            self.mm_log[f"val_{k}"].append(v)
        self.logger.log("val_losses", r["loss"], self.current_epoch)

    def on_epoch_end(self):
        from time import time
        self.logger.log("epoch_end_timestamps", time(), self.current_epoch)
        g = lambda k: self.mm_log[k][-1]
        self.print_to_log_file(
            f"train loss {g('train_loss'):.4f} (md {g('train_l_md'):.4f}, cmr {g('train_l_cmr'):.4f}, "
            f"mcl {g('train_l_mcl'):.4f}) | val loss {g('val_loss'):.4f} | masked-voxel MSE {g('val_masked_mse'):.4f} "
            f"vs patch mean {g('val_baseline_patch_mean'):.4f}, fill left in place {g('val_baseline_fill'):.4f}")
        ep = self.logger.get_value("epoch_end_timestamps", -1) - self.logger.get_value("epoch_start_timestamps", -1)
        self.print_to_log_file(f"Epoch time: {ep:.2f} s")
        if (self.current_epoch + 1) % self.save_every == 0 and self.current_epoch != self.num_epochs - 1:
            self.save_checkpoint(os.path.join(self.output_folder, "checkpoint_latest.pth"))
        if self._best_val is None or g("val_loss") < self._best_val:
            self._best_val = g("val_loss")
            self.save_checkpoint(os.path.join(self.output_folder, "checkpoint_best.pth"))
        if self.local_rank == 0:
            from nnunet_mmpretrain.training.pretrain_plots import plot_progress
            plot_progress(self.mm_log, os.path.join(self.output_folder, "progress_pretrain.png"))
        self.current_epoch += 1

    # ---------------------------------------------------------------- checkpoints
    def _identity(self) -> dict:
        cm = self.configuration_manager
        return {"plans_name": self.plans_manager.plans_name, "dataset_name": self.plans_manager.dataset_name,
                "configuration": self.configuration_name,
                "architecture": json.dumps(cm.network_arch_init_kwargs, sort_keys=True, default=str),
                "patch_size": [int(p) for p in cm.patch_size]}

    def save_checkpoint(self, filename: str) -> None:
        if self.local_rank != 0 or self.disable_checkpointing:
            return
        from nnunet_mmpretrain.io_utils import atomic_path
        ck = {
            "network_weights": self._net().state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "grad_scaler_state": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "current_epoch": self.current_epoch + 1,
            "mm_log": self.mm_log,
            "nnunet_logging": {k: [float(x) if x is not None else None for x in v] if k != "dice_per_class_or_region"
                               else [] for k, v in self.logger.get_checkpoint().items()},
            "best_val": self._best_val,
            "identity": self._identity(),
            "objective": asdict(self.objective),
            "init_args": {"plans": json.dumps(self.plans_manager.plans), "configuration": self.configuration_name,
                          "fold": str(self.fold), "dataset_json": json.dumps(self.dataset_json),
                          "device": str(self.device)},
            "trainer_name": self.__class__.__name__,
            "mmpretrain": {"vocabulary": list(MODALITIES), "atlas_registered": self.atlas_registered,
                           "modalities_seen": sorted({m for p in self.corpus_props.values() for m in p["modalities"]}),
                           "template_grid": list(self._net().templates.grid_shape) if self._net().templates is not None else None},
        }
        with atomic_path(filename) as tmp:
            torch.save(ck, tmp)
        if self._montage_batch is not None:
            from nnunet_mmpretrain.training.pretrain_plots import plot_montage
            plot_montage(self._net(), self._montage_batch, os.path.join(self.output_folder, "montage_pretrain.png"))

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        if not self.was_initialized:
            self.initialize()
        if not isinstance(filename_or_checkpoint, str):
            raise PretrainingError("load_checkpoint takes a checkpoint path")
        try:
            ck = torch.load(filename_or_checkpoint, map_location=self.device, weights_only=True)
        except Exception as e:
            raise PretrainingError(f"cannot read checkpoint {filename_or_checkpoint} ({type(e).__name__}: "
                                   f"{str(e).splitlines()[0][:200]}); it is not a pretraining checkpoint of this plugin "
                                   f"or is damaged: delete it to start afresh.") from None
        ident = ck.get("identity")
        if ident is None:
            raise PretrainingError(f"{filename_or_checkpoint} is not a checkpoint of nnUNetTrainerMMPretrain.")
        mine = self._identity()
        diff = [k for k in mine if ident.get(k) != mine[k]]
        if diff:
            raise PretrainingError(
                f"{filename_or_checkpoint} was written with other plans ({', '.join(f'{k}: {ident.get(k)!r} vs now {mine[k]!r}' for k in diff if k != 'architecture')}"
                f"{'; the architecture differs' if 'architecture' in diff else ''}). Resume with the same -p/-c, "
                f"or start a new training in another results folder.")
        self._net().load_state_dict(ck["network_weights"])
        self.optimizer.load_state_dict(ck["optimizer_state"])
        if self.grad_scaler is not None and ck.get("grad_scaler_state") is not None:
            self.grad_scaler.load_state_dict(ck["grad_scaler_state"])
        self.current_epoch = int(ck["current_epoch"])
        self.mm_log = {k: list(v) for k, v in ck["mm_log"].items()}
        self._best_val = ck.get("best_val")
        logging = self.logger.get_checkpoint()
        logging.update({k: list(v) for k, v in ck.get("nnunet_logging", {}).items() if k in logging})
        self.logger.load_checkpoint(logging)

    # ---------------------------------------------------------------- after training
    def perform_actual_validation(self, save_probabilities: bool = False):
        """No segmentation to validate: write the templates (NIfTI, montage) and a summary."""
        if self.local_rank != 0:
            return
        from nnunet_mmpretrain.io_utils import atomic_write_json
        net = self._net()
        out = os.path.join(self.output_folder, "pretraining_summary")
        os.makedirs(out, exist_ok=True)
        if net.templates is not None:
            seen = sorted({m for p in self.corpus_props.values() for m in p["modalities"]})
            net.templates.export_nifti(os.path.join(out, "templates"), spacing=list(self.configuration_manager.spacing),
                                       modalities=seen)
        last = {k: v[-1] for k, v in self.mm_log.items() if v}
        atomic_write_json({"epochs": self.current_epoch, "last": last, "objective": asdict(self.objective),
                           "first": {k: v[0] for k, v in self.mm_log.items() if v}},
                          os.path.join(out, "summary.json"))
        self.print_to_log_file(f"pretraining summary written to {out}")


class nnUNetTrainerMMPretrain_5epochs(nnUNetTrainerMMPretrain):
    """Tests: 5 epochs x 3 iterations; MCL from epoch 2, template warm-up epoch 0."""
    schedule = Schedule(epochs=5, iterations=3, val_iterations=1, save_every=2)
    warmup_epochs = 1


class nnUNetTrainerMMPretrain_demo(nnUNetTrainerMMPretrain):
    """The demo: 12 epochs x 20 iterations."""
    schedule = Schedule(epochs=12, iterations=20, val_iterations=3, save_every=4)
    warmup_epochs = 2
    objective = ObjectiveConfig(temperature=0.2)


class nnUNetTrainerMMPretrain_subjectPositives(nnUNetTrainerMMPretrain):
    """Contrastive term with the cross-modal positives of Wen et al. 2023: every view of the same
    subject (any modality) is a positive; temperature 0.1."""
    objective = ObjectiveConfig(temperature=0.1, positives="subject")


class nnUNetTrainerMMPretrain_tau02(nnUNetTrainerMMPretrain):
    """BrainMVP with the improvements REFERENCE.md names: temperature 0.2 (projection head and
    cross-rank negatives are on in every variant)."""
    objective = ObjectiveConfig(temperature=0.2)
