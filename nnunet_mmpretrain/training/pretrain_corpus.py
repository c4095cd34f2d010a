"""The pretraining trainer's corpus checks, fixed validation set, per-epoch report and summary, as
plain functions (the trainer only calls them)."""
from __future__ import annotations

import os
from dataclasses import asdict
from typing import Dict, List, Tuple

import numpy as np
import torch

from nnunet_mmpretrain.geometry import write_grid_nifti
from nnunet_mmpretrain.io_utils import atomic_write_json
from nnunet_mmpretrain.pretrain.masking import block_mask
from nnunet_mmpretrain.training.errors import PretrainingError


def load_corpus_properties(folder: str, dataset_name: str):
    """(nnU-Net dataset class, case key -> properties) of a preprocessed corpus data folder."""
    from batchgenerators.utilities.file_and_folder_operations import load_pickle
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    if not os.path.isdir(folder):
        raise PretrainingError(f"no preprocessed corpus at {folder}: run nnUNetv2_mmpretrain_plan_and_preprocess "
                               f"-d {dataset_name.split('_')[0][7:]} first.")
    cls = infer_dataset_class(folder)
    props = {k: load_pickle(os.path.join(folder, k + ".pkl")) for k in cls.get_identifiers(folder)}
    missing = [k for k, p in props.items() if "modalities" not in p]
    if missing:
        raise PretrainingError(f"{folder} was not preprocessed as a corpus (no modality list in "
                               f"{missing[0]}.pkl): use nnUNetv2_mmpretrain_plan_and_preprocess.")
    return cls, props


def check_corpus(trainer, props: Dict[str, dict], allow_single: bool) -> bool:
    """Log what the trainer must know about the corpus; returns True when every case has one
    modality (the cross-modal task is then impossible; refused unless ``allow_single``)."""
    n_multi = sum(len(p["modalities"]) > 1 for p in props.values())
    if n_multi == 0:
        if not allow_single:
            raise PretrainingError(
                "every case of this corpus has a single modality, so cross-modal reconstruction is impossible. "
                "Set nnUNet_mmpretrain_allow_single=1 to pretrain with the template and contrastive tasks only.")
        trainer.print_to_log_file("single-modality corpus: cross-modal term off (nnUNet_mmpretrain_allow_single=1)")
    singles = sorted(k for k, p in props.items() if len(p["modalities"]) == 1)
    if singles and n_multi:
        trainer.print_to_log_file(f"{len(singles)} case(s) have one modality; their cross-modal view uses the "
                                  f"template fill: {', '.join(singles[:10])}{' ...' if len(singles) > 10 else ''}")
    patch = trainer.configuration_manager.patch_size
    small = sorted(k for k, p in props.items() if any(
        s < q for s, q in zip(trainer.dataset_class(trainer.preprocessed_dataset_folder, [k]).load_case(k)[0].shape[1:],
                              patch)))
    if small:
        trainer.print_to_log_file(f"{len(small)} case(s) are smaller than the patch {patch} and are zero-padded: "
                                  f"{', '.join(small[:10])}")
    return n_multi == 0


