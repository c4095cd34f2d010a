"""``nnUNetv2_mmpretrain_plan_and_preprocess``: validate, fingerprint, plan and preprocess an
unlabelled pretraining corpus (``$nnUNet_raw/DatasetID_Name/manifest.json``) in nnU-Net's space.

Writes ``$nnUNet_preprocessed/DatasetID_Name/mmPretrainPlans.json`` and the preprocessed cases;
then ``nnUNetv2_train ID 3d_fullres all -tr nnUNetTrainerMMPretrain -p mmPretrainPlans`` pretrains.
"""
from __future__ import annotations

import argparse
import sys

from nnunet_mmpretrain.cli._common import check_n_proc_da, die, disk_errors
from nnunet_mmpretrain.cli.tiny_plans import ready_to_plan
from nnunet_mmpretrain.corpus.manifest import ManifestError
from nnunet_mmpretrain.corpus.validate import CorpusValidationError
from nnunet_mmpretrain.modalities import UnknownModalityError
from nnunet_mmpretrain.planning.tiny import add_tiny_configuration

TINY_DEFAULTS = {"patch": (32, 32, 32), "features": (8, 16, 32), "batch": 2}


def _validation_line(e) -> str:
    """One line for a corpus that failed validation: the first bad file, how many more, the fix."""
    r = e.report
    if r is None or not r.bad:
        return str(e).strip().splitlines()[0]
    cid, probs = next(iter(r.bad.items()))
    path, reason = probs[0]
    n = sum(len(v) for v in r.bad.values())
    more = f" ({n - 1} more problem(s) in {len(r.bad)} case(s), listed above)" if n > 1 else ""
    fix = ("fix or remove the files" if not r.ok else
           "fix or remove the files, or re-run with --skip-bad to leave the bad cases out")
    return f"corpus '{r.corpus_name}': {path}: {reason}{more}; {fix}"


def main(argv=None) -> int:
    check_n_proc_da()  # before nnU-Net is imported (it reads the variable on import)
    # imported here, not at the top: it loads torch / nnU-Net, which --help and argument errors do not need
    from nnunet_mmpretrain.planning.pretrain_planner import PRESETS
    p = argparse.ArgumentParser(prog="nnUNetv2_mmpretrain_plan_and_preprocess", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", type=int, required=True, help="dataset id of the corpus")
    p.add_argument("-pl", default="ResEncM", choices=sorted(PRESETS),
                   help="nnU-Net ResEnc preset the topology follows (default ResEncM)")
    p.add_argument("--like", metavar="PLANS_JSON", help="copy patch, spacing and architecture from this "
                   "downstream plans file instead (the encoder then fits it exactly)")
    p.add_argument("--like-config", default="3d_fullres", help="configuration of --like (default 3d_fullres)")
    p.add_argument("--resample", action="store_true",
                   help="put the modalities of a session on the grid of its first modality (IXI needs it)")
    p.add_argument("--skip-bad", action="store_true", help="leave out cases that fail validation (default: stop)")
    p.add_argument("--allow-duplicates", action="store_true",
                   help="keep cases whose scan (voxels) another case already has (default: a validation problem)")
    p.add_argument("--plan-only", action="store_true", help="validate, fingerprint and plan; no preprocessing")
    p.add_argument("--add-config", metavar="NAME", default=None,
                   help="also add a small configuration NAME (inherits 3d_fullres data) for CPUs: see --patch/--features")
    p.add_argument("--patch", type=int, nargs=3, default=None, help="patch of --add-config (default 32 32 32)")
    p.add_argument("--features", type=int, nargs="+", default=None,
                   help="features per stage of --add-config (default 8 16 32)")
    p.add_argument("--batch", type=int, default=None, help="batch size of --add-config (default 2)")
    p.add_argument("-gpu_memory_target", type=float, default=None, help="VRAM target of the planner in GB")
    p.add_argument("-np", type=int, default=2, help="worker processes (default 2)")
    a = p.parse_args(argv)
    given = [f"--{k}" for k in TINY_DEFAULTS if getattr(a, k) is not None]
    if given and not a.add_config:
        die(f"{'/'.join(given)} only shape the configuration of --add-config NAME: add e.g. "
            f"--add-config 3d_tiny, or leave {'/'.join(given)} out.")
    for k, v in TINY_DEFAULTS.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    out = ready_to_plan(a.np, (a.patch, a.features, a.batch) if a.add_config else None)
    from nnunet_mmpretrain.corpus.preprocess import plan_and_preprocess_corpus
    from nnunet_mmpretrain.planning.pretrain_planner import load_like
    try:
        with disk_errors(out):
            like = load_like(a.like, a.like_config) if a.like else None
            r = plan_and_preprocess_corpus(a.d, a.pl, like, a.resample, a.skip_bad, a.np, a.plan_only,
                                           a.gpu_memory_target, allow_duplicates=a.allow_duplicates)
            if a.add_config:
                add_tiny_configuration(r.plans_file, a.add_config, patch_size=a.patch, features=a.features,
                                       batch_size=a.batch)
    except CorpusValidationError as e:  # every bad file on stdout, one line on stderr
        print(e.report.summary() if e.report is not None else str(e))
        die(_validation_line(e))
    except (ManifestError, UnknownModalityError, ValueError, FileNotFoundError, KeyError) as e:
        die(str(e).strip("'\""))
    except RuntimeError as e:
        if "Could not find a dataset with the ID" in str(e) or "dataset" in str(e).lower():
            die(f"{str(e).strip().splitlines()[0]} (is the corpus in $nnUNet_raw as DatasetXXX_Name with a "
                f"manifest.json?)")
        raise
    if a.add_config:
        print(f"added configuration {a.add_config!r} (patch {list(a.patch)}, features {list(a.features)}, batch {a.batch})")
    print(f"plans: {r.plans_file}")
    if not a.plan_only:
        n = r.done + r.skipped
        rate = r.done / r.seconds_preprocessing if r.done and r.seconds_preprocessing > 0 else float("nan")
        print(f"preprocessed {r.done} cases ({r.skipped} already done) into {r.data_folder} "
              f"in {r.seconds_preprocessing:.1f} s ({rate:.2f} cases/s); {n} cases in total")
    if r.left_out:
        print(f"left out {len(r.left_out)} bad case(s): {', '.join(sorted(r.left_out))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
