"""Classification commands.

``nnUNetv2_mmpretrain_classify``: class probabilities for new cases (raw images in nnU-Net's
naming, ``CASE_0000.nii.gz`` ...) from one or several trained folds (probabilities averaged), as
a CSV ``case,prediction,class,prob_0,...``::

    nnUNetv2_mmpretrain_classify -i IMAGES -o probs.csv -d 991 -c 3d_fullres -f 0 1 2 3 4 \\
        -tr nnUNetTrainerMMClassifier -p mmPretrainPlans

``nnUNetv2_mmpretrain_classify_summary``: cross-validation summary of a trained classifier: per
metric the per-fold values and mean +- std (ddof=1), plus the pooled validation cases; written to
``cv_summary.json`` beside the folds (or ``-o``) and printed::

    nnUNetv2_mmpretrain_classify_summary -d 991 -c 3d_fullres -tr nnUNetTrainerMMClassifier -p mmPretrainPlans

Problems (missing folds, bad inputs) end with one ``error:`` line and exit code 2.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from nnunet_mmpretrain.cli._common import check_n_proc_da, die, disk_errors, output_file, require_trained_folder
from nnunet_mmpretrain.io_utils import atomic_write_json


def _trainer_dir(a) -> str:
    if getattr(a, "folder", None):
        return a.folder
    if not os.environ.get("nnUNet_results"):
        die("nnUNet_results is not set: export it, or give the trainer folder with --folder.")
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    try:
        name = maybe_convert_to_dataset_name(a.d)
    except RuntimeError as e:
        die(f"{str(e).splitlines()[0]} (dataset {a.d!r}).")
    folder = os.path.join(os.environ["nnUNet_results"], name, f"{a.tr}__{a.p}__{a.c}")
    if not os.path.isdir(folder):
        die(f"no trained classifier at {folder}: check -d/-c/-tr/-p or train it with nnUNetv2_train.")
    return folder


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-d", help="dataset name or id")
    p.add_argument("-c", default="3d_fullres", help="configuration (default 3d_fullres)")
    p.add_argument("-tr", default="nnUNetTrainerMMClassifier", help="trainer (default nnUNetTrainerMMClassifier)")
    p.add_argument("-p", default="mmPretrainPlans", help="plans identifier (default mmPretrainPlans)")
    p.add_argument("--folder", help="the trainer's results folder (instead of -d/-c/-tr/-p)")


def main_predict(argv=None) -> int:
    p = argparse.ArgumentParser(prog="nnUNetv2_mmpretrain_classify", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-i", required=True, help="folder of images in nnU-Net naming (CASE_0000.nii.gz, ...)")
    p.add_argument("-o", required=True, help="output CSV of class probabilities")
    _model_args(p)
    p.add_argument("-f", nargs="+", default=["0", "1", "2", "3", "4"], help="folds to average (default 0 1 2 3 4)")
    p.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint file name (default checkpoint_final.pth)")
    p.add_argument("-device", default="cuda", choices=("cuda", "cpu", "mps"),
                   help="device (default cuda; cpu when no GPU is present)")
    p.add_argument("--mirror", action="store_true", help="test-time mirroring on the three axes")
    a = p.parse_args(argv)
    check_n_proc_da()  # before nnU-Net is imported (it reads the variable on import)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not a.folder and not a.d:
        die("give -d DATASET (with -c/-tr/-p) or --folder TRAINER_FOLDER.")
    if not os.path.isdir(a.i):
        die(f"-i {a.i} is not a folder of images (CASE_0000.nii.gz, ...): check the path.")
    output_file(a.o, "-o", inputs=[a.i])
    folder = _trainer_dir(a)
    require_trained_folder(folder, "pass the trainer's results folder (--folder).")
    import torch
    # imported here, not at the top: it loads torch / nnU-Net, which --help and argument errors do not need
    from nnunet_mmpretrain.classification.predict import ClassifierModelError, predict_folder, write_predictions_csv
    dev = a.device
    if dev == "cuda" and not torch.cuda.is_available():
        logging.getLogger(__name__).warning("no CUDA device: predicting on the CPU")
        dev = "cpu"
    if dev == "cpu":
        torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))
    try:
        ids, probs, names = predict_folder(folder, a.i, a.f, a.chk, torch.device(dev), a.mirror)
    except ClassifierModelError as e:
        die(str(e))
    with disk_errors(a.o):
        write_predictions_csv(a.o, ids, probs, names)
    print(f"{len(ids)} case(s) classified with {len(a.f)} fold(s) of {folder} -> {a.o}")
    return 0


def main_summary(argv=None) -> int:
    p = argparse.ArgumentParser(prog="nnUNetv2_mmpretrain_classify_summary", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _model_args(p)
    p.add_argument("-f", nargs="+", help="folds to summarise (default: every fold_N with a summary.json)")
    p.add_argument("-o", help="output JSON (default: cv_summary.json in the trainer folder)")
    a = p.parse_args(argv)
    check_n_proc_da()  # before nnU-Net is imported (it reads the variable on import)
    if not a.folder and not a.d:
        die("give -d DATASET (with -c/-tr/-p) or --folder TRAINER_FOLDER.")
    folder = _trainer_dir(a)
    if not os.path.isdir(folder):
        die(f"--folder {folder} does not exist: pass the trainer's results folder.")
    if a.o:
        output_file(a.o, "-o")
    # imported here, not at the top: it loads torch / nnU-Net, which --help and argument errors do not need
    from nnunet_mmpretrain.classification.metrics import CV_FILE, cross_validation_summary, format_cv_table
    try:
        cv = cross_validation_summary(folder, a.f)
    except (FileNotFoundError, ValueError, KeyError) as e:
        die(str(e))
    if a.f:
        missing = [f for f in a.f if f"fold_{f}" not in cv["folds"] and f not in cv["folds"]]
        if missing:
            die(f"fold(s) {', '.join(missing)} of {folder} have no summary.json: train and validate them first.")
    out = a.o or os.path.join(folder, CV_FILE)
    with disk_errors(out):
        atomic_write_json(cv, out)
    print(format_cv_table(cv))
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main_predict())
