"""``nnUNetv2_mmpretrain_benchmark SUITE``: run a benchmark suite and write its leaderboard.

SUITE is a name under the repository's ``plans/`` (``phantom-smoke``, ``phantom``, ``brainmvp``)
or a JSON path. Every cell runs the real commands (``nnUNetv2_train`` with the benchmark trainers,
nnU-Net's validation, ``nnUNetv2_predict`` + ``nnUNetv2_evaluate_folder`` for test sets); finished
cells are skipped, a crashed cell resumes from its checkpoint, nothing finished is overwritten.

    nnUNetv2_mmpretrain_benchmark phantom-smoke                    # everything, then the leaderboard
    nnUNetv2_mmpretrain_benchmark phantom --dry-run                # list the cells and commands
    nnUNetv2_mmpretrain_benchmark phantom --cell 'D990_n4_*_scratch'
    nnUNetv2_mmpretrain_benchmark phantom --leaderboard-only       # regenerate from the output folder

Exit codes: 0 done, 1 a cell failed (run again to resume it), 2 bad input (one line says what).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from nnunet_mmpretrain.benchmark.leaderboard import write_leaderboard
from nnunet_mmpretrain.benchmark.prepare import BenchmarkError, StepFailed
from nnunet_mmpretrain.benchmark.runner import Runner
from nnunet_mmpretrain.benchmark.suite import SuiteError, load_suite
from nnunet_mmpretrain.cli._common import die


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="nnUNetv2_mmpretrain_benchmark", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("suite", help="suite name under plans/ or a suite JSON file")
    p.add_argument("--out", default=None, help="output folder (default: benchmark_output/SUITE_NAME)")
    p.add_argument("--cell", nargs="+", default=None, metavar="NAME",
                   help="run only these cells (names or shell patterns, see --dry-run)")
    p.add_argument("--dry-run", action="store_true", help="list the cells and the commands; run and write nothing")
    p.add_argument("--leaderboard-only", action="store_true", help="only regenerate the leaderboard from --out")
    p.add_argument("--device", default=None, choices=["cpu", "cuda", "mps"], help="override the suite's device")
    p.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO, format="%(message)s", stream=sys.stdout)
    for noisy in ("matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        suite = load_suite(a.suite)
    except SuiteError as e:
        die(str(e))
    out = os.path.abspath(a.out or os.path.join("benchmark_output", suite.name))
    if a.leaderboard_only:
        if not os.path.isfile(os.path.join(out, "suite.json")):
            die(f"{out}: no suite.json, so no benchmark results here; pass the --out folder of a run")
        print(f"leaderboard: {write_leaderboard(out)}")
        return 0
    try:
        return Runner(suite, out, a.device, a.dry_run).run(a.cell)
    except (BenchmarkError, SuiteError) as e:
        die(str(e))
    except StepFailed as e:         # a preparation step (data, plans, pretraining, export): its log has the cause
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
