"""``nnUNetv2_mmpretrain_tiny_plans``: plan and preprocess a labelled dataset with nnU-Net on a
small machine and add a CPU-sized configuration beside ``3d_fullres``.

Same result as ``nnUNetv2_plan_and_preprocess -d ID -c 3d_fullres`` (nnU-Net's fingerprint,
planner and preprocessor), but the fingerprint samples fewer foreground voxels and worker pools
stay small; then ``-c NAME`` is added with ``inherits_from: 3d_fullres`` (same preprocessed data)
and the given patch, features and batch size.
"""
from __future__ import annotations

import argparse
import os
import sys

from typing import Optional, Sequence

from nnunet_mmpretrain.cli._common import check_n_proc_da, die, disk_errors, require_env, writable_folder
from nnunet_mmpretrain.planning.nnunet_plan import plan_and_preprocess
from nnunet_mmpretrain.planning.tiny import check_tiny


def ready_to_plan(num_processes: int, tiny: Optional[Sequence] = None) -> str:
    """What planning needs before any work is spent, each refused with one line (exit 2):
    ``nnUNet_raw`` / ``nnUNet_preprocessed`` set, ``-np`` at least 1, the CPU-sized configuration
    ``tiny`` = (patch, features, batch) buildable, a writable preprocessed folder (returned)."""
    require_env("nnUNet_raw", "nnUNet_preprocessed")
    if num_processes < 1:
        die(f"-np must be at least 1, got {num_processes}.")
    if tiny is not None:
        try:
            check_tiny(*tiny)
        except ValueError as e:
            die(str(e))
    out = os.environ["nnUNet_preprocessed"]
    writable_folder(out)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="nnUNetv2_mmpretrain_tiny_plans", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", type=int, required=True, help="dataset id")
    p.add_argument("-c", default="3d_tiny", help="name of the added configuration (default 3d_tiny)")
    p.add_argument("-pl", default="ExperimentPlanner", help="nnU-Net planner class (default ExperimentPlanner)")
    p.add_argument("--patch", type=int, nargs=3, default=(32, 32, 32))
    p.add_argument("--features", type=int, nargs="+", default=(8, 16, 32))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("-np", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--no-verify", action="store_true", help="skip nnU-Net's dataset integrity check")
    a = p.parse_args(argv)
    check_n_proc_da()  # before nnU-Net is imported (it reads the variable on import)
    out = ready_to_plan(a.np, (a.patch, a.features, a.batch))
    try:
        with disk_errors(out):
            plans_file = plan_and_preprocess(a.d, planner=a.pl, num_processes=a.np, verify=not a.no_verify,
                                             tiny=dict(name=a.c, patch_size=a.patch, features=a.features,
                                                       batch_size=a.batch))
    except (ValueError, KeyError) as e:
        die(str(e).strip("'\""))
    except (AssertionError, RuntimeError) as e:  # nnU-Net's integrity check, an unknown dataset id
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        die(f"dataset {a.d}: {first} (nnU-Net's dataset check; fix the dataset in $nnUNet_raw or pass -d)")
    print(f"plans: {plans_file} (configuration {a.c!r} added)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
