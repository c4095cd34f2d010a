"""``nnUNetv2_mmpretrain_convert``: public dataset releases -> nnU-Net raw datasets / corpora.

    nnUNetv2_mmpretrain_convert KIND RELEASE_ROOT [-d ID] [-o OUT_RAW_DIR] [--name NAME]
                                [--link | --copy] [--dry-run] [--overwrite] [-np N] [--verify] ...

KIND is one of the sub-commands below (``nnUNetv2_mmpretrain_convert KIND -h`` lists its own
options). Output goes to ``OUT_RAW_DIR/DatasetID_NAME`` (default ``$nnUNet_raw``). Re-running
resumes: finished cases are skipped. See docs/CONVERSION.md.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from typing import Dict, List, Optional

from nnunet_mmpretrain.cli._common import die

PROG = "nnUNetv2_mmpretrain_convert"
DEFAULT_ID_HELP = {"brats2023": "by sub-challenge: 522-526", "brats2024": "by sub-challenge: GLI 534, MET 535, "
                                                                          "SSA 536"}

HELP = {
    "brats2021": "BraTS 2021: BraTS2021_XXXXX/BraTS2021_XXXXX_{t1,t1ce,t2,flair,seg}.nii.gz "
                 "(labels 1,2,4 -> 1,2,3)",
    "brats2023": "BraTS 2023 GLI/MEN/MET/PED/SSA: BraTS-GLI-XXXXX-YYY/...-{t1n,t1c,t2w,t2f,seg}.nii.gz "
                 "(labels 0-3 kept)",
    "brats2024": "BraTS 2024 GLI/MET/SSA: same files as 2023; GLI label 4 (resection cavity) kept as its "
                 "own class or mapped (--resection-cavity)",
    "msd-brain": "MSD Task01_BrainTumour: 4D imagesTr/BRATS_XXX.nii.gz (labels 1->2, 2->1, 3->3)",
    "isles2022": "ISLES 2022 (BIDS): DWI, ADC and the FLAIR rigidly registered onto the DWI (Mattes MI; "
                 "--no-register: scanner coordinates); lesion masks",
    "upenn-gbm": "UPENN-GBM: images_structural/ID/ID_{T1,T1GD,T2,FLAIR}.nii.gz + images_segm "
                 "(labels 1,2,4 -> 1,2,3)",
    "mrbrains13": "MRBrainS13: <subject>/{T1,T1_IR,T2_FLAIR,LabelsForTraining}.nii (or .mhd)",
    "vsseg": "Vestibular-Schwannoma-SEG as NIfTI (VS_Seg scripts: vs_gk_N/vs_gk_{t1,seg}_refT1.nii.gz, "
             "or their BIDS export); ceT1 or T2 with its own mask",
    "brats2018-grade": "BraTS 2018 HGG/LGG: images + segmentations + classes.csv (label 1 = HGG)",
    "csv-labels": "classification labels from a CSV (ADNI, ADHD-200, ABIDE, ...) + an image folder",
    "corpus-brats": "pretraining corpus from BraTS 2021 / 2023 images (no labels needed)",
    "corpus-ixi": "pretraining corpus from IXI (T1, T2, PD, MRA; optional resampling to T1)",
    "corpus-ucsf-pdgm": "pretraining corpus from UCSF-PDGM (T1, T1c, T2, FLAIR, DWI, ADC; follow-up exams "
                        "grouped under their patient)",
    "corpus-folder": "pretraining corpus from subject folders of <anything>_<modality>.nii.gz",
}


def _common(p: argparse.ArgumentParser, kind: str) -> None:
    from nnunet_mmpretrain.conversion import KINDS
    _mod, what, did, dname = KINDS[kind]
    root_help = {"csv-labels": "folder holding the images (the --pattern paths are relative to it)"}
    p.add_argument("release_root", metavar="RELEASE_ROOT",
                   help=root_help.get(kind, "folder of the unpacked public release"))
    p.add_argument("-d", "--dataset-id", type=int, default=None,
                   help=f"nnU-Net dataset id (default {did if did else DEFAULT_ID_HELP.get(kind, '')})")
    p.add_argument("-o", "--out", default=None, metavar="OUT_RAW_DIR",
                   help="nnU-Net raw folder to write into (default: $nnUNet_raw)")
    p.add_argument("--name", default=None, help=f"dataset name (default {dname})")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--link", dest="link", action="store_true", default=True,
                   help="hard-link unchanged images (default; copies where links are impossible)")
    g.add_argument("--copy", dest="link", action="store_false", help="copy images instead of hard-linking")
    p.add_argument("--dry-run", action="store_true", help="report what would be done, write nothing")
    p.add_argument("--overwrite", action="store_true",
                   help="convert every case again (an existing dataset folder is replaced, in a "
                        "corpus only the cases of the converted sources; the new one is built beside "
                        "it and swapped in when complete, so an interrupted run keeps the old one)")
    p.add_argument("-np", "--num-processes", type=int, default=1, help="parallel worker processes (default 1)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    if what != "corpus":
        p.add_argument("--verify", action="store_true",
                       help="run nnU-Net's verify_dataset_integrity on the result")
    else:
        p.add_argument("--case-prefix", default="", help="prefix for every case id (avoids clashes when "
                                                         "several sources share one corpus)")
        p.add_argument("--atlas-registered", choices=("auto", "yes", "no"), default="auto",
                       help="manifest flag: all scans on one atlas grid (auto: checked on the headers)")


def build_parser() -> argparse.ArgumentParser:
    from nnunet_mmpretrain.conversion import KINDS
    p = argparse.ArgumentParser(
        prog=PROG, description="Convert public dataset releases into nnU-Net raw datasets "
                               "(segmentation, classification) or pretraining corpora. "
                               "Resumable: finished cases are skipped on a re-run.",
        epilog="See docs/CONVERSION.md for the layouts, default dataset ids and label conventions.")
    sub = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    sp: Dict[str, argparse.ArgumentParser] = {}
    for kind in KINDS:
        sp[kind] = sub.add_parser(kind, help=HELP[kind], description=HELP[kind])
        _common(sp[kind], kind)
    sp["brats2023"].add_argument("--subset", choices=("GLI", "MEN", "MET", "PED", "SSA"), type=str.upper,
                                 help="sub-challenge (needed when the folder holds several)")
    sp["brats2024"].add_argument("--subset", choices=("GLI", "MET", "SSA", "PED", "MEN"), type=str.upper,
                                 help="sub-challenge (needed when the folder holds several)")
    sp["brats2024"].add_argument("--resection-cavity", choices=("keep", "background", "ignore"), default="keep",
                                 help="GLI label 4: keep as its own class and region (default), write as "
                                      "background, or as nnU-Net's ignore label")
    sp["isles2022"].add_argument("--channels", default="dwi,adc,flair",
                                 help="comma-separated channels, DWI first (default dwi,adc,flair)")
    sp["isles2022"].add_argument("--no-register", dest="register", action="store_false",
                                 help="resample the FLAIR into DWI space by scanner coordinates only "
                                      "(default: rigid registration onto the DWI, Mattes MI)")
    sp["isles2022"].add_argument("--min-coverage", type=float, default=None, metavar="FRACTION",
                                 help="sanity check: minimum share of the DWI foreground inside the "
                                      "registered FLAIR's foreground (default 0.8)")
    sp["upenn-gbm"].add_argument("--automated-segm", action="store_true",
                                 help="use automated_segm/ where no manual segmentation exists")
    sp["mrbrains13"].add_argument("--label-set", choices=("full", "tissue"), default="full",
                                  help="full: labels 0-8 as released; tissue: 1 CSF, 2 GM, 3 WM, "
                                       "cerebellum/brainstem -> ignore")
    sp["vsseg"].add_argument("--sequence", choices=("t1c", "t2"), default="t1c",
                             help="t1c: ceT1 with its mask (default, id 531); t2: T2 with its own mask, a "
                                  "T2-only dataset (id 537)")
    sp["vsseg"].add_argument("--with-t2", action="store_true",
                             help="add the T2 registered to ceT1 by the release's transforms (vs_gk_t2_refT1 "
                                  "or BIDS derivatives/T2w_registered_to_T1w) as channel 1")
    c = sp["csv-labels"]
    c.add_argument("--csv", required=True, help="label table (CSV or TSV with a header row)")
    c.add_argument("--id-column", required=True, help="column with the subject / image id")
    c.add_argument("--label-column", required=True, help="column with the class")
    c.add_argument("--pattern", action="append", default=None,
                   help="image path relative to RELEASE_ROOT with {id} and glob wildcards, one per "
                        "channel (repeatable; default '{id}.nii.gz')")
    c.add_argument("--modality", action="append", default=None,
                   help="channel name per --pattern (repeatable; default T1)")
    c.add_argument("--class-map", default=None,
                   help="keep and number these classes, e.g. 'CN=0,MCI=1' (default: all classes, sorted, 0..K-1)")
    c.add_argument("--mask", choices=("otsu", "nonzero", "none"), default="otsu",
                   help="placeholder foreground label written to labelsTr (default otsu)")
    c.add_argument("--visit", default=None, metavar="first|last|VALUE",
                   help="one visit per id when the table has several rows (or the pattern several images) "
                        "per id: the first, the last (by --visit-column, else table order; images by path), "
                        "or the row whose --visit-column equals VALUE (e.g. bl)")
    c.add_argument("--visit-column", default=None, metavar="COLUMN",
                   help="column holding the visit (VISCODE, EXAMDATE, ...); its value replaces {visit} in --pattern")
    sp["corpus-ixi"].add_argument("--resample-to-t1", action="store_true",
                                  help="resample T2, PD and MRA onto each subject's T1 grid")
    sp["corpus-ucsf-pdgm"].add_argument("--bias-corrected", action="store_true",
                                        help="use the *_bias.nii.gz versions where present")
    f = sp["corpus-folder"]
    f.add_argument("--source", default=None, help="source name in the manifest (default: folder name)")
    f.add_argument("--resample-to", default=None, metavar="MODALITY",
                   help="resample every case's other images onto this modality's grid")
    return p


def _class_map(text: Optional[str]) -> Optional[Dict[str, int]]:
    if text is None:
        return None
    out: Dict[str, int] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        if "=" not in item:
            die(f"--class-map takes NAME=INT pairs separated by commas, got {item!r}.")
        k, v = item.rsplit("=", 1)
        try:
            out[k.strip()] = int(v)
        except ValueError:
            die(f"--class-map: {v!r} is not an integer (in {item!r}).")
    if not out:
        die("--class-map is empty.")
    return out


def run(a: argparse.Namespace):
    """Call the converter for parsed arguments; returns its ConversionSummary."""
    from nnunet_mmpretrain.conversion import converter
    m = converter(a.kind)
    common = dict(link=a.link, dry_run=a.dry_run, overwrite=a.overwrite, num_processes=a.num_processes,
                  progress=not a.quiet)
    if a.dataset_id is not None:
        common["dataset_id"] = a.dataset_id
    if a.name is not None:
        common["name"] = a.name
    if a.kind.startswith("corpus-"):
        common["case_prefix"] = a.case_prefix
        common["atlas_registered"] = {"auto": "auto", "yes": True, "no": False}[a.atlas_registered]
    extra = {}
    if a.kind == "brats2023":
        extra["subset"] = a.subset
    elif a.kind == "brats2024":
        extra.update(subset=a.subset, resection_cavity=a.resection_cavity)
    elif a.kind == "isles2022":
        extra["channels"] = [c.strip() for c in a.channels.split(",") if c.strip()]
        extra.update(register=a.register, min_coverage=a.min_coverage)
    elif a.kind == "upenn-gbm":
        extra["use_automated"] = a.automated_segm
    elif a.kind == "mrbrains13":
        extra["label_set"] = a.label_set
    elif a.kind == "vsseg":
        extra.update(with_t2=a.with_t2, sequence=a.sequence)
    elif a.kind == "corpus-ixi":
        extra["resample_to_t1"] = a.resample_to_t1
    elif a.kind == "corpus-ucsf-pdgm":
        extra["bias_corrected"] = a.bias_corrected
    elif a.kind == "corpus-folder":
        extra.update(source=a.source, resample_to=a.resample_to)
    if a.kind == "csv-labels":
        return m.convert(a.release_root, a.csv, a.id_column, a.label_column,
                         patterns=a.pattern or ["{id}.nii.gz"], modalities=a.modality,
                         class_map=_class_map(a.class_map), mask=a.mask, visit=a.visit,
                         visit_column=a.visit_column, out_dir=a.out, **common)
    return m.convert(a.release_root, out_dir=a.out, **common, **extra)


@contextlib.contextmanager
def _report_to_stdout():
    """The converters log their summaries (logger ``nnunet_mmpretrain.conversion``): show them."""
    logger = logging.getLogger("nnunet_mmpretrain.conversion")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    old_level, old_propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (a cluster job killed, ``kill PID``) ends the conversion like Ctrl-C: the
    half-built ``--overwrite`` folder is removed and the previous dataset stays."""
    import signal
    import threading
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def main(argv: Optional[List[str]] = None) -> int:
    with _report_to_stdout(), _sigterm_as_interrupt():
        return _main(argv)


