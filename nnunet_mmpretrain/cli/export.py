"""``nnUNetv2_mmpretrain_export CHECKPOINT_OR_BUNDLE -o OUT [--format bundle|nnssl]``: write the
encoder of a pretraining checkpoint (or of an existing bundle folder) as

* ``bundle`` (default): our bundle folder (encoder, one stem per modality, templates as NIfTI,
  vocabulary, plans, ``bundle.json`` and ``MODEL_CARD.md``), loadable with
  ``torch.load(weights_only=True)``;
* ``nnssl``: one ``.pth`` file in nnssl's checkpoint format, for nnU-Net's own pretrained
  fine-tuning path (``nnUNetv2_train_pretrained``); the per-modality stems collapse to their mean.

``nnUNetv2_mmpretrain_export --verify BUNDLE`` checks a bundle folder (SHA256 of its files,
metadata against the weights): exit 0 when sound, 2 with one line naming the problem.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from nnunet_mmpretrain.cli._common import check_n_proc_da, die, is_write_failure, save_failed_line
from nnunet_mmpretrain.io_utils import atomic_path

log = logging.getLogger(__name__)


def _verify(folder: str) -> int:
    # imported here, not at the top: it loads torch / nnU-Net, which --help and argument errors do not need
    from nnunet_mmpretrain.transfer.bundle import verify_bundle
    problems = verify_bundle(folder)
    if problems:
        extra = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        die(problems[0] + extra)
    print(f"bundle {folder}: OK (hashes and metadata agree)")
    return 0


def _write_nnssl(b: dict, out: str) -> str:
    import torch
    # imported here, not at the top: it loads torch / nnU-Net, which --help and argument errors do not need
    from nnunet_mmpretrain.transfer.nnssl import bundle_to_nnssl
    if os.path.isdir(out):
        die(f"{out} is a folder: --format nnssl writes one file, e.g. -o {os.path.join(out, 'nnssl_checkpoint.pth')}")
    ck = bundle_to_nnssl(b)
    with atomic_path(out) as tmp:          # the file gets the umask's mode there
        torch.save(ck, tmp)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="nnUNetv2_mmpretrain_export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", nargs="?", help="checkpoint_final.pth (or _best/_latest) of nnUNetTrainerMMPretrain, "
                                             "a bundle folder, or an nnssl checkpoint")
    p.add_argument("-o", "--output", help="bundle folder (--format bundle) or .pth file (--format nnssl) to write")
    p.add_argument("--format", choices=["bundle", "nnssl"], default="bundle", help="output format (default bundle)")
    p.add_argument("--license", default=None, help="licence of the weights, recorded in bundle.json and the card "
                                                  "(e.g. CC-BY-4.0; mind the corpus' data licences)")
    p.add_argument("--verify", metavar="BUNDLE", default=None, help="check a bundle folder and exit")
    a = p.parse_args(argv)
    check_n_proc_da()  # before nnU-Net is imported (it reads the variables on import)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if a.verify is not None:
        return _verify(a.verify)
    if not a.source or not a.output:
        die("give CHECKPOINT_OR_BUNDLE and -o OUTPUT (or --verify BUNDLE).")
    # imported here, not at the top: it loads torch / nnU-Net, which --help and argument errors do not need
    from nnunet_mmpretrain.transfer.bundle import BundleError, bundle_from_any, save_bundle
    from nnunet_mmpretrain.transfer.model_card import current_command
    from nnunet_mmpretrain.transfer.nnssl import NnsslError
    from nnunet_mmpretrain.training.pretrain_variants import settings_of_trainer
    try:
        b = bundle_from_any(a.source, settings_of=settings_of_trainer)
        if a.format == "nnssl":
            path = _write_nnssl(b, a.output)
            print(f"nnssl checkpoint: {path}")
            print(f"  encoder tensors: {len(b['encoder'])}, stem: mean of {', '.join(b['modalities_trained'])}; "
                  f"fine-tune with nnU-Net master: nnUNetv2_preprocess_like_nnssl -pc {os.path.abspath(path)} (an "
                  f"absolute path: nnU-Net stores it verbatim), then nnUNetv2_train_pretrained (docs/WEIGHTS.md)")
            return 0
        path = save_bundle(b, a.output, license=a.license,
                           command=current_command(sys.argv[1:] if argv is None else list(argv)))
    except (BundleError, NnsslError) as e:
        die(str(e))
    except OSError as e:
        die(f"cannot write {a.output}: {e.strerror or e}; choose a writable output path.")
    except RuntimeError as e:   # torch.save reports a refused write (full disk) as RuntimeError
        if not is_write_failure(e):
            raise
        die(save_failed_line(a.output, e))
    print(f"bundle: {path}")
    print(f"  encoder tensors: {len(b['encoder'])}, stems: {', '.join(b['modalities_trained'])} (trained), "
          f"templates: {', '.join(b['templates']) or 'none'}, epoch {b['epoch']}; model card: "
          f"{os.path.join(os.path.dirname(path), 'MODEL_CARD.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
