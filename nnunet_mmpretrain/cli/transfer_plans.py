"""``nnUNetv2_mmpretrain_transfer_plans``: give a downstream dataset the pretraining topology.

Writes ``$nnUNet_preprocessed/<downstream>/<plans>.json`` with the pretraining configuration's
spacing, patch and architecture and the downstream dataset's own channels and normalisation;
``--preprocess`` then runs nnU-Net's preprocessing for it (same as
``nnUNetv2_preprocess -d ID -plans_name PLANS -c 3d_fullres``).

Without ``-s`` the pretraining plans are the bundle's own (``--bundle``, e.g. one made by
``nnUNetv2_mmpretrain_import_nnssl``; ``-c`` defaults to the bundle's configuration). The bundle
is recorded relative to ``$nnUNet_results`` when it lies there, otherwise copied beside the plans
(``mmpretrain_bundle_<plans>``), so the plans survive moving the nnU-Net folders. ``-t`` must
be a labelled dataset, not a pretraining corpus.
"""
from __future__ import annotations

import argparse
import os
import sys

from nnunet_mmpretrain.cli._common import die


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="nnUNetv2_mmpretrain_transfer_plans", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-s", type=int, default=None, help="pretraining corpus dataset id (optional with --bundle)")
    p.add_argument("-t", type=int, required=True, help="downstream dataset id")
    p.add_argument("-sp", default="mmPretrainPlans", help="pretraining plans identifier (default mmPretrainPlans)")
    p.add_argument("-tp", default=None, help="downstream plans identifier (default: same as -sp)")
    p.add_argument("-c", nargs="+", default=None, help="configurations to transfer (default 3d_fullres, or the "
                                                       "bundle's configuration without -s)")
    p.add_argument("--check-against", metavar="PLANS", default=None,
                   help="refuse unless this existing downstream plans identifier has the same topology")
    p.add_argument("--bundle", default=None, help="encoder bundle folder for nnUNetTrainerMMFinetune (stored in the plans)")
    p.add_argument("--stem", default=None, choices=["modality", "repeat", "reinit"],
                   help="stem strategy stored in the plans (default at training: modality)")
    p.add_argument("--preprocess", action="store_true", help="also preprocess the downstream dataset")
    p.add_argument("-np", type=int, default=2)
    a = p.parse_args(argv)
    for var in ("nnUNet_raw", "nnUNet_preprocessed"):
        if not os.environ.get(var):
            die(f"{var} is not set: export it (see nnU-Net's documentation/setting_up_paths.md).")
    if a.s is None and a.bundle is None:
        die("give the pretraining corpus with -s ID, or a bundle with --bundle FOLDER to take the plans from.")
    # imported here, not at the top: it loads torch / nnU-Net, which --help and argument errors do not need
    from nnunet_mmpretrain.transfer.plans import transfer_plans
    try:
        if a.bundle is not None:
            from nnunet_mmpretrain.transfer.bundle import load_bundle
            b = load_bundle(a.bundle)   # fail now, not at training time
            if a.c is None and a.s is None:
                a.c = [b["configuration"]]
        a.c = a.c or ["3d_fullres"]
        path = transfer_plans(a.s, a.t, a.sp, a.tp, a.c, a.np, a.check_against, a.bundle, a.stem)
    except (ValueError, KeyError, FileNotFoundError) as e:
        die(str(e).strip("'\""))
    except RuntimeError as e:
        die(str(e))
    print(f"plans: {path}")
    if a.preprocess:
        from nnunetv2.experiment_planning.plan_and_preprocess_api import preprocess_dataset
        ident = os.path.basename(path)[: -len(".json")]
        preprocess_dataset(a.t, ident, tuple(a.c), [a.np] * len(a.c), show_progress_bar=False)
        print(f"preprocessed dataset {a.t} with {ident}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