def _main(argv: Optional[List[str]] = None) -> int:
    a = build_parser().parse_args(argv)
    if a.num_processes < 1:
        die(f"-np must be at least 1, got {a.num_processes}.")
    from nnunet_mmpretrain import modalities as mod
    from nnunet_mmpretrain.conversion import ConversionError
    from nnunet_mmpretrain.conversion.staging import ConversionInterrupted
    from nnunet_mmpretrain.io_utils import os_error_line
    t0 = time.time()
    try:
        summary = run(a)
    except ConversionInterrupted as e:
        die(str(e), code=130)
    except KeyboardInterrupt:
        die("interrupted before anything was written.", code=130)
    except ConversionError as e:
        die(str(e))
    except mod.UnknownModalityError as e:
        die(str(e))
    except OSError as e:  # e.g. no permission to write the output folder
        die(os_error_line(e))
    if not a.dry_run and summary.finished == 0 and summary.problems:
        case, reason = sorted(summary.problems.items())[0]
        more = f" (and {len(summary.problems) - 1} more, listed above)" if len(summary.problems) > 1 else ""
        die(f"no case could be converted: {case}: {reason}{more}")
    print(f"done in {time.time() - t0:.1f} s")
    if getattr(a, "verify", False) and not a.dry_run:
        if not summary.finished or not os.path.isfile(os.path.join(summary.output, "dataset.json")):
            die("nothing to verify: no case was converted.")
        from nnunet_mmpretrain.conversion.common import verify_nnunet_dataset
        from nnunet_mmpretrain.conversion.imageio import damaged_files
        bad = damaged_files(summary.output)
        if bad:
            die(f"{bad[0][0]} {bad[0][1]}" + (f" ({len(bad) - 1} more damaged file(s))" if len(bad) > 1 else ""))
        try:
            verify_nnunet_dataset(summary.output, num_processes=a.num_processes)
        except (AssertionError, RuntimeError, FileNotFoundError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            die(f"nnU-Net's integrity check failed for {summary.output}: {first}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
