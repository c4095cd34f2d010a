"""What does a frozen encoder know about tumours? A linear probe of its features, against random
encoders of the same topology.

For each encoder, every stage's output on whole preprocessed cases of a labelled nnU-Net dataset is
upsampled to the voxel grid and concatenated (a hypercolumn per voxel); a logistic regression
(scikit-learn) learns the labels from a sample of voxels of the training cases and predicts the
sampled voxels of the held-out cases; the score is the Dice of the BraTS regions (whole tumour,
tumour core, enhancing) of those predictions. Nothing is fine-tuned, so the numbers are
deterministic and say how much linearly readable tumour information the frozen features carry.
The same split and voxel samples are used for every encoder.

    .venv/bin/python scripts/probe_features.py --preprocessed $nnUNet_preprocessed/Dataset990_PhantomBraTS \\
        --configuration 3d_demo --bundles BUNDLE_DIR [BUNDLE_DIR ...] --strategies modality reinit \\
        [--random-seeds 0 1] [--train-cases 12] [--out bench_output/probe.json]
        [--per-stage] [--reference BUNDLE_DIR] [--unseen-regex '^[CD]_']

``--per-stage`` probes every encoder stage on its own as well (which stage carries the lesion
information); ``--reference`` adds, per stage, the linear CKA (centred kernel alignment, 1 = the
same features up to a rotation and scale) between each encoder's features and the reference
encoder's (e.g. the positive control trained with labels) on the same voxels: where a
self-supervised encoder's features part from the supervised ones. ``--unseen-regex``: cases whose
id matches are never used to fit the probe and are scored apart (unseen sites). A plot of the
per-stage scores is written beside ``--out``.

Channels are named by the dataset's ``channel_names``; stems are adapted with the given strategies
(``reinit`` = the bundle's stages behind a fresh stem: isolates the stages from the stem).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

REGIONS = {"whole tumor": (1, 2, 3), "tumor core": (1, 3), "enhancing tumor": (3,)}


def build(cm, channels, bundle=None, strategy="modality", seed=0):
    """The nnU-Net network of the configuration, random (seed) or with the bundle injected."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    torch.manual_seed(seed)
    net = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                 cm.network_arch_init_kwargs_req_import, len(channels), 4, allow_init=True,
                                 deep_supervision=False)
    if bundle is not None:
        from nnunet_mmpretrain.transfer.bundle import load_bundle
        from nnunet_mmpretrain.transfer.inject import inject_bundle
        inject_bundle(net, load_bundle(bundle), channels, strategy)
    return net.eval()


@torch.no_grad()
def hypercolumns(net, x: torch.Tensor) -> np.ndarray:
    """x (1, C, X, Y, Z) -> (F, X, Y, Z): every encoder stage, trilinearly upsampled, concatenated."""
    skips = net.encoder(x)
    size = x.shape[2:]
    return torch.cat([torch.nn.functional.interpolate(s, size=size, mode="trilinear") for s in skips], 1)[0].numpy()


@torch.no_grad()
def stage_outputs(net, x: torch.Tensor) -> list:
    """x (1, C, X, Y, Z) -> every encoder stage's output (1, F_s, X_s, Y_s, Z_s), as computed."""
    return list(net.encoder(x))


def linear_cka(a: np.ndarray, b: np.ndarray) -> float:
    """Linear CKA of two feature matrices (N, F_a) and (N, F_b) over the same N samples."""
    a, b = a - a.mean(0), b - b.mean(0)
    num = np.linalg.norm(a.T @ b) ** 2
    den = np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b)
    return float(num / den) if den > 0 else float("nan")


def sample_voxels(seg: np.ndarray, n: int, rng) -> np.ndarray:
    """(K, 3) voxel indices: up to n tumour voxels and n brain voxels (label >= 0)."""
    brain, tumour = np.argwhere(seg >= 0), np.argwhere(seg > 0)
    picks = [brain[rng.choice(len(brain), n)]]
    if len(tumour):
        picks.insert(0, tumour[rng.choice(len(tumour), min(n, len(tumour)))])
    return np.concatenate(picks)


