"""``nnUNetv2_mmpretrain_train_ddp``: multi-process, multi-node pretraining with torch.distributed.

The same trainer as ``nnUNetv2_train``, run as ``-nproc`` workers per node by torchrun's elastic
agent (gloo on CPU, NCCL with ``--device cuda``); the global batch of the plans is split over
all ranks and contrastive negatives are gathered across them. One node::

    nnUNetv2_mmpretrain_train_ddp CORPUS_ID 3d_fullres all -tr nnUNetTrainerMMPretrain -nproc 2

Several nodes (the same command on each; c10d rendezvous at a host:port that every node reaches,
ranks assigned as the nodes join; rank 0 writes the checkpoints, so nnUNet_results should be a
shared folder)::

    nnUNetv2_mmpretrain_train_ddp CORPUS_ID 3d_fullres all -nproc 1 --nnodes 2 --rdzv-endpoint node0:29400

If a rank dies (crash, exception, OOM kill, SIGKILL) the other ranks are stopped: on its node by
the agent within about a second, on other nodes when their next collective fails (at once when
the dead process's connections close, at most ``--pg-timeout`` seconds when a peer stops
answering). The command then exits 1 with one line naming the rank and the checkpoint ``--c``
resumes from; see docs/SCALE.md.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import traceback
from datetime import timedelta

from nnunet_mmpretrain.cli._common import die
from nnunet_mmpretrain.parallel import PEER_LOST, PeerLostError, is_peer_loss, launch_elastic

log = logging.getLogger("nnunet_mmpretrain.train_ddp")
PROG = "nnUNetv2_mmpretrain_train_ddp"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset")
    p.add_argument("configuration")
    p.add_argument("fold")
    p.add_argument("-tr", default="nnUNetTrainerMMPretrain")
    p.add_argument("-p", default="mmPretrainPlans")
    p.add_argument("-nproc", type=int, default=2, help="processes on this node (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    p.add_argument("--c", action="store_true", help="continue from the latest checkpoint")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cpu: gloo (default); cuda: NCCL, one GPU per process, AMP (one node)")
    g = p.add_argument_group("several nodes (torchrun's rendezvous)")
    g.add_argument("--nnodes", type=int, default=1, help="number of nodes (default 1)")
    g.add_argument("--node-rank", type=int, default=None,
                   help="this node's rank; needed with --rdzv-backend static (0 hosts the store), "
                        "c10d assigns ranks as the nodes join")
    g.add_argument("--rdzv-endpoint", default=None,
                   help="host:port of the rendezvous, the same on every node (needed with --nnodes > 1)")
    g.add_argument("--rdzv-backend", choices=["c10d", "static"], default="c10d")
    g.add_argument("--rdzv-id", default="mmpretrain", help="job id, the same on every node")
    g.add_argument("--rdzv-join-timeout", type=int, default=600,
                   help="seconds to wait for all nodes to join (default 600)")
    g.add_argument("--local-addr", default=None, help="this node's address for the others (default: its hostname)")
    g.add_argument("--pg-timeout", type=int, default=1800,
                   help="seconds a collective may wait for a rank that stopped answering before all stop "
                        "(default 1800, torch's default for gloo)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p


def _check_args(a) -> None:
    """Bad input: one line, exit code 2."""
    if a.nproc < 1:
        die("-nproc must be at least 1")
    if a.threads < 1:
        die("--threads must be at least 1")
    if a.nnodes < 1:
        die("--nnodes must be at least 1")
    if a.pg_timeout < 1 or a.rdzv_join_timeout < 1:
        die("--pg-timeout and --rdzv-join-timeout must be at least 1 second")
    if a.fold != "all" and not re.fullmatch(r"\d+", a.fold):
        die(f"fold must be 'all' or a number, not {a.fold!r}")
    if a.nnodes > 1 and not a.rdzv_endpoint:
        die(f"--nnodes {a.nnodes} needs --rdzv-endpoint HOST:PORT (the same on every node)")
    if a.rdzv_endpoint and not re.fullmatch(r"[^\s:]+:\d{1,5}", a.rdzv_endpoint):
        die(f"--rdzv-endpoint must be HOST:PORT, not {a.rdzv_endpoint!r}")
    if a.rdzv_backend == "static" and a.nnodes > 1 and a.node_rank is None:
        die("--rdzv-backend static needs --node-rank (0 on the node at --rdzv-endpoint)")
    if a.node_rank is not None and not 0 <= a.node_rank < a.nnodes:
        die(f"--node-rank must be between 0 and {a.nnodes - 1} for --nnodes {a.nnodes}, not {a.node_rank}")
    if a.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            die("--device cuda: no CUDA device on this machine (use the default --device cpu)")
        if a.nproc > torch.cuda.device_count():
            die(f"-nproc {a.nproc} with --device cuda but this node has {torch.cuda.device_count()} GPU(s)")
        if a.nnodes > 1:
            die("--device cuda runs on one node: nnU-Net's trainer picks the GPU by the global rank "
                "(see docs/SCALE.md); use --device cpu across nodes, or nnUNetv2_train -num_gpus on one node")


def _preflight(a) -> str:
    """Dataset, plans, configuration, batch and trainer exist and fit: checked once here, so that
    bad input is one line instead of a traceback from every rank. Returns the output folder."""
    try:
        from nnunetv2.paths import nnUNet_preprocessed
        from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
        from nnunetv2.utilities.file_path_utilities import get_output_folder
        name = maybe_convert_to_dataset_name(a.dataset if a.dataset.startswith("Dataset") else int(a.dataset))
    except (RuntimeError, ValueError, TypeError) as e:
        die(f"dataset {a.dataset!r}: {str(e).splitlines()[0] if str(e) else type(e).__name__} "
            f"(check nnUNet_raw / nnUNet_preprocessed)")
    plans_file = os.path.join(nnUNet_preprocessed, name, a.p + ".json")
    if not os.path.isfile(plans_file):
        die(f"no plans {plans_file}: run nnUNetv2_mmpretrain_plan_and_preprocess -d {a.dataset} first, or check -p")
    import json
    try:
        with open(plans_file) as f:
            configs = json.load(f)["configurations"]
    except (OSError, ValueError, KeyError) as e:
        die(f"cannot read plans {plans_file} ({type(e).__name__}): re-run the planning")
    if a.configuration not in configs:
        die(f"configuration {a.configuration!r} is not in {plans_file} (it has {', '.join(sorted(configs))})")
    cfg, seen = configs[a.configuration], set()
    while "batch_size" not in cfg and cfg.get("inherits_from") in configs and cfg["inherits_from"] not in seen:
        seen.add(cfg["inherits_from"])
        cfg = {**configs[cfg["inherits_from"]], **{k: v for k, v in cfg.items() if k != "inherits_from"}}
    world = a.nproc * a.nnodes
    if int(cfg.get("batch_size", world)) < world:
        die(f"the batch of {a.configuration} ({cfg['batch_size']}) is smaller than the {world} ranks: "
            f"use fewer processes or a configuration with a batch of at least {world}")
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    try:
        found = recursive_find_trainer_class_by_name(a.tr)
    except (RuntimeError, AssertionError) as e:   # nnU-Net's "could not find" / not a trainer
        found = None if "find" in str(e) else die(f"trainer {a.tr!r}: {str(e).splitlines()[0]}")
    except Exception as e:   # a trainer module that does not import
        die(f"looking up trainer {a.tr!r} failed, a module of nnU-Net's trainers or nnUNet_extTrainer "
            f"does not import: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    if found is None:
        die(f"trainer {a.tr!r} not found in nnU-Net or nnUNet_extTrainer "
            f"(run: eval \"$(python -m nnunet_mmpretrain.cli.ext_trainer_path)\")")
    return get_output_folder(name, a.tr, a.p, a.configuration, a.fold if a.fold == "all" else int(a.fold))


def resume_point(folder: str):
    """The checkpoint ``--c`` continues from (nnU-Net's order: final, latest, best) and its epoch,
    read back with ``weights_only=True``; None if there is none; epoch None if it does not load."""
    import torch
    for name in ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth"):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            for mmap in (True, False):      # mmap: no need to read the whole file (zip format only)
                try:
                    ck = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
                    return path, int(ck["current_epoch"])
                except Exception:
                    pass
            return path, None
    return None


# ---------------------------------------------------------------- one rank
def _die_with_launcher(period: float = 1.0) -> None:
    """A watchdog thread: when the launcher (the elastic agent, this rank's parent) is gone, e.g.
    SIGKILLed, SIGKILL this rank's process group, i.e. the rank and its data augmentation
    workers (the agent starts each rank as the leader of its own group)."""
    import threading
    import time
    parent = os.getppid()

    def watch():
        while True:
            time.sleep(period)
            if os.getppid() != parent:
                if os.getpgrp() == os.getpid():
                    os.killpg(os.getpid(), signal.SIGKILL)
                os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="launcher-watchdog", daemon=True).start()


def _worker(a) -> None:
    """One rank, started by the elastic agent (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_* set)."""
    from torch.distributed.elastic.multiprocessing.errors import record
    _die_with_launcher()
    try:
        record(_train)(a)          # on an exception: the error file the launcher reads, then re-raise
    except BaseException:
        # exit now: a normal interpreter exit waits for nnU-Net's augmentation workers and the
        # process group, and a rank that does not exit keeps the others waiting in a collective
        traceback.print_exc()
        import multiprocessing
        for child in multiprocessing.active_children():    # nnU-Net's augmentation workers
            child.kill()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)


def _train(a) -> None:
    import torch
    import torch.distributed as dist
    from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint
    rank, local = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    torch.set_num_threads(a.threads)
    if a.device == "cuda":
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if a.device == "cuda" else "gloo", timeout=timedelta(seconds=a.pg_timeout))
    try:
        fold = a.fold if a.fold == "all" else int(a.fold)
        device = torch.device("cuda", local) if a.device == "cuda" else torch.device("cpu")
        trainer = get_trainer_from_args(a.dataset, a.configuration, fold, a.tr, a.p, device=device)
        maybe_load_checkpoint(trainer, a.c, False, None)
        trainer.run_training()
        trainer.perform_actual_validation(False)
        dist.barrier()
    except Exception as e:
        # no barrier or teardown here: the other ranks wait in a collective that will never
        # complete; this rank exits and the agent stops the rest of its node
        if is_peer_loss(e):
            first = next((ln for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
            raise PeerLostError(f"rank {rank}: {PEER_LOST} (it died, or stopped answering for --pg-timeout "
                                f"{a.pg_timeout} s): {first[:200]}") from e
        raise
    dist.destroy_process_group()


# ---------------------------------------------------------------- launcher
def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = _parser().parse_args(argv)
    if a.worker:
        _worker(a)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    _check_args(a)
    folder = _preflight(a)
    os.environ.setdefault("nnUNet_n_proc_DA", "0")
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    endpoint = a.rdzv_endpoint or "127.0.0.1:0"
    world = a.nproc * a.nnodes
    log.info(f"{PROG}: {a.nproc} process(es) on this node, {a.nnodes} node(s), world size {world}, "
             f"{'NCCL' if a.device == 'cuda' else 'gloo'}, rendezvous {a.rdzv_backend} at {endpoint}, "
             f"collective timeout {a.pg_timeout} s")
    failure = launch_elastic([sys.executable, "-u", "-m", "nnunet_mmpretrain.cli.train_ddp", "--worker"] + argv,
                             a.nnodes, a.nproc, a.rdzv_backend, endpoint, a.rdzv_id, a.node_rank,
                             a.rdzv_join_timeout, local_addr=a.local_addr)
    rp = resume_point(folder)
    if failure is None:
        where = f"{rp[0]} (epoch {rp[1]})" if rp else f"rank 0's node, under {folder}"
        log.info(f"{PROG}: training finished on {world} rank(s); checkpoint: {where}")
        return 0
    if a.nnodes == 1:      # every rank was on this node and is gone: no write is in progress
        stale = [f for f in (os.listdir(folder) if os.path.isdir(folder) else []) if f.startswith(".tmp_checkpoint")]
        for f in stale:
            os.remove(os.path.join(folder, f))
        if stale:
            log.info(f"{PROG}: removed {len(stale)} unfinished checkpoint file(s) of the stopped ranks")
    if rp is None:
        resume = f"no checkpoint in {folder}" + (" (rank 0 may run on another node)" if a.nnodes > 1 else "")
    elif rp[1] is None:
        resume = f"{rp[0]} does not load: delete it and start again"
    else:
        resume = f"resume with --c from {rp[0]} (epoch {rp[1]})"
    stopped = "; the other ranks of this node were stopped" if failure.rank >= 0 else ""
    print(f"error: {PROG}: training stopped: {failure.line()}{stopped}; {resume}", file=sys.stderr, flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
