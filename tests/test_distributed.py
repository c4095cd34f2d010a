"""Distributed pretraining on CPU/gloo: a rank that dies or hangs stops the others within a bound,
the launcher says so in one line and the last checkpoint resumes; two nodes x one process meet
through torchrun's c10d rendezvous on localhost; bad launcher input is one line, exit code 2."""
import os
import re
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import CORPUS_ID, PRETRAINER, pretrain_fold, run_cli

LAUNCHER = "nnUNetv2_mmpretrain_train_ddp"
FAULTY = "nnUNetTrainerMMPretrain_faultTest"

# A trainer with a fault on one rank, chosen by MMPRETRAIN_TEST_FAULT=kind:rank:epoch (kind: kill =
# SIGKILL itself, hang = sleep for an hour with its connections open, raise = an exception).
# 3 epochs; checkpoint_latest after epoch 1. Written into a temporary
# nnUNet_extTrainer folder by the fixture below; without the variable it trains like _5epochs.
FAULT_MODULE = f'''
import os, signal, time
from nnunet_mmpretrain.training.pretrain_variants import nnUNetTrainerMMPretrain_5epochs
from nnunet_mmpretrain.training.schedules import Schedule


class {FAULTY}(nnUNetTrainerMMPretrain_5epochs):
    schedule = Schedule(epochs=3, iterations=3, val_iterations=1, save_every=2)   # MCL in epoch 2

    def on_train_start(self):
        with open(os.path.join(os.environ["MMPRETRAIN_TEST_DIR"], "rank%d.pid" % self.local_rank), "w") as f:
            f.write(str(os.getpid()))
        super().on_train_start()

    def train_step(self, batch):
        spec = os.environ.get("MMPRETRAIN_TEST_FAULT")
        if spec:
            kind, rank, epoch = spec.split(":")
            steps = self.__dict__.setdefault("_fault_steps", {{}})
            steps[self.current_epoch] = steps.get(self.current_epoch, 0) + 1
            # the second step of the epoch: rank 0 has finished the previous epoch's checkpoint
            if self.local_rank == int(rank) and self.current_epoch == int(epoch) and steps[self.current_epoch] == 2:
                with open(os.path.join(os.environ["MMPRETRAIN_TEST_DIR"], "fault_time"), "w") as f:
                    f.write(repr(time.time()))
                if kind == "raise":
                    raise RuntimeError("injected fault on rank " + rank)
                if kind == "hang":
                    time.sleep(3600)
                os.kill(os.getpid(), signal.SIGKILL)
        return super().train_step(batch)
'''


@pytest.fixture
def fault_env(planned_corpus, tmp_path):
    ext = tmp_path / "ext"
    ext.mkdir()
    (ext / "mmpretrain_fault_test_trainers.py").write_text(FAULT_MODULE)
    return {"nnUNet_results": str(tmp_path / "results"), "MMPRETRAIN_TEST_DIR": str(tmp_path),
            "nnUNet_extTrainer": os.environ["nnUNet_extTrainer"] + os.pathsep + str(ext)}


def _launch(env, *extra, trainer=FAULTY, timeout=300):
    r = run_cli([LAUNCHER, str(CORPUS_ID), "3d_tiny", "all", "-tr", trainer, "-nproc", "2", *extra], env=env,
                check=False, timeout=timeout)
    return r, time.time()


def _left_behind(env):
    """Processes still alive in the sessions of the ranks (ranks and their augmentation workers)."""
    from nnunet_mmpretrain.parallel import session_members
    d = env["MMPRETRAIN_TEST_DIR"]
    ranks = [int(open(os.path.join(d, f)).read()) for f in sorted(os.listdir(d)) if f.endswith(".pid")]
    assert len(ranks) == 2
    return session_members(ranks)


def _error_line(r):
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith(f"error: {LAUNCHER}: training stopped: "), r.stderr[-3000:]
    assert sum(ln.startswith(f"error: {LAUNCHER}") for ln in lines) == 1
    return lines[-1]


def _stop_time(env, end):
    return end - float(open(os.path.join(env["MMPRETRAIN_TEST_DIR"], "fault_time")).read())


