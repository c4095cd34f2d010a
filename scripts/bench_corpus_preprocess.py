"""Corpus planning + preprocessing speed on a phantom corpus.

Makes a phantom corpus (``make_corpus``: every source gets N cases, so 2 sources -> 2N cases with
4 or 3 modalities) in a temporary nnU-Net folder structure, then runs
``plan_and_preprocess_corpus(992, preset="ResEncM", num_processes=NP)`` for NP in 1 and 2,
deleting the preprocessed data folder between runs. Reported per run:

* validation + fingerprint + planning = the whole call minus ``seconds_preprocessing``,
* preprocessing (``seconds_preprocessing``: includes the spawn pool start-up for NP > 1),
* cases/s (and images/s) of the preprocessing and of the whole call,
* for NP > 1, the start-up of a spawn pool whose workers import the preprocessing stack, measured
  apart (``seconds_preprocessing`` contains one such start-up; validation and fingerprint open
  their own pools too).

Run::

    .venv/bin/python scripts/bench_corpus_preprocess.py [--cases-per-source 4] [--spacing 2]
        [--num-processes 1 2] [--threads-per-process 1] [--out FILE]

Defaults finish in about 1 minute on 2 (busy) cores (``--cases-per-source 16``: about 3 minutes).
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

DATASET_ID = 992


def folder_mib(folder: str) -> float:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(folder) for f in fs) / 2 ** 20


def _import_preprocessing_stack(_):
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor  # noqa: F401
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2  # noqa: F401
    from nnunet_mmpretrain.corpus.fingerprint import load_case_arrays  # noqa: F401
    return os.getpid()


def pool_startup_seconds(num_processes: int) -> float:
    """Cost of a spawn pool whose workers import what ``_preprocess_one`` imports (paid again
    by every pool the validation, fingerprint and preprocessing steps open)."""
    from multiprocessing import get_context
    t = time.perf_counter()
    with get_context("spawn").Pool(num_processes) as pool:
        pool.map(_import_preprocessing_stack, range(num_processes))
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases-per-source", type=int, default=4)
    ap.add_argument("--spacing", type=float, default=2.0)
    ap.add_argument("--num-processes", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--preset", default="ResEncM")
    ap.add_argument("--threads-per-process", type=int, default=None,
                    help="set OMP_NUM_THREADS / MKL_NUM_THREADS / OPENBLAS_NUM_THREADS / BLOSC_NTHREADS (inherited by the spawned "
                         "workers) before anything is imported; default: leave the environment alone")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folders (printed)")
    ap.add_argument("--out", default=None, help="JSON result (default bench_output/bench_corpus_preprocess.json)")
    args = ap.parse_args()

    if args.threads_per_process:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "BLOSC_NTHREADS"):
            os.environ[var] = str(args.threads_per_process)
    result = {"machine": machine_info(), "runs": [], "threads_per_process": args.threads_per_process}
    print(f"load average at start: {result['machine']['load_average_start']} on {os.cpu_count()} cores", flush=True)
    tmp = tempfile.mkdtemp(prefix="bench_corpus_")
    for sub in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.makedirs(os.path.join(tmp, sub))
        os.environ[sub] = os.path.join(tmp, sub)   # before anything imports nnunetv2.paths
    try:
        from nnunet_mmpretrain.corpus.manifest import load_manifest
        from nnunet_mmpretrain.corpus.preprocess import plan_and_preprocess_corpus
        from nnunet_mmpretrain.synthetic.datasets import make_corpus

        t = time.perf_counter()
        raw = make_corpus(os.environ["nnUNet_raw"], DATASET_ID, cases_per_source=args.cases_per_source,
                          spacing=args.spacing, num_processes=2)
        man = load_manifest(raw)
        n_cases, n_images = len(man.cases), sum(len(c.images) for c in man.cases)
        result["corpus"] = {"cases": n_cases, "images": n_images, "spacing_mm": args.spacing,
                            "make_corpus_s": time.perf_counter() - t, "raw_MiB": folder_mib(raw)}
        print(f"corpus: {n_cases} cases, {n_images} images, made in {result['corpus']['make_corpus_s']:.1f} s", flush=True)

        for np_ in args.num_processes:
            shutil.rmtree(os.path.join(os.environ["nnUNet_preprocessed"], os.path.basename(raw)), ignore_errors=True)
            t = time.perf_counter()
            res = plan_and_preprocess_corpus(DATASET_ID, preset=args.preset, num_processes=np_)
            total = time.perf_counter() - t
            if res.done != n_cases:
                raise RuntimeError(f"preprocessed {res.done} of {n_cases} cases ({res.skipped} skipped)")
            pre = res.seconds_preprocessing
            pool_s = pool_startup_seconds(np_) if np_ > 1 else 0.0
            result["runs"].append({"num_processes": np_, "total_s": total, "validate_fingerprint_plan_s": total - pre,
                                   "preprocessing_s": pre, "done": res.done,
                                   "spawn_pool_startup_s": pool_s,
                                   "preprocess_cases_per_s": n_cases / pre, "preprocess_images_per_s": n_images / pre,
                                   "end_to_end_cases_per_s": n_cases / total, "preprocessed_MiB": folder_mib(res.data_folder)})
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    c = result["corpus"]
    result["table"] = print_table(
        [(r["num_processes"], r["validate_fingerprint_plan_s"], r["preprocessing_s"], r["spawn_pool_startup_s"], r["total_s"],
          r["preprocess_cases_per_s"], r["preprocess_images_per_s"], r["end_to_end_cases_per_s"], r["preprocessed_MiB"])
         for r in result["runs"]],
        ["processes", "validate+fingerprint+plan s", "preprocess s", "spawn pool start-up s (apart)", "total s", "preprocess cases/s",
         "preprocess images/s", "end-to-end cases/s", "MiB out"],
        f"plan_and_preprocess_corpus({DATASET_ID}, preset={args.preset!r}): {c['cases']} cases / {c['images']} images "
        f"at {c['spacing_mm']:g} mm ({c['raw_MiB']:.1f} MiB raw, made in {c['make_corpus_s']:.1f} s with 2 processes); "
        f"threads per process: {args.threads_per_process or 'library defaults'}")
    write_result(args.out, "bench_corpus_preprocess", result)


if __name__ == "__main__":
    main()
