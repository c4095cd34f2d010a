"""``nnUNetv2_mmpretrain_convert``: public dataset releases -> nnU-Net raw datasets / corpora.

    nnUNetv2_mmpretrain_convert KIND RELEASE_ROOT [-d ID] [-o OUT_RAW_DIR] [--name NAME]
                                [--link | --copy] [--dry-run] [--overwrite] [-np N] [--verify] ...

KIND is one of the sub-commands below (``nnUNetv2_mmpretrain_convert KIND -h`` lists its own
options). Output goes to ``OUT_RAW_DIR/DatasetID_NAME`` (default ``$nnUNet_raw``). Re-running
resumes: finished cases are skipped. See docs/CONVERSION.md.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from typing import List, Optional

from nnunet_mmpretrain import modalities as mod
from nnunet_mmpretrain.cli._common import check_n_proc_da, die
from nnunet_mmpretrain.conversion import ConversionError
from nnunet_mmpretrain.conversion.common import verify_nnunet_dataset
from nnunet_mmpretrain.conversion.options import ConvertOptions
from nnunet_mmpretrain.conversion.registry import release as registry_entry, releases
from nnunet_mmpretrain.conversion.release import CORPUS
from nnunet_mmpretrain.conversion.staging import ConversionInterrupted
from nnunet_mmpretrain.io_utils import damaged_files, os_error_line

PROG = "nnUNetv2_mmpretrain_convert"


def _common(p: argparse.ArgumentParser, release) -> None:
    """The arguments every sub-command has (release folder, output, run options, verification)."""
    p.add_argument("release_root", metavar="RELEASE_ROOT", help=release.root_help)
    p.add_argument("-d", "--dataset-id", type=int, default=None,
                   help=f"nnU-Net dataset id (default {release.default_id_help or release.default_id})")
    p.add_argument("-o", "--out", default=None, metavar="OUT_RAW_DIR",
                   help="nnU-Net raw folder to write into (default: $nnUNet_raw)")
    p.add_argument("--name", default=None, help=f"dataset name (default {release.default_name})")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--link", dest="link", action="store_true", default=True,
                   help="hard-link unchanged images (default; copies where links are impossible)")
    g.add_argument("--copy", dest="link", action="store_false", help="copy images instead of hard-linking")
    p.add_argument("--dry-run", action="store_true", help="report what would be done, write nothing")
    p.add_argument("--overwrite", action="store_true",
                   help="convert every case again (an existing dataset folder is replaced, in a "
                        "corpus only the cases of the converted sources; the new one is built beside "
                        "it and swapped in when complete, so an interrupted run keeps the old one)")
    p.add_argument("-np", "--num-processes", type=int, default=1, help="parallel worker processes (default 1)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    if release.output != CORPUS:
        p.add_argument("--verify", action="store_true",
                       help="run nnU-Net's verify_dataset_integrity on the result")


def _settings(p: argparse.ArgumentParser, release) -> None:
    """One option per setting of the release entry (and the corpus settings of a corpus)."""
    for s in release.all_settings:
        if not s.flags:
            continue
        kw = {"dest": s.name, "default": s.default, "help": s.help, **s.cli}
        if kw.get("action") not in ("store_true", "store_false") and "choices" not in kw:
            kw.setdefault("metavar", s.flags[-1].lstrip("-").upper().replace("-", "_"))
        p.add_argument(*s.flags, **kw)


def build_parser() -> argparse.ArgumentParser:
    """The parser, one sub-command per entry of the release registry."""
    p = argparse.ArgumentParser(
        prog=PROG, description="Convert public dataset releases into nnU-Net raw datasets "
                               "(segmentation, classification) or pretraining corpora. "
                               "Resumable: finished cases are skipped on a re-run.",
        epilog="See docs/CONVERSION.md for the layouts, default dataset ids and label conventions.")
    sub = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    for kind, release in releases().items():
        sp = sub.add_parser(kind, help=release.help, description=release.help)
        _common(sp, release)
        _settings(sp, release)
    return p


def run(a: argparse.Namespace):
    """Run the release entry of ``a.kind`` for parsed arguments; returns its ConversionSummary."""
    r = registry_entry(a.kind)
    options = ConvertOptions(link=a.link, dry_run=a.dry_run, overwrite=a.overwrite,
                             num_processes=a.num_processes, progress=not a.quiet)
    settings = {s.name: (s.parse(getattr(a, s.name)) if s.parse else getattr(a, s.name))
                for s in r.all_settings if s.flags}
    return r.convert(a.release_root, a.out, a.dataset_id, a.name, options=options, **settings)


@contextlib.contextmanager
def _report_to_stdout():
    """The converters log their summaries (logger ``nnunet_mmpretrain.conversion``): show them."""
    logger = logging.getLogger("nnunet_mmpretrain.conversion")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    old_level, old_propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (a cluster job killed, ``kill PID``) ends the conversion like Ctrl-C: the
    half-built ``--overwrite`` folder is removed and the previous dataset stays."""
    import signal
    import threading
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def main(argv: Optional[List[str]] = None) -> int:
    with _report_to_stdout(), _sigterm_as_interrupt():
        return _main(argv)


def _main(argv: Optional[List[str]] = None) -> int:
    a = build_parser().parse_args(argv)
    if a.num_processes < 1:
        die(f"-np must be at least 1, got {a.num_processes}.")
    if getattr(a, "verify", False):
        check_n_proc_da()  # --verify imports nnU-Net, which reads its worker variables on import
    t0 = time.time()
    try:
        summary = run(a)
    except ConversionInterrupted as e:
        die(str(e), code=130)
    except KeyboardInterrupt:
        die("interrupted before anything was written.", code=130)
    except ConversionError as e:
        die(str(e))
    except mod.UnknownModalityError as e:
        die(str(e))
    except OSError as e:  # e.g. no permission to write the output folder
        die(os_error_line(e))
    if not a.dry_run and summary.finished == 0 and summary.problems:
        case, reason = sorted(summary.problems.items())[0]
        more = f" (and {len(summary.problems) - 1} more, listed above)" if len(summary.problems) > 1 else ""
        die(f"no case could be converted: {case}: {reason}{more}")
    print(f"done in {time.time() - t0:.1f} s")
    if getattr(a, "verify", False) and not a.dry_run:
        if not summary.finished or not os.path.isfile(os.path.join(summary.output, "dataset.json")):
            die("nothing to verify: no case was converted.")
        bad = damaged_files(summary.output)
        if bad:
            die(f"{bad[0][0]} {bad[0][1]}" + (f" ({len(bad) - 1} more damaged file(s))" if len(bad) > 1 else ""))
        try:
            verify_nnunet_dataset(summary.output, num_processes=a.num_processes)
        except (AssertionError, RuntimeError, FileNotFoundError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            die(f"nnU-Net's integrity check failed for {summary.output}: {first}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
