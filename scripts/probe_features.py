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


def sample_voxels(seg: np.ndarray, n: int, rng) -> np.ndarray:
    """(K, 3) voxel indices: up to n tumour voxels and n brain voxels (label >= 0)."""
    brain, tumour = np.argwhere(seg >= 0), np.argwhere(seg > 0)
    picks = [brain[rng.choice(len(brain), n)]]
    if len(tumour):
        picks.insert(0, tumour[rng.choice(len(tumour), min(n, len(tumour)))])
    return np.concatenate(picks)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preprocessed", required=True, help="nnUNet_preprocessed/DatasetXXX_Name of a labelled dataset")
    p.add_argument("--plans", default="mmPretrainPlans")
    p.add_argument("--configuration", required=True)
    p.add_argument("--bundles", nargs="*", default=[])
    p.add_argument("--strategies", nargs="+", default=["modality", "reinit"])
    p.add_argument("--random-seeds", nargs="*", type=int, default=[0, 1])
    p.add_argument("--train-cases", type=int, default=12)
    p.add_argument("--voxels", type=int, default=3000, help="voxels per case and class group")
    p.add_argument("--out", default=None, help="JSON file for the scores")
    a = p.parse_args(argv)
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "2"))))
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from sklearn.linear_model import LogisticRegression
    from nnunet_mmpretrain.transfer.stem import channel_modalities_from_dataset_json
    pm = PlansManager(os.path.join(a.preprocessed, a.plans + ".json"))
    cm = pm.get_configuration(a.configuration)
    channels = channel_modalities_from_dataset_json(os.path.join(a.preprocessed, "dataset.json"))
    folder = os.path.join(a.preprocessed, cm.data_identifier)
    ds = infer_dataset_class(folder)(folder)
    keys = sorted(ds.identifiers)
    if len(keys) <= a.train_cases:
        sys.exit(f"error: {a.preprocessed}: {len(keys)} cases, need more than --train-cases {a.train_cases}")
    stride = int(np.prod([max(s) if isinstance(s, (list, tuple)) else s for s in cm.network_arch_init_kwargs["strides"]]))
    rng = np.random.default_rng(0)
    cases = []
    for k in keys:
        d, s, _, _ = ds.load_case(k)
        d, s = np.asarray(d[:]), np.asarray(s[:])[0]
        pad = [(0, (-n) % stride) for n in d.shape[1:]]
        d = np.pad(d, [(0, 0)] + pad)
        s = np.pad(s, pad, constant_values=-1)
        cases.append((torch.from_numpy(d)[None].float(), s, sample_voxels(s, a.voxels, rng)))
    tr, te = cases[:a.train_cases], cases[a.train_cases:]

    def features(net, part):
        X, Y = [], []
        for x, s, idx in part:
            f = hypercolumns(net, x)
            X.append(f[:, idx[:, 0], idx[:, 1], idx[:, 2]].T)
            Y.append(s[idx[:, 0], idx[:, 1], idx[:, 2]])
        return np.concatenate(X), np.concatenate(Y)

    def score(net):
        Xa, Ya = features(net, tr)
        Xb, Yb = features(net, te)
        mu, sd = Xa.mean(0), Xa.std(0) + 1e-6
        pred = LogisticRegression(max_iter=500).fit((Xa - mu) / sd, Ya).predict((Xb - mu) / sd)
        out = {}
        for name, labs in REGIONS.items():
            pa, pb = np.isin(pred, labs), np.isin(Yb, labs)
            out[name] = float(2 * (pa & pb).sum() / max(pa.sum() + pb.sum(), 1))
        return out

    results = []
    for seed in a.random_seeds:
        results.append({"encoder": f"random (seed {seed})", "strategy": "-", **score(build(cm, channels, seed=seed))})
        print(json.dumps(results[-1]), flush=True)
    for b in a.bundles:
        for strat in a.strategies:
            results.append({"encoder": b, "strategy": strat, **score(build(cm, channels, b, strat))})
            print(json.dumps(results[-1]), flush=True)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
