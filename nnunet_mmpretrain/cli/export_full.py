"""``nnUNetv2_mmpretrain_export_full BUNDLE -d DATASET -p PLANS -c CONFIG -o FILE``: a complete
nnU-Net checkpoint (pretrained encoder, adapted stem, fresh decoder) for stock
``nnUNetv2_train DATASET CONFIG FOLD -p PLANS -pretrained_weights FILE``."""
from __future__ import annotations

import argparse
import os
import sys

from nnunet_mmpretrain.cli._common import check_n_proc_da, die, is_write_failure, output_file, save_failed_line


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="nnUNetv2_mmpretrain_export_full", description=__doc__)
    p.add_argument("bundle", help="bundle folder or encoder_bundle.pt (nnUNetv2_mmpretrain_export)")
    p.add_argument("-d", required=True, help="downstream dataset id or name")
    p.add_argument("-p", default="mmPretrainPlans", help="downstream plans identifier (default mmPretrainPlans)")
    p.add_argument("-c", default="3d_fullres", help="configuration (default 3d_fullres)")
    p.add_argument("--stem", default="modality", choices=["modality", "repeat", "reinit"])
    p.add_argument("-o", "--output", required=True, help="checkpoint file to write")
    a = p.parse_args(argv)
    check_n_proc_da()  # before nnU-Net is imported (it reads the variables on import)
    if os.path.isdir(a.output):
        die(f"-o {a.output} is an existing folder: name the checkpoint file to write "
            f"(e.g. {os.path.join(a.output, 'pretrained_full.pth')}).")
    output_file(a.output, "-o", inputs=[a.bundle])   # a read-only or full disk: said before any work
    # imported here, not at the top: it loads torch / nnU-Net, which --help and argument errors do not need
    from nnunet_mmpretrain.transfer.full_checkpoint import build_full_checkpoint, save_full_checkpoint
    try:
        ck, report = build_full_checkpoint(a.bundle, a.d, a.p, a.c, a.stem)
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as e:
        die(str(e).strip("'\""))
    try:
        save_full_checkpoint(ck, a.output)
    except OSError as e:
        die(f"cannot write -o {a.output}: {e.strerror or e}; choose a writable output path.")
    except RuntimeError as e:
        if not is_write_failure(e):
            raise
        die(save_failed_line(a.output, e))
    print(report.summary())
    print(f"checkpoint: {a.output}\nuse: nnUNetv2_train {a.d} {a.c} FOLD -p {a.p} -pretrained_weights {a.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
