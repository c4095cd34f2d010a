"""``nnUNetv2_mmpretrain_make_phantoms``: write the built-in synthetic data.

Writes, under the nnU-Net raw folder (``--raw-dir``, default ``$nnUNet_raw``):
a labelled BraTS-like segmentation dataset, an unlabelled multi-source pretraining corpus and a
graded classification dataset. Everything follows from ``--seed``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from nnunet_mmpretrain.cli._common import die, disk_errors, writable_folder


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nnUNetv2_mmpretrain_make_phantoms",
        description="Make BraTS-like multi-modal brain MRI phantoms (ICBM 2009a anatomy shipped "
                    "with nilearn): a labelled nnU-Net dataset, an unlabelled multi-source "
                    "pretraining corpus and a graded classification dataset.")
    p.add_argument("--raw-dir", default=os.environ.get("nnUNet_raw"),
                   help="nnU-Net raw folder to write into (default: $nnUNet_raw)")
    p.add_argument("--what", default="seg,corpus,cls",
                   help="comma-separated subset of seg,corpus,cls (default: these three) and of the multi-site "
                        "phantoms sites (labelled, --seg-id), sites-pool (labelled, --pool-id), sites-corpus "
                        "(--corpus-id); pool: a labelled pool of BraTS-like phantoms with other subjects (--pool-id, "
                        "--pool-train), e.g. to train a supervised encoder")
    p.add_argument("--seg-id", type=int, default=990, help="dataset id of the segmentation dataset")
    p.add_argument("--cls-id", type=int, default=991, help="dataset id of the classification dataset")
    p.add_argument("--corpus-id", type=int, default=992, help="dataset id of the pretraining corpus")
    p.add_argument("--num-train", type=int, default=10, help="labelled training cases")
    p.add_argument("--num-test", type=int, default=2, help="labelled test cases (imagesTs/labelsTs)")
    p.add_argument("--corpus-cases", type=int, default=6, help="corpus cases per source")
    p.add_argument("--cls-cases", type=int, default=12, help="classification cases (half high grade)")
    p.add_argument("--pool-id", type=int, default=994, help="dataset id of the labelled pool (pool, sites-pool)")
    p.add_argument("--pool-train", type=int, default=10, help="cases of the BraTS-like labelled pool (pool)")
    p.add_argument("--site-cases", default="A=10,B=10,C=5,D=5",
                   help="multi-site labelled cases per site, e.g. A=10,B=10,C=5,D=5 (sites A-D have all 4 modalities)")
    p.add_argument("--pool-cases", default="A=20,B=20", help="multi-site pool cases per site (disjoint subjects)")
    p.add_argument("--site-corpus", default="A=34,B=34,C=34,D=34,E=34,F=30",
                   help="multi-site corpus subjects per site (E: T1/T2/PD healthy, F: FLAIR only)")
    p.add_argument("--spacing", type=float, default=2.0, help="isotropic voxel size in mm (default 2; 1 for full resolution)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-np", "--num-processes", type=int, default=2)
    p.add_argument("--overwrite", action="store_true", help="replace existing non-empty dataset folders")
    return p


def validate_args(a) -> None:
    if not a.raw_dir:
        die("no output folder: set nnUNet_raw or pass --raw-dir FOLDER.")
    if os.path.exists(a.raw_dir) and not os.path.isdir(a.raw_dir):
        die(f"--raw-dir {a.raw_dir} is an existing file: name a folder (nnU-Net's raw folder).")
    what = {w.strip() for w in a.what.split(",") if w.strip()}
    bad = what - {"seg", "corpus", "cls", "pool", "sites", "sites-pool", "sites-corpus"}
    if bad or not what:
        die(f"--what takes a comma-separated subset of seg,corpus,cls,pool,sites,sites-pool,sites-corpus, got "
            f"{a.what!r}.")
    if {"seg", "sites"} <= what or {"corpus", "sites-corpus"} <= what or {"pool", "sites-pool"} <= what:
        die(f"--what {a.what}: the BraTS-like and the multi-site datasets would share dataset ids; make them in "
            f"two calls with other ids.")
    for name in ("site_cases", "pool_cases", "site_corpus"):
        setattr(a, name, _site_spec(getattr(a, name), "--" + name.replace("_", "-")))
    a.what = what
    if not a.spacing > 0:
        die(f"--spacing must be a positive number of mm, got {a.spacing}.")
    if a.spacing < 0.5 or a.spacing > 8:
        die(f"--spacing {a.spacing} mm is outside the supported 0.5-8 mm range.")
    for name in ("num_train", "corpus_cases", "cls_cases", "pool_train"):
        v = getattr(a, name)
        if v < 1:
            die(f"--{name.replace('_', '-')} must be at least 1, got {v}.")
    if a.num_test < 0:
        die(f"--num-test cannot be negative, got {a.num_test}.")
    if "cls" in what and a.cls_cases < 2:
        die("--cls-cases must be at least 2 (one high-grade and one low-grade case).")
    if a.num_processes < 1:
        die(f"-np must be at least 1, got {a.num_processes}.")
    id_of = {"seg": a.seg_id, "cls": a.cls_id, "corpus": a.corpus_id, "sites": a.seg_id, "sites-pool": a.pool_id,
             "pool": a.pool_id,
             "sites-corpus": a.corpus_id}
    ids = [id_of[w] for w in sorted(what)]
    if len(set(ids)) != len(ids):
        die(f"dataset ids must differ, got {ids}.")
    for i in ids:
        if not 1 <= i <= 999:
            die(f"dataset ids are 1..999 in nnU-Net, got {i}.")


def _site_spec(text: str, flag: str) -> dict:
    """``A=10,B=10`` -> {"A": 10, "B": 10}; one clear line for anything else."""
    from nnunet_mmpretrain.synthetic.sites import SITES
    out = {}
    for part in (x.strip() for x in text.split(",") if x.strip()):
        site, _, n = part.partition("=")
        if site not in SITES or not n.strip().isdigit():
            die(f"{flag} {text!r}: write SITE=COUNT pairs such as A=10,B=10 with sites {', '.join(sorted(SITES))} "
                f"and counts >= 0.")
        out[site] = int(n)
    return out


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    validate_args(a)
    writable_folder(a.raw_dir)
    # imported here, not at the top: it loads torch / nnU-Net, which --help and argument errors do not need
    from nnunet_mmpretrain.synthetic import datasets as ds

    t0 = time.time()
    try:
        with disk_errors(a.raw_dir):
            common = (a.spacing, a.seed, a.num_processes, a.overwrite)
            makers = {   # in the order they are written; each a dataset (id, ...) the generator makes
                "seg": lambda: ds.make_segmentation_dataset(a.raw_dir, a.seg_id, a.num_train, a.num_test, *common),
                "corpus": lambda: ds.make_corpus(a.raw_dir, a.corpus_id, a.corpus_cases, *common),
                "pool": lambda: ds.make_segmentation_dataset(a.raw_dir, a.pool_id, a.pool_train, 0, *common,
                                                             name="PhantomPool", kind=5, prefix="pool"),
                "sites": lambda: ds.make_site_dataset(a.raw_dir, a.seg_id, a.site_cases, *common),
                "sites-pool": lambda: ds.make_site_dataset(a.raw_dir, a.pool_id, a.pool_cases, *common,
                                                           name="PhantomSitesPool", kind=40, prefix="pool_"),
                "sites-corpus": lambda: ds.make_site_corpus(a.raw_dir, a.corpus_id, a.site_corpus, *common),
                "cls": lambda: ds.make_classification_dataset(a.raw_dir, a.cls_id, a.cls_cases, *common),
            }
            made = [make() for what, make in makers.items() if what in a.what]
    except (FileExistsError, ValueError) as e:
        die(str(e))
    for m in made:
        print(f"wrote {m}")
    print(f"done in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
