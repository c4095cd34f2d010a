"""Pictures of pretraining: per-term loss curves and a montage of templates and reconstructions."""
from __future__ import annotations

from typing import Dict, List

import numpy as np

from nnunet_mmpretrain.io_utils import atomic_path
from nnunet_mmpretrain.modalities import MODALITIES


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: str) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80)


def plot_progress(log: Dict[str, List[float]], path: str) -> None:
    """Four panels: loss terms (train solid, val dashed); per view (template, cross-modal) the
    masked-voxel MSE on the fixed validation patches against its two baselines; learning rate."""
    plt = _plt()
    fig, ax = plt.subplots(1, 4, figsize=(20, 4.2))
    ep = np.arange(len(log["train_loss"]))
    for k, c in (("loss", "k"), ("l_md", "tab:blue"), ("l_cmr", "tab:orange"), ("l_mcl", "tab:green"),
                 ("l_joint", "tab:brown")):
        tr = np.asarray(log.get(f"train_{k}", [np.nan]), dtype=float)
        if not (np.isfinite(tr) & (tr > 0)).any():
            continue                                           # a term this objective does not have
        ax[0].plot(ep, log[f"train_{k}"], color=c, label=f"train {k}")
        if len(log[f"val_{k}"]) == len(ep):
            ax[0].plot(ep, log[f"val_{k}"], color=c, ls="--", label=f"val {k}")
    ax[0].set_yscale("log")
    ax[0].set_title("loss terms")
    for a, v, name in ((ax[1], "md", "template view"), (ax[2], "cmr", "cross-modal view")):
        for k, c, lab in (("masked_mse", "tab:red", "network"), ("baseline_patch_mean", "0.5", "patch mean"),
                          ("baseline_fill", "tab:purple", "fill left in place")):
            if len(log[f"val_{v}_{k}"]) == len(ep):
                a.plot(ep, log[f"val_{v}_{k}"], color=c, label=lab)
        if v == "md" and np.isfinite(log.get("val_joint_masked_mse", [np.nan])).any():
            a.plot(ep, log["val_joint_masked_mse"], color="tab:brown", ls="--", label="joint view (same target)")
        a.set_title(f"{name}: MSE on masked voxels (fixed val patches)", fontsize=9)
    ax[3].plot(ep, log["lr"], color="k")
    ax[3].set_title("learning rate (network)")
    for a in ax:
        a.set_xlabel("epoch")
        a.legend(fontsize=7) if a.get_legend_handles_labels()[0] else None
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_montage(net, batch, path: str) -> None:
    """Top: the central axial slice of each trained template. Below, per sample: target, the two
    views and their reconstructions (central slice)."""
    import torch
    plt = _plt()
    target, view_md, view_cmr, recon, keys = batch
    B = target.shape[0]
    rows = B + 1
    fig, ax = plt.subplots(rows, 5, figsize=(12, 2.4 * rows))
    ax = np.atleast_2d(ax)
    for a in ax.ravel():
        a.axis("off")
    if net.templates is not None:
        with torch.no_grad():
            shown = 0
            for i, m in enumerate(MODALITIES):
                vol = net.templates.volume(m).float().cpu().numpy()
                if shown < 5 and float(vol.max() - vol.min()) > 0:
                    ax[0, shown].imshow(vol[vol.shape[0] // 2], cmap="gray")
                    ax[0, shown].set_title(f"template {m}", fontsize=8)
                    shown += 1
    nb = recon.shape[0] // 2
    for b in range(B):
        z = target.shape[2] // 2
        imgs = [target[b, 0, z], view_md[b, 0, z], recon[b, 0, z], view_cmr[b, 0, z], recon[nb + b, 0, z]]
        titles = ["target", "template view", "recon", "cross-modal view", "recon"]
        for j, (im, t) in enumerate(zip(imgs, titles)):
            ax[b + 1, j].imshow(im.numpy(), cmap="gray", vmin=-2, vmax=3)  # z-scores
            ax[b + 1, j].set_title(f"{t}" + (f" ({keys[b]})" if j == 0 else ""), fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
