"""``nnUNetv2_mmpretrain_import_nnssl CKPT -o BUNDLE_DIR``: turn an nnssl checkpoint (the format of
nnssl and of nnU-Net's pretrained fine-tuning path, e.g. the OpenMind weights) into our encoder
bundle, usable by ``nnUNetTrainerMMFinetune`` and ``nnUNetv2_mmpretrain_transfer_plans --bundle``.

The checkpoint's one stem becomes every modality's stem (``stem_origin: shared`` in bundle.json).
Only the encoder and stem are kept: the command says how many tensors it dropped (e.g. an MAE
decoder), and the model card keeps the checkpoint's citations as they were.
A topology our plans cannot express (a transformer, several input channels, a 2D network) is
refused with the differing fields named.
"""
from __future__ import annotations

import argparse
import logging
import sys

from nnunet_mmpretrain.cli._common import die


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="nnUNetv2_mmpretrain_import_nnssl", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="nnssl checkpoint (.pth with network_weights and nnssl_adaptation_plan)")
    p.add_argument("-o", "--output", required=True, help="bundle folder to write")
    p.add_argument("--license", default=None, help="licence of the weights (OpenMind: CC-BY-4.0), recorded in "
                                                  "bundle.json and MODEL_CARD.md")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # imported here, not at the top: it loads torch / nnU-Net, which --help and argument errors do not need
    from nnunet_mmpretrain.transfer.bundle import BundleError, load_weights_only, save_bundle
    from nnunet_mmpretrain.transfer.model_card import current_command
    from nnunet_mmpretrain.transfer.nnssl import NnsslError, dropped_tensors, nnssl_to_bundle
    try:
        ck = load_weights_only(a.checkpoint, "nnssl checkpoint")
        b = nnssl_to_bundle(ck, a.checkpoint)
        path = save_bundle(b, a.output, license=a.license,
                           command=current_command(sys.argv[1:] if argv is None else list(argv),
                                                   prog="nnUNetv2_mmpretrain_import_nnssl"))
    except (BundleError, NnsslError) as e:
        die(str(e))
    except OSError as e:
        die(f"cannot write {a.output}: {e.strerror or e}; choose a writable output folder.")
    print(f"bundle: {path}")
    stems = ("shared: the checkpoint's one stem copied to every modality" if b["stem_origin"] == "shared" else
             "per modality (restored from an nnunet_mmpretrain export)")
    print(f"  encoder tensors: {len(b['encoder'])}, stems: {stems}, "
          f"architecture {b['network_class_name'].rsplit('.', 1)[-1]}")
    dropped = dropped_tensors(ck)
    print(f"  dropped {sum(dropped.values())} tensors outside the encoder and stem" +
          (" (" + ", ".join(f"{k}.*: {n}" for k, n in sorted(dropped.items())) + ")" if dropped else ""))
    print(f"  next: nnUNetv2_mmpretrain_transfer_plans -t DATASET_ID --bundle {a.output} -tp nnsslPlans --preprocess")
    return 0


if __name__ == "__main__":
    sys.exit(main())
