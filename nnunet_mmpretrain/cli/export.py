"""``nnUNetv2_mmpretrain_export CHECKPOINT -o FOLDER``: write the encoder bundle of a pretraining
checkpoint (encoder, one stem per modality, templates as NIfTI, vocabulary, plans, versions),
loadable with ``torch.load(weights_only=True)``."""
from __future__ import annotations

import argparse
import sys

from nnunet_mmpretrain.cli._common import die


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="nnUNetv2_mmpretrain_export", description=__doc__)
    p.add_argument("checkpoint", help="checkpoint_final.pth (or _best/_latest) of nnUNetTrainerMMPretrain")
    p.add_argument("-o", "--output", required=True, help="bundle folder to write")
    a = p.parse_args(argv)
    from nnunet_mmpretrain.transfer.bundle import BundleError, bundle_from_checkpoint, save_bundle
    try:
        b = bundle_from_checkpoint(a.checkpoint)
        path = save_bundle(b, a.output)
    except BundleError as e:
        die(str(e))
    print(f"bundle: {path}")
    print(f"  encoder tensors: {len(b['encoder'])}, stems: {', '.join(b['modalities_trained'])} (trained), "
          f"templates: {', '.join(b['templates']) or 'none'}, epoch {b['epoch']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
