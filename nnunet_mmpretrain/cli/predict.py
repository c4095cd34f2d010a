"""``nnUNetv2_mmpretrain_predict``: nnUNetv2_predict for cases that may lack channels.

A missing channel (no ``CASE_XXXX`` file for it) is filled with the pretrained template of the
modality it carries (``--bundle``), resampled onto the case; each substitution is printed and
written to ``template_substitutions.json``. Complete cases are predicted as nnU-Net would.
"""
from __future__ import annotations

import argparse
import glob
import logging
import os
import sys

from nnunet_mmpretrain.cli._common import check_n_proc_da, die, disk_errors, output_folder, require_trained_folder


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="nnUNetv2_mmpretrain_predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-i", required=True, help="input folder (nnU-Net naming CASE_XXXX.nii.gz)")
    p.add_argument("-o", required=True, help="output folder")
    p.add_argument("-d", required=True, help="dataset id or name")
    p.add_argument("-c", required=True, help="configuration")
    p.add_argument("-f", nargs="+", default=["0"], help="folds (default 0)")
    p.add_argument("-tr", default="nnUNetTrainerMMFinetune")
    p.add_argument("-p", default="mmPretrainPlans")
    p.add_argument("-chk", default="checkpoint_final.pth")
    p.add_argument("--bundle", default=None, help="encoder bundle folder whose templates fill missing channels")
    p.add_argument("-device", default="cpu")
    p.add_argument("--tta", action="store_true", help="mirroring test-time augmentation (8x slower)")
    p.add_argument("-np", type=int, default=1)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    check_n_proc_da()  # before nnU-Net is imported (it reads the variable on import)
    if not os.path.isdir(a.i):
        die(f"-i {a.i} is not a folder of images (CASE_XXXX.nii.gz): check the path.")
    output_folder(a.o, "-o", inputs=[a.i])
    # imported here, not at the top: it loads torch / nnU-Net, which --help and argument errors do not need
    from nnunet_mmpretrain.transfer.bundle import BUNDLE_FILE
    if a.bundle and not (os.path.isdir(a.bundle) and os.path.isfile(os.path.join(a.bundle, BUNDLE_FILE))):
        die(f"--bundle {a.bundle} is not a bundle folder (no {BUNDLE_FILE}): pass the folder written by "
            f"nnUNetv2_mmpretrain_export.")
    if a.bundle:  # every template compared with its recorded SHA-256 now, not mid-prediction
        from nnunet_mmpretrain.transfer.bundle_format import BundleError, check_recorded_sha256
        try:
            for t in sorted(glob.glob(os.path.join(a.bundle, "templates", "*.nii.gz"))):
                check_recorded_sha256(t)
        except BundleError as e:
            die(f"--bundle {a.bundle}: {e}")
    if a.np < 1:
        die(f"-np must be at least 1, got {a.np}.")
    try:
        folds = [f if f == "all" else int(f) for f in a.f]
    except ValueError:
        die(f"-f takes fold numbers or 'all', got {' '.join(a.f)}.")
    if not os.environ.get("nnUNet_results"):
        die("nnUNet_results is not set: export it (see nnU-Net's documentation/setting_up_paths.md).")
    from nnunetv2.utilities.file_path_utilities import get_output_folder
    try:
        model = get_output_folder(a.d, a.tr, a.p, a.c)
    except RuntimeError as e:
        die(f"{str(e).strip().splitlines()[0]} (-d {a.d}): check -d or $nnUNet_raw / $nnUNet_results.")
    require_trained_folder(model, "check -d/-c/-tr/-p.")
    for f in folds:
        ck = os.path.join(model, f"fold_{f}", a.chk)
        if not os.path.isfile(ck):
            die(f"{ck} does not exist: train fold {f} first, or pick trained folds with -f / another -chk.")
    if os.path.realpath(a.o) == os.path.realpath(model):
        die(f"-o {a.o} is the model folder: write the predictions to another folder.")
    from nnunet_mmpretrain.transfer.predict import predict_with_templates
    try:
        with disk_errors(a.o):
            predict_with_templates(a.i, a.o, model, folds, a.bundle, a.chk, a.device, a.tta, a.np)
    except (ValueError, FileNotFoundError) as e:
        die(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
