"""``nnUNetv2_mmpretrain_ext_trainer``: where nnU-Net finds this plugin's trainers.

Prints ``export nnUNet_extTrainer=...`` (keeping folders already listed), for
``eval "$(nnUNetv2_mmpretrain_ext_trainer)"``; ``--path`` prints the folder alone. Set it for
``nnUNetv2_train``, ``nnUNetv2_predict`` and DDP children alike.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys

from nnunet_mmpretrain.training.lookup import ext_trainer_folder, ext_trainer_value  # noqa: F401 (re-exported)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="nnUNetv2_mmpretrain_ext_trainer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--path", action="store_true", help="print the folder only")
    a = p.parse_args(argv)
    if a.path:
        print(ext_trainer_folder())
    else:
        print("export nnUNet_extTrainer=" + shlex.quote(ext_trainer_value(os.environ.get("nnUNet_extTrainer"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
