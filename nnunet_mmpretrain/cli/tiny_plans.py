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

from nnunet_mmpretrain.cli._common import die


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
    for var in ("nnUNet_raw", "nnUNet_preprocessed"):
        if not os.environ.get(var):
            die(f"{var} is not set: export it (see nnU-Net's documentation/setting_up_paths.md).")
    if min(a.patch) < 8 or a.batch < 1 or min(a.features) < 1:
        die("--patch needs >= 8 voxels per axis, --batch and --features >= 1.")
    from nnunet_mmpretrain.planning.nnunet_plan import plan_and_preprocess
    try:
        plans_file = plan_and_preprocess(a.d, planner=a.pl, num_processes=a.np, verify=not a.no_verify,
                                         tiny=dict(name=a.c, patch_size=a.patch, features=a.features,
                                                   batch_size=a.batch))
    except (ValueError, KeyError) as e:
        die(str(e))
    print(f"plans: {plans_file} (configuration {a.c!r} added)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
