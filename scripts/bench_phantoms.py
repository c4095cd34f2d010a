"""Phantom generation speed.

Measures, in one process:

1. the atlas load ``atlas_grid(spacing)`` (ICBM maps from nilearn resampled to the grid; cached per
   process, so it is paid once per worker and spacing) and the nilearn import before it,
2. ``make_case(seed, spacing, 4 modalities, tumour='random')`` in cases/s over N cases after one
   warm-up case, at 2 mm and 3 mm (and 1 mm with ``--include-1mm``),
3. the end-to-end writer ``make_segmentation_dataset`` (4 NIfTI images + label per case) into a
   temporary folder with 1 and 2 worker processes, in cases/s; this includes the spawn pool
   start-up, the atlas load in every worker and the NIfTI compression.

Run::

    .venv/bin/python scripts/bench_phantoms.py [--n 4] [--include-1mm] [--writer-n 8]
        [--threads-per-process 1] [--out FILE]

Defaults finish in about 1.5 minutes on 2 (busy) cores; ``--include-1mm`` adds about 2 minutes.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import machine_info, print_table, write_result  # noqa: E402

MODALITIES = ("t1", "t1c", "t2", "flair")


def bench_make_case(spacing: float, n: int) -> dict:
    from nnunet_mmpretrain.synthetic.phantom import atlas_grid, make_case
    t = time.perf_counter()
    atlas = atlas_grid(spacing)
    t_atlas = time.perf_counter() - t
    make_case(10_000, spacing, MODALITIES, tumour="random")       # warm-up
    times = []
    for seed in range(n):
        t = time.perf_counter()
        make_case(seed, spacing, MODALITIES, tumour="random")
        times.append(time.perf_counter() - t)
    return {"spacing_mm": spacing, "grid": list(atlas.t1.shape), "atlas_load_s": t_atlas, "n": n,
            "seconds_per_case": sum(times) / n, "min_s": min(times), "max_s": max(times),
            "cases_per_s": n / sum(times)}


def bench_writer(spacing: float, n: int, num_processes: int, tmp: str) -> dict:
    from nnunet_mmpretrain.synthetic.datasets import make_segmentation_dataset
    from nnunet_mmpretrain.synthetic.phantom import atlas_grid
    raw = os.path.join(tmp, f"raw_{spacing}_{num_processes}")
    atlas_grid.cache_clear()   # the in-process run pays the atlas load too, like every spawned worker
    t = time.perf_counter()
    folder = make_segmentation_dataset(raw, 990, num_train=n, num_test=0, spacing=spacing, seed=0,
                                       num_processes=num_processes, overwrite=True)
    secs = time.perf_counter() - t
    mb = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(folder) for f in fs) / 2 ** 20
    shutil.rmtree(raw, ignore_errors=True)
    return {"spacing_mm": spacing, "num_processes": num_processes, "n": n, "seconds": secs,
            "cases_per_s": n / secs, "written_MiB": mb}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4, help="timed make_case calls per spacing (after 1 warm-up)")
    ap.add_argument("--include-1mm", action="store_true", help="also 1 mm (~20 s per case on one core)")
    ap.add_argument("--writer-n", type=int, default=8, help="cases written per writer run")
    ap.add_argument("--writer-spacing", type=float, nargs="+", default=[2.0])
    ap.add_argument("--skip-writer", action="store_true")
    ap.add_argument("--threads-per-process", type=int, default=None,
                    help="set OMP_NUM_THREADS / MKL_NUM_THREADS / OPENBLAS_NUM_THREADS / BLOSC_NTHREADS (inherited "
                         "by the spawned workers) before anything is imported; default: leave the environment alone")
    ap.add_argument("--out", default=None, help="JSON result (default bench_output/bench_phantoms.json)")
    args = ap.parse_args()
    if args.threads_per_process:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "BLOSC_NTHREADS"):
            os.environ[var] = str(args.threads_per_process)

    result = {"machine": machine_info(), "make_case": [], "writer": [],
              "threads_per_process": args.threads_per_process}
    print(f"load average at start: {result['machine']['load_average_start']} on {os.cpu_count()} cores", flush=True)
    t = time.perf_counter()
    from nilearn import datasets  # noqa: F401  (import cost reported apart from the atlas load)
    result["nilearn_import_s"] = time.perf_counter() - t

    spacings = [2.0, 3.0] + ([1.0] if args.include_1mm else [])
    for s in spacings:
        r = bench_make_case(s, args.n)
        result["make_case"].append(r)
        print(f"  make_case {s} mm: {r['seconds_per_case']:.2f} s/case", flush=True)
    tables = [print_table(
        [(f"{r['spacing_mm']:g}", "x".join(map(str, r["grid"])), r["atlas_load_s"], r["n"], r["seconds_per_case"],
          r["min_s"], r["max_s"], r["cases_per_s"]) for r in result["make_case"]],
        ["spacing mm", "grid", "atlas load s", "N", "s/case", "min s", "max s", "cases/s"],
        f"make_case, 4 modalities, 1 process (nilearn import {result['nilearn_import_s']:.2f} s, not included)")]

    if not args.skip_writer:
        with tempfile.TemporaryDirectory(prefix="bench_phantoms_") as tmp:
            for s in args.writer_spacing:
                for np_ in (1, 2):
                    r = bench_writer(s, args.writer_n, np_, tmp)
                    result["writer"].append(r)
        tables.append(print_table(
            [(f"{r['spacing_mm']:g}", r["num_processes"], r["n"], r["seconds"], r["cases_per_s"], r["written_MiB"])
             for r in result["writer"]],
            ["spacing mm", "processes", "N", "total s", "cases/s", "MiB written"],
            "make_segmentation_dataset end to end (includes atlas load per process, spawn pool start-up, NIfTI .nii.gz "
            f"writing); threads per process: {args.threads_per_process or 'library defaults'}"))
    result["tables"] = tables
    write_result(args.out, "bench_phantoms", result)


if __name__ == "__main__":
    main()