def fixed_validation_batches(loader, n: int, patch, ratio: float, block_size: int, seed: int
                             ) -> List[Tuple[dict, Tuple[torch.Tensor, torch.Tensor]]]:
    """``n`` batches drawn once (cases, positions, partners from ``loader``'s seeded RNG) with
    their two block masks (and the stack's (B, K, X, Y, Z) masks when the loader gives every
    modality), so the validation curve measures the network, not sampling noise."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(max(1, n)):
        b = loader.generate_train_batch()
        B = b["target"].shape[0]
        masks = tuple(block_mask(B, tuple(patch), block_size, ratio, generator=g) for _ in range(2))
        if "stack" in b:
            K = b["stack"].shape[1]
            masks += (block_mask(B * K, tuple(patch), block_size, ratio, generator=g).view(B, K, *patch),)
        out.append((b, masks))
    return out


def relative_error(log: Dict[str, List[float]], split: str = "val", i: int = -1) -> Dict[str, float]:
    """Per view, masked error / patch-mean baseline and masked error / fill baseline at entry i."""
    g = lambda k: log[f"{split}_{k}"][i]
    return {f"{v}_{b}": g(f"{v}_masked_mse") / max(g(f"{v}_baseline_{b}"), 1e-12)
            for v in ("md", "cmr") for b in ("patch_mean", "fill")}


def epoch_report(log: Dict[str, List[float]], epoch: int, num_epochs: int, alarm_fraction: float,
                 mcl_active: bool, trained: Tuple[str, ...] = ("md", "cmr")) -> Tuple[List[str], float]:
    """Log lines of one epoch (losses; per view the masked error against both baselines; alarms
    for the ``trained`` views, those with a loss weight) and the score behind checkpoint_best
    (mean over the trained views of masked error / patch mean)."""
    g = lambda k: log[k][-1]
    rel = relative_error(log)
    lines = [f"train loss {g('train_loss'):.4f} (md {g('train_l_md'):.4f}, cmr {g('train_l_cmr'):.4f}, "
             f"mcl {g('train_l_mcl'):.4f}) | val loss {g('val_loss'):.4f}"]
    views = (("md", "template view"), ("cmr", "cross-modal view"), ("joint", "joint view (its first modality)"))
    for v, name in views:
        if v == "joint" and not np.isfinite(log.get("val_joint_masked_mse", [float("nan")])[-1]):
            continue                                           # the joint view is off
        m, pm, fl = (g(f"val_{v}_{k}") for k in ("masked_mse", "baseline_patch_mean", "baseline_fill"))
        lines.append(f"{name}: masked-voxel MSE {m:.4f} vs patch mean {pm:.4f} ({m / max(pm, 1e-12):.2f} x), "
                     f"fill left in place {fl:.4f} ({m / max(fl, 1e-12):.2f} x)")
    if epoch + 1 >= alarm_fraction * num_epochs:
        bad = [v for v in trained if rel[f"{v}_patch_mean"] >= 1.0]
        if bad:
            lines.append(f"WARNING: after {epoch + 1} of {num_epochs} epochs the masked-voxel error of the "
                         f"{' and '.join(bad)} view(s) is not below predicting the patch mean: the proxy task is "
                         f"not being learned (try a lower mask ratio, a higher learning rate, a longer schedule).")
    if mcl_active and np.isfinite(g("train_emb_std")) and g("train_emb_std") < 1e-3:
        lines.append(f"WARNING: the contrastive embeddings collapsed (std over the batch {g('train_emb_std'):.2e}).")
    score = float(np.mean([rel[f"{v}_patch_mean"] for v in trained or ("md", "cmr")]))
    return lines, float(score) if np.isfinite(score) else float("inf")


def write_summary(trainer, out: str) -> None:
    """Templates as NIfTI (on the corpus images' world grid when the corpus is on one grid), the
    montage and ``summary.json`` (first / last values of every logged curve, the objective)."""
    net = trainer._net()
    os.makedirs(out, exist_ok=True)
    if net.templates is not None:
        seen = sorted({m for p in trainer.corpus_props.values() for m in p["modalities"]})
        with torch.no_grad():
            for m in seen:
                write_grid_nifti(net.templates.volume(m).float().cpu().numpy(), trainer.grid_geometry,
                                 os.path.join(out, "templates", f"template_{m}.nii.gz"),
                                 spacing=trainer.configuration_manager.spacing)
    last = {k: v[-1] for k, v in trainer.mm_log.items() if v}
    atomic_write_json({"epochs": trainer.current_epoch, "last": last, "objective": asdict(trainer.objective),
                       "first": {k: v[0] for k, v in trainer.mm_log.items() if v},
                       "trainer": type(trainer).__name__},
                      os.path.join(out, "summary.json"))
    trainer.print_to_log_file(f"pretraining summary written to {out}")
