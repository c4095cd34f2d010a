#!/usr/bin/env python
"""Do a bundle's modality stems keep the modalities apart?

Two measurements per encoder bundle (and for random encoders of the same topology):

* the mean per-filter cosine similarity between the input kernels of every pair of modality stems
  (1.0 = the same filter: the ``modality`` transfer then feeds the encoder the *average* of those
  channels);
* the effective rank of every encoder stage's features (participation ratio of the channel
  covariance eigenvalues, as a share of the stage's channels) on the first cases of a labelled
  preprocessed dataset, with all its channels through the adapted stem and with each channel
  alone through its own stem. A multi-channel input that adds no rank over one channel alone
  means the stem merged the channels.

    .venv/bin/python scripts/stem_similarity.py --preprocessed $nnUNet_preprocessed/Dataset993_PhantomSites \\
        --configuration 3d_bench --bundles BUNDLE_DIR [BUNDLE_DIR ...] [--cases 6] [--out stems.json]
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from probe_features import build, encoder_arguments  # noqa: E402


@torch.no_grad()
def effective_ranks(net, inputs) -> list:
    """Per encoder stage: participation ratio of the channel covariance / number of channels."""
    feats = [net.encoder(x) for x in inputs]
    out = []
    for s in range(len(feats[0])):
        f = torch.cat([fs[s][0].flatten(1) for fs in feats], 1).double().numpy()
        ev = np.clip(np.linalg.eigvalsh(np.cov(f)), 0, None)
        out.append(float(ev.sum() ** 2 / max((ev ** 2).sum(), 1e-300)) / f.shape[0])
    return out


def main(argv=None) -> int:
    p = encoder_arguments(__doc__)
    p.add_argument("--random-seeds", nargs="*", type=int, default=[0])
    p.add_argument("--cases", type=int, default=6)
    p.add_argument("--out", default=None, help="JSON file for the figures")
    a = p.parse_args(argv)
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunet_mmpretrain.transfer.bundle import load_bundle
    from nnunet_mmpretrain.transfer.stem import channel_modalities_from_dataset_json, stem_kernel_cosines
    cm = PlansManager(os.path.join(a.preprocessed, a.plans + ".json")).get_configuration(a.configuration)
    channels = channel_modalities_from_dataset_json(os.path.join(a.preprocessed, "dataset.json"))
    folder = os.path.join(a.preprocessed, cm.data_identifier)
    ds = infer_dataset_class(folder)(folder)
    stride = int(np.prod([max(s) if isinstance(s, (list, tuple)) else s for s in cm.network_arch_init_kwargs["strides"]]))
    xs = []
    for k in sorted(ds.identifiers)[:a.cases]:
        d = np.asarray(ds.load_case(k)[0][:])
        xs.append(torch.from_numpy(np.pad(d, [(0, 0)] + [(0, (-n) % stride) for n in d.shape[1:]]))[None].float())
    encoders = [(os.path.basename(os.path.dirname(os.path.abspath(b))) or b, b) for b in a.bundles] + \
        [(f"random seed {s}", s) for s in a.random_seeds]
    results = {}
    for name, src in encoders:
        bundle = src if isinstance(src, str) else None
        seed = src if isinstance(src, int) else 0
        r = {"kernel_cosine": stem_kernel_cosines(load_bundle(bundle)) if bundle else {},
             "rank_all_channels": effective_ranks(build(cm, channels, bundle, "modality", seed), xs)}
        for c, m in enumerate(channels):
            r[f"rank_{m}_alone"] = effective_ranks(build(cm, [m], bundle, "modality", seed), [x[:, c:c + 1] for x in xs])
        results[name] = r
        cos = ", ".join(f"{k} {v:.2f}" for k, v in r["kernel_cosine"].items()) or "n/a (random)"
        alone = [r[f"rank_{m}_alone"][0] for m in channels]
        print(f"{name}: stem kernel cosine {cos}\n    stage ranks, all channels: "
              f"{' '.join(f'{v:.2f}' for v in r['rank_all_channels'])}; first stage with one channel alone: "
              f"{min(alone):.2f}-{max(alone):.2f}")
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