def test_sigkilled_rank_stops_all_and_checkpoint_resumes(fault_env):
    """SIGKILL of rank 1 in the last epoch (after checkpoint_latest at epoch 2): rank 0 is stopped
    within seconds, the launcher exits 1 with one line, the checkpoint loads weights-only and --c
    finishes the training."""
    r, end = _launch(dict(fault_env, MMPRETRAIN_TEST_FAULT="kill:1:2"))
    assert r.returncode == 1, r.stderr[-3000:]
    line = _error_line(r)
    stop = _stop_time(fault_env, end)
    print(f"SIGKILL of rank 1 -> launcher exit: {stop:.2f} s")
    assert "rank 1 " in line and "was killed by SIGKILL" in line, line
    fold = pretrain_fold(fault_env["nnUNet_results"], FAULTY)
    latest = os.path.join(fold, "checkpoint_latest.pth")
    assert f"resume with --c from {latest} (epoch 2)" in line, line
    assert stop < 10, f"the other rank took {stop:.1f} s to stop"
    assert not _left_behind(fault_env), "a rank or its workers outlived the launcher"
    saved = torch.load(latest, weights_only=True)
    assert saved["current_epoch"] == 2 and not os.path.exists(os.path.join(fold, "checkpoint_final.pth"))
    assert not [f for f in os.listdir(fold) if ".tmp" in f or f.startswith("tmp")], os.listdir(fold)

    r, _ = _launch(fault_env, "--c")
    assert r.returncode == 0, r.stderr[-3000:]
    final = torch.load(os.path.join(fold, "checkpoint_final.pth"), weights_only=True)
    assert final["current_epoch"] == 3 and final["objective"]["gather"] is True
    assert final["mm_log"]["train_loss"][:2] == saved["mm_log"]["train_loss"][:2]
    assert len(final["mm_log"]["train_loss"]) == 3
    assert np.all(np.isfinite(final["mm_log"]["train_loss"]))


def test_exception_on_one_rank_stops_the_other(fault_env):
    r, end = _launch(dict(fault_env, MMPRETRAIN_TEST_FAULT="raise:1:0"))
    assert r.returncode == 1, r.stderr[-3000:]
    line = _error_line(r)
    print(f"exception on rank 1 -> launcher exit: {_stop_time(fault_env, end):.2f} s")
    assert "rank 1 " in line and "RuntimeError: injected fault on rank 1" in line, line
    assert "no checkpoint in" in line, line
    assert _stop_time(fault_env, end) < 15
    assert not _left_behind(fault_env)


def test_hung_rank_is_bounded_by_the_collective_timeout(fault_env):
    """A rank that stops answering with its connections open (here: asleep in train_step): rank 0
    gives up after --pg-timeout, then the agent stops the hung rank (SIGTERM)."""
    timeout = 10
    r, end = _launch(dict(fault_env, MMPRETRAIN_TEST_FAULT="hang:1:0"), "--pg-timeout", str(timeout))
    assert r.returncode == 1, r.stderr[-3000:]
    line = _error_line(r)
    stop = _stop_time(fault_env, end)
    print(f"rank 1 hung, --pg-timeout {timeout} -> launcher exit: {stop:.2f} s")
    assert "rank 0 " in line and "lost contact with another rank" in line and "Timed out" in line, line
    assert timeout - 1 < stop < timeout + 10, stop
    assert not _left_behind(fault_env)