def encoder_arguments(description: str) -> argparse.ArgumentParser:
    """The arguments every encoder diagnostic takes: a labelled preprocessed dataset, its plans and
    configuration, and the bundles to compare (random encoders are added by seed)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preprocessed", required=True, help="nnUNet_preprocessed/DatasetXXX_Name of a labelled dataset")
    p.add_argument("--plans", default="mmPretrainPlans")
    p.add_argument("--configuration", required=True)
    p.add_argument("--bundles", nargs="*", default=[])
    return p


def main(argv=None) -> int:
    p = encoder_arguments(__doc__)
    p.add_argument("--strategies", nargs="+", default=["modality", "reinit"])
    p.add_argument("--random-seeds", nargs="*", type=int, default=[0, 1])
    p.add_argument("--train-cases", type=int, default=12)
    p.add_argument("--voxels", type=int, default=3000, help="voxels per case and class group")
    p.add_argument("--per-stage", action="store_true", help="also probe every encoder stage on its own")
    p.add_argument("--reference", default=None, help="bundle whose per-stage features the others are compared to (CKA)")
    p.add_argument("--unseen-regex", default=None, help="cases never used to fit the probe, scored apart")
    p.add_argument("--out", default=None, help="JSON file for the scores")
    a = p.parse_args(argv)
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "2"))))
    import re
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunet_mmpretrain.transfer.stem import channel_modalities_from_dataset_json
    pm = PlansManager(os.path.join(a.preprocessed, a.plans + ".json"))
    cm = pm.get_configuration(a.configuration)
    channels = channel_modalities_from_dataset_json(os.path.join(a.preprocessed, "dataset.json"))
    folder = os.path.join(a.preprocessed, cm.data_identifier)
    ds = infer_dataset_class(folder)(folder)
    keys = sorted(ds.identifiers)
    unseen = [k for k in keys if a.unseen_regex and re.search(a.unseen_regex, k)]
    seen = [k for k in keys if k not in unseen]
    if len(seen) <= a.train_cases:
        sys.exit(f"error: {a.preprocessed}: {len(seen)} cases to fit on, need more than --train-cases {a.train_cases}")
    stride = int(np.prod([max(s) if isinstance(s, (list, tuple)) else s for s in cm.network_arch_init_kwargs["strides"]]))
    rng = np.random.default_rng(0)
    cases = {}
    for k in keys:
        d, s, _, _ = ds.load_case(k)
        d, s = np.asarray(d[:]), np.asarray(s[:])[0]
        pad = [(0, (-n) % stride) for n in d.shape[1:]]
        d = np.pad(d, [(0, 0)] + pad)
        s = np.pad(s, pad, constant_values=-1)
        cases[k] = (torch.from_numpy(d)[None].float(), s, sample_voxels(s, a.voxels, rng))
    parts = {"train": [cases[k] for k in seen[:a.train_cases]], "test": [cases[k] for k in seen[a.train_cases:]]}
    if unseen:
        parts["unseen"] = [cases[k] for k in unseen]
    n_stages = len(cm.network_arch_init_kwargs["features_per_stage"])
    groups = {"all stages": list(range(n_stages))}
    if a.per_stage:
        groups.update({f"stage {i}": [i] for i in range(n_stages)})

    def features(net):
        """{part: [(F, K) per stage-group source, labels]} from one pass over every case."""
        out = {}
        for part, items in parts.items():
            per_case = []
            for x, s, idx in items:
                outs = stage_outputs(net, x)
                up = [torch.nn.functional.interpolate(o, size=x.shape[2:], mode="trilinear")[0].numpy() for o in outs]
                per_case.append(([u[:, idx[:, 0], idx[:, 1], idx[:, 2]].T for u in up], s[idx[:, 0], idx[:, 1], idx[:, 2]],
                                 [o[0].flatten(1).numpy() for o in outs]))
            out[part] = per_case
        return out

    def probe(feats):
        from sklearn.linear_model import LogisticRegression
        res = {}
        for gname, stages in groups.items():
            def xy(part):
                return (np.concatenate([np.concatenate([f[i] for i in stages], 1) for f, _, _ in feats[part]]),
                        np.concatenate([y for _, y, _ in feats[part]]))
            Xa, Ya = xy("train")
            mu, sd = Xa.mean(0), Xa.std(0) + 1e-6
            clf = LogisticRegression(max_iter=500).fit((Xa - mu) / sd, Ya)
            for part in parts:
                if part == "train":
                    continue
                Xb, Yb = xy(part)
                pred = clf.predict((Xb - mu) / sd)
                for name, labs in REGIONS.items():
                    pa, pb = np.isin(pred, labs), np.isin(Yb, labs)
                    res[f"{part} | {gname} | {name}"] = float(2 * (pa & pb).sum() / max(pa.sum() + pb.sum(), 1))
        return res

    cka_rng = np.random.default_rng(1)
    cka_idx = {}   # per (part, case, stage): the same positions for every encoder

    def cka_to(feats, ref):
        res = {}
        for st in range(n_stages):
            xs, ys = [], []
            for part in parts:
                for ci, ((_, _, fo), (_, _, ro)) in enumerate(zip(feats[part], ref[part])):
                    n = fo[st].shape[1]
                    key = (part, ci, st)
                    if key not in cka_idx:
                        cka_idx[key] = cka_rng.choice(n, min(n, 400), replace=False)
                    xs.append(fo[st][:, cka_idx[key]].T)
                    ys.append(ro[st][:, cka_idx[key]].T)
            res[f"cka stage {st}"] = linear_cka(np.concatenate(xs), np.concatenate(ys))
        return res

    ref = features(build(cm, channels, a.reference, "modality")) if a.reference else None
    encoders = [(f"random (seed {seed})", "-", None, seed) for seed in a.random_seeds]
    encoders += [(b, strat, b, 0) for b in a.bundles for strat in a.strategies]
    results = []
    for name, strat, bundle, seed in encoders:
        feats = features(build(cm, channels, bundle, strat if bundle else "modality", seed))
        row = {"encoder": name, "strategy": strat, **probe(feats)}
        if ref is not None:
            row.update(cka_to(feats, ref))
        results.append(row)
        print(json.dumps(row), flush=True)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump({"reference": a.reference, "unseen_regex": a.unseen_regex, "cases": {
                "train": seen[:a.train_cases], "test": seen[a.train_cases:], "unseen": unseen}, "results": results}, f,
                indent=1)
        if a.per_stage or ref is not None:
            plot(results, n_stages, os.path.splitext(a.out)[0] + ".png")
    return 0


def plot(results: list, n_stages: int, path: str) -> None:
    """Per-stage probe Dice (whole tumour, held-out and unseen cases) and CKA to the reference."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = sorted({k.split(" | ")[0] for r in results for k in r if " | " in k})
    panels = [(f"{part} | stage {{}} | whole tumor", f"probe Dice, whole tumour ({part})") for part in keys]
    if any("cka stage 0" in r for r in results):
        panels.append(("cka stage {}", "linear CKA to the reference"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, (pat, title) in zip(axes[0], panels):
        for r in results:
            ys = [r.get(pat.format(i), np.nan) for i in range(n_stages)]
            ax.plot(range(n_stages), ys, marker="o", label=f"{os.path.basename(str(r['encoder']).rstrip('/'))} "
                                                          f"{'' if r['strategy'] == '-' else r['strategy']}")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("encoder stage")
        ax.set_xticks(range(n_stages))
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
