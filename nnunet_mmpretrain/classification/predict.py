"""Class probabilities for cases: from preprocessed arrays (validation) or from raw images in
nnU-Net's naming (``CASE_0000.nii.gz`` ...), with one or several folds of a trained classifier.

Each case (C, X, Y, Z) is centred in the model's whole-case input size, the network gives logits
(1, K), softmax gives probabilities (K,); several folds are averaged. Checkpoints are read with
``torch.load(weights_only=True)``; the class names and input size come from the checkpoint, so
prediction needs neither ``classes.csv`` nor the training data.

CSV written by :func:`write_predictions_csv`::

    case,prediction,class,prob_0,...,prob_{K-1}
"""
from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch

from nnunet_mmpretrain.classification.data import crop_or_pad
from nnunet_mmpretrain.classification.network import build_classifier
from nnunet_mmpretrain.io_utils import atomic_path

log = logging.getLogger(__name__)


class ClassifierModelError(RuntimeError):
    """A clear, user-facing problem with a trained classifier folder or its inputs."""


@torch.no_grad()
def predict_arrays(network, arrays: Iterable[np.ndarray], input_size: Sequence[int], device: torch.device,
                   mirror_axes: Optional[Sequence[int]] = None) -> np.ndarray:
    """Probabilities (N, K) for preprocessed cases (each (C, X, Y, Z)), one case at a time.
    ``mirror_axes``: spatial axes (0-2) to average flipped predictions over (test-time mirroring)."""
    network.eval()
    out = []
    for a in arrays:
        x = torch.from_numpy(crop_or_pad(np.asarray(a[:]), input_size))[None].to(device)
        views = [x] + [torch.flip(x, (ax + 2,)) for ax in (mirror_axes or [])]
        p = torch.stack([torch.softmax(network(v).float(), 1) for v in views]).mean(0)
        out.append(p[0].cpu().numpy())
    return np.stack(out) if out else np.zeros((0, 0))


@dataclass
class TrainedClassifier:
    """A trained fold: network (on ``device``), input size, class names {id: name}."""
    network: torch.nn.Module
    input_size: List[int]
    names: Dict[int, str]
    checkpoint: str


def load_fold(trainer_dir: str, fold: str, checkpoint: str = "checkpoint_final.pth",
              device: torch.device = torch.device("cpu")) -> TrainedClassifier:
    """Rebuild the classifier of ``trainer_dir/fold_X`` from plans.json + the checkpoint."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    path = os.path.join(trainer_dir, f"fold_{fold}", checkpoint)
    if not os.path.isfile(path):
        raise ClassifierModelError(f"{path} does not exist: train fold {fold} first (nnUNetv2_train ... {fold} -tr "
                                   f"TRAINER) or choose folds with -f / the checkpoint with -chk.")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ClassifierModelError(f"cannot read {path} ({type(e).__name__}): damaged or not a checkpoint.") from None
    block = ck.get("classification")
    if not block:
        raise ClassifierModelError(f"{path} is not a classifier checkpoint (trainer {ck.get('trainer_name')!r}): use "
                                   f"a nnUNetTrainerMMClassifier* results folder.")
    plans = PlansManager(os.path.join(trainer_dir, "plans.json"))
    cm = plans.get_configuration(ck["identity"]["configuration"])
    names = {int(k): v for k, v in block["classes"].items()}
    net = build_classifier(cm, block["num_input_channels"], len(names), block["features"], block["dropout"],
                           block["head_hidden"])
    net.load_state_dict(ck["network_weights"])
    return TrainedClassifier(net.to(device).eval(), list(block["input_size"]), names, path)


def raw_cases(folder: str, file_ending: str, num_channels: int) -> Dict[str, List[str]]:
    """{case id: [channel files]} of a folder in nnU-Net's naming; checks every channel exists."""
    if not os.path.isdir(folder):
        raise ClassifierModelError(f"input folder {folder} does not exist.")
    n = len(file_ending) + 5                      # "_XXXX" + file ending
    names = sorted(f for f in os.listdir(folder) if f.endswith(file_ending) and len(f) > n
                   and f[-n] == "_" and f[-n + 1:-len(file_ending)].isdigit())
    files: Dict[str, List[str]] = {}
    for f in names:
        files.setdefault(f[:-n], []).append(os.path.join(folder, f))
    if not files:
        raise ClassifierModelError(f"no images named CASE_XXXX{file_ending} in {folder}.")
    bad = {k: len(v) for k, v in files.items() if len(v) != num_channels}
    if bad:
        k, n = next(iter(bad.items()))
        raise ClassifierModelError(f"case {k} in {folder} has {n} channel file(s), the model needs {num_channels} "
                                   f"(CASE_0000{file_ending} ... CASE_{num_channels - 1:04d}{file_ending}).")
    return files


def predict_folder(trainer_dir: str, input_folder: str, folds: Sequence[str], checkpoint: str = "checkpoint_final.pth",
                   device: torch.device = torch.device("cpu"), mirror: bool = False):
    """(case ids, probabilities (N, K) averaged over folds, names) for the raw cases in ``input_folder``,
    preprocessed with the plans' own nnU-Net preprocessor."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    with open(os.path.join(trainer_dir, "dataset.json")) as f:
        dataset_json = json.load(f)
    models = [load_fold(trainer_dir, fd, checkpoint, device) for fd in folds]
    names = models[0].names
    if any(m.names != names or m.input_size != models[0].input_size for m in models):
        raise ClassifierModelError(f"the folds {', '.join(map(str, folds))} of {trainer_dir} have different classes "
                                   f"or input sizes: predict with folds of one training.")
    pm = PlansManager(os.path.join(trainer_dir, "plans.json"))
    ck = torch.load(models[0].checkpoint, map_location="cpu", weights_only=True)
    cm = pm.get_configuration(ck["identity"]["configuration"])
    n_ch = len(dataset_json["channel_names"])
    cases = raw_cases(input_folder, dataset_json["file_ending"], n_ch)
    pre = cm.preprocessor_class(verbose=False)
    ids, probs = [], []
    for cid, files in cases.items():
        data, _, _ = pre.run_case(files, None, pm, cm, dataset_json)
        p = np.mean([predict_arrays(m.network, [data], m.input_size, device, (0, 1, 2) if mirror else None)[0]
                     for m in models], axis=0)
        ids.append(cid)
        probs.append(p)
        log.info("%s: %s", cid, ", ".join(f"{names[k]} {v:.3f}" for k, v in enumerate(p)))
    return ids, np.stack(probs), names


def write_predictions_csv(path: str, cases: Sequence[str], probs: np.ndarray, names: Dict[int, str]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "prediction", "class"] + [f"prob_{k}" for k in range(probs.shape[1])])
        for c, p in zip(cases, probs):
            k = int(np.argmax(p))
            w.writerow([c, k, names[k]] + [f"{float(v):.6f}" for v in p])