def test_killed_launcher_takes_its_ranks_along(fault_env):
    """SIGKILL of the launcher itself (not a rank): each rank's watchdog kills its process group,
    the rank and its augmentation workers (nnUNet_n_proc_DA=2 here)."""
    env = dict(os.environ, **fault_env, MMPRETRAIN_TEST_FAULT="hang:1:0", nnUNet_n_proc_DA="2",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    p = subprocess.Popen([LAUNCHER, str(CORPUS_ID), "3d_tiny", "all", "-tr", FAULTY, "-nproc", "2"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stamp = os.path.join(fault_env["MMPRETRAIN_TEST_DIR"], "fault_time")
    t0 = time.time()
    while not os.path.isfile(stamp) and p.poll() is None and time.time() - t0 < 240:
        time.sleep(0.2)
    try:
        assert os.path.isfile(stamp) and p.poll() is None, "the run did not reach the hang"
        assert len(_left_behind(fault_env)) > 2          # two ranks and their augmentation workers
    finally:
        p.kill()
    p.wait()
    t0 = time.time()
    while _left_behind(fault_env) and time.time() - t0 < 10:
        time.sleep(0.2)
    print(f"launcher SIGKILLed -> its ranks and workers gone after {time.time() - t0:.2f} s")
    assert not _left_behind(fault_env)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes(env):
    """Two launchers (as two nodes, one process each) at one c10d endpoint on localhost; returns
    their exit codes, outputs and the time the last one exited."""
    env = dict(os.environ, **env, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    cmd = [LAUNCHER, str(CORPUS_ID), "3d_tiny", "all", "-tr", FAULTY, "-nproc", "1", "--nnodes", "2",
           "--rdzv-endpoint", f"127.0.0.1:{_free_port()}", "--rdzv-id", "test2nodes", "--rdzv-join-timeout", "120"]
    procs = [subprocess.Popen(cmd + ["--node-rank", str(i)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    try:
        outs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [p.returncode for p in procs], outs, time.time()


def test_two_nodes_one_process_each_c10d(fault_env):
    """World size 2 over two launchers, the global batch split over them; rank 0 writes the only
    checkpoints."""
    codes, outs, _ = _two_nodes(dict(fault_env, nnUNet_n_proc_DA="0"))
    for c, o in zip(codes, outs):
        assert c == 0, o[-3000:]
        assert "2 node(s), world size 2" in o and "The world size is 2" in o, o[-2000:]
        assert "batch_size 1" in o                               # the global batch of 2, split over the nodes
    ranks = sorted(int(re.search(r"^I am local rank (\d+)\.", o, re.M).group(1)) for o in outs)
    assert ranks == [0, 1]
    fold = pretrain_fold(fault_env["nnUNet_results"], FAULTY)
    ck = torch.load(os.path.join(fold, "checkpoint_final.pth"), weights_only=True)
    assert ck["current_epoch"] == 3 and ck["objective"]["gather"] is True
    assert np.all(np.isfinite(ck["mm_log"]["train_loss"])) and ck["mm_log"]["train_l_mcl"][-1] > 0
    assert sorted(os.listdir(fault_env["nnUNet_results"])) == ["Dataset992_PhantomCorpus"]
    assert [f for f in os.listdir(os.path.dirname(fold)) if f.startswith("fold")] == ["fold_all"]
    assert sorted(f for f in os.listdir(fold) if f.endswith(".pth")) == ["checkpoint_best.pth", "checkpoint_final.pth"]
    assert sum("training finished on 2 rank(s)" in ln for o in outs for ln in o.splitlines()) == 2


def test_rank_death_on_another_node_stops_this_node(fault_env):
    """SIGKILL of rank 1 on one 'node': that launcher reports it, the other node's rank 0 loses
    its connections at once and its launcher stops too."""
    codes, outs, end = _two_nodes(dict(fault_env, MMPRETRAIN_TEST_FAULT="kill:1:0"))
    stop = _stop_time(fault_env, end)
    print(f"2 nodes, SIGKILL of rank 1 -> both launchers exited: {stop:.2f} s")
    assert codes == [1, 1], [o[-2000:] for o in outs]
    last = sorted(o.strip().splitlines()[-1] for o in outs)
    assert "rank 0 " in last[0] and "lost contact with another rank" in last[0], last
    assert "rank 1 " in last[1] and "was killed by SIGKILL" in last[1], last
    assert stop < 10, stop
    assert not _left_behind(fault_env)


def test_missing_node_ends_the_rendezvous_in_one_line(planned_corpus, tmp_path):
    r = run_cli([LAUNCHER, str(CORPUS_ID), "3d_tiny", "all", "-tr", PRETRAINER, "-nproc", "1", "--nnodes", "2",
                 "--rdzv-endpoint", f"127.0.0.1:{_free_port()}", "--rdzv-join-timeout", "3"],
                env={"nnUNet_results": str(tmp_path)}, check=False, timeout=120)
    assert r.returncode == 1, r.stderr[-2000:]
    line = _error_line(r)
    assert "nodes did not all join in time" in line and "no checkpoint in" in line, line


@pytest.mark.parametrize("args, expect", [
    (["-nproc", "3"], "smaller than the 3 ranks"),
    (["--nnodes", "2"], "needs --rdzv-endpoint"),
    (["--nnodes", "2", "--rdzv-endpoint", "nohostport"], "must be HOST:PORT"),
    (["--nnodes", "2", "--rdzv-endpoint", "h:1", "--node-rank", "2"], "--node-rank must be between 0 and 1"),
    (["--pg-timeout", "0"], "must be at least 1 second"),
])
def test_bad_launcher_input_is_one_line(planned_corpus, args, expect):
    r = run_cli([LAUNCHER, str(CORPUS_ID), "3d_tiny", "all", "-tr", PRETRAINER, *args], check=False, timeout=120)
    assert r.returncode == 2 and expect in r.stderr, (r.returncode, r.stderr[-2000:])
    assert len([ln for ln in r.stderr.splitlines() if ln.strip()]) == 1, r.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer on a machine without CUDA")
def test_cuda_without_cuda_is_one_line(planned_corpus):
    r = run_cli([LAUNCHER, str(CORPUS_ID), "3d_tiny", "all", "--device", "cuda"], check=False, timeout=120)
    assert r.returncode == 2 and "--device cuda: no CUDA device" in r.stderr, r.stderr[-2000:]
    assert len(r.stderr.strip().splitlines()) == 1


def test_unknown_configuration_and_trainer_are_one_line(planned_corpus):
    for extra, expect in ((["-tr", PRETRAINER], "configuration '3d_nope' is not in"),):
        r = run_cli([LAUNCHER, str(CORPUS_ID), "3d_nope", "all", *extra], check=False, timeout=120)
        assert r.returncode == 2 and expect in r.stderr, r.stderr[-2000:]
    r = run_cli([LAUNCHER, str(CORPUS_ID), "3d_tiny", "all", "-tr", "nnUNetTrainerDoesNotExist"], check=False,
                timeout=120)
    assert r.returncode == 2 and "trainer 'nnUNetTrainerDoesNotExist' not found" in r.stderr, r.stderr[-2000:]


def test_gpu_check_refuses_unknown_options():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run(["bash", os.path.join(repo, "scripts", "gpu_check.sh"), "--gpus", "2"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == "error: unknown option '--gpus' (use --dry-run, --real-size, --out DIR)", r.stderr


def test_gpu_check_help_needs_no_environment(tmp_path):
    """--help and a bad option are answered before the environment set-up (which may build a venv)."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, MMPRETRAIN_VENV=str(tmp_path / "venv"))
    r = subprocess.run(["bash", os.path.join(repo, "scripts", "gpu_check.sh"), "--help"], capture_output=True,
                       text=True, timeout=60, env=env)
    assert r.returncode == 0 and "--real-size" in r.stdout and "set -euo" not in r.stdout, r.stdout
    assert not (tmp_path / "venv").exists()


def _consistency_rank(rank: int, port: int, out_dir: str) -> None:
    """One rank of the consistency-step check: the same tiny nnU-Net network on both ranks, other
    data per rank, one backward of segmentation-like loss + consistency term; writes the gradients
    (through the DDP wrapper, and bypassing it as the old step did)."""
    import torch.distributed as dist
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from torch.nn.parallel import DistributedDataParallel as DDP
    from nnunet_mmpretrain.training.finetune_augment import bottleneck_consistency
    from nnunet_mmpretrain.transfer.inject import unwrap
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        grads = {}
        for how in ("wrapper", "bypass"):
            torch.manual_seed(0)                       # identical replicas
            net = PlainConvUNet(2, 3, (4, 8, 16), torch.nn.Conv3d, 3, (1, 2, 2), (1, 1, 1), 2, (1, 1),
                                norm_op=torch.nn.InstanceNorm3d, norm_op_kwargs={"affine": True},
                                nonlin=torch.nn.LeakyReLU, deep_supervision=True)   # every parameter used
            ddp = DDP(net)
            g = torch.Generator().manual_seed(100 + rank)   # each rank its own batch
            B = 2
            x = torch.randn(2 * B, 2, 16, 16, 16, generator=g)
            if how == "wrapper":
                out, l_cons = bottleneck_consistency(ddp, x, B)
            else:                                      # the old step: unwrap(network).encoder / .decoder
                skips = unwrap(ddp).encoder(x)
                out = unwrap(ddp).decoder(skips)
                l_cons = torch.nn.functional.mse_loss(skips[-1][:B], skips[-1][B:])
            loss = sum(o.float().square().mean() for o in out) + 0.1 * l_cons
            loss.backward()
            grads[how] = torch.cat([p.grad.flatten() for p in net.parameters()])
        torch.save(grads, os.path.join(out_dir, f"grads{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_consistency_step_synchronises_gradients_through_ddp(tmp_path):
    """The consistency term goes through the DDP wrapper: after one step both ranks hold the same
    gradients. Bypassing the wrapper (the old step) leaves them different, so the check can fail."""
    import torch.multiprocessing as mp
    mp.spawn(_consistency_rank, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    g0, g1 = (torch.load(tmp_path / f"grads{r}.pt", weights_only=True) for r in (0, 1))
    assert torch.allclose(g0["wrapper"], g1["wrapper"], rtol=1e-5, atol=1e-7)
    assert g0["wrapper"].abs().sum() > 0
    assert not torch.allclose(g0["bypass"], g1["bypass"], rtol=1e-3, atol=1e-6)
