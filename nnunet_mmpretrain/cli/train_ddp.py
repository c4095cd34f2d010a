"""``nnUNetv2_mmpretrain_train_ddp``: multi-process pretraining with torch.distributed.

On GPUs nnU-Net's own ``nnUNetv2_train ... -num_gpus N`` works with our trainers (NCCL). This
command adds the CPU path: N processes on this machine, gloo backend, the same trainer; the global
batch of the plans is split over the processes and contrastive negatives are gathered across
them::

    nnUNetv2_mmpretrain_train_ddp CORPUS_ID 3d_fullres all -tr nnUNetTrainerMMPretrain -p mmPretrainPlans -nproc 2
"""
from __future__ import annotations

import argparse
import os
import socket
import sys


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, a) -> None:
    import torch
    import torch.distributed as dist
    from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint
    torch.set_num_threads(max(1, a.threads))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        fold = a.fold if a.fold == "all" else int(a.fold)
        trainer = get_trainer_from_args(a.dataset, a.configuration, fold, a.tr, a.p, device=torch.device("cpu"))
        maybe_load_checkpoint(trainer, a.c, False, None)
        trainer.run_training()
        trainer.perform_actual_validation(False)
    finally:
        dist.barrier()
        dist.destroy_process_group()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="nnUNetv2_mmpretrain_train_ddp", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset")
    p.add_argument("configuration")
    p.add_argument("fold")
    p.add_argument("-tr", default="nnUNetTrainerMMPretrain")
    p.add_argument("-p", default="mmPretrainPlans")
    p.add_argument("-nproc", type=int, default=2, help="processes (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    p.add_argument("--c", action="store_true", help="continue from the latest checkpoint")
    a = p.parse_args(argv)
    if a.nproc < 1:
        print("error: -nproc must be at least 1", file=sys.stderr)
        return 2
    import torch.multiprocessing as mp
    os.environ.setdefault("nnUNet_n_proc_DA", "0")
    mp.spawn(_worker, args=(a.nproc, _free_port(), a), nprocs=a.nproc, join=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
