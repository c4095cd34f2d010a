"""Worker pools that do not oversubscribe a small machine, and the torch.distributed launcher.

Each spawned worker would start its own BLAS / OpenMP / torch thread pools sized to all cores;
on 2 cores that made every 2-process pool slower than 1 process (scripts/BENCHMARKS.md). The
children inherit the environment at start, so the thread limits are set while the pool starts.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Optional, Sequence

from tqdm import tqdm

log = logging.getLogger(__name__)
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def _init_worker():
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:
        pass


@contextmanager
def single_threaded_pool(num_processes: int):
    """A spawn Pool whose workers use one thread each."""
    old = {k: os.environ.get(k) for k in _THREAD_VARS}
    os.environ.update({k: "1" for k in _THREAD_VARS})
    try:
        pool = get_context("spawn").Pool(num_processes, initializer=_init_worker)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    with pool:
        yield pool


def map_with_progress(fn, jobs, num_processes: int, desc: str, unordered: bool = False):
    """``[fn(j) for j in jobs]`` with a progress bar, in single-threaded workers when
    ``num_processes > 1`` and there is more than one job."""
    jobs = list(jobs)
    if num_processes <= 1 or len(jobs) <= 1:
        return [fn(j) for j in tqdm(jobs, desc=desc)]
    with single_threaded_pool(min(num_processes, len(jobs))) as pool:
        it = pool.imap_unordered(fn, jobs) if unordered else pool.imap(fn, jobs)
        return list(tqdm(it, total=len(jobs), desc=desc))


# ---------------------------------------------------------------- torch.distributed launch
#: how a worker says that it stopped because another rank went away (the launcher reports the
#: rank that went away first, not the ranks that lost contact with it)
PEER_LOST = "lost contact with another rank"


class PeerLostError(RuntimeError):
    """A collective failed because another rank died or stopped answering."""


def is_peer_loss(exc: BaseException) -> bool:
    """True for the errors gloo / NCCL raise when a peer process is gone or timed out."""
    import torch.distributed as dist
    text = str(exc)
    return isinstance(exc, getattr(dist, "DistError", ())) or any(
        s in text for s in ("gloo", "Gloo", "NCCL", "Connection closed by peer", "Connection reset by peer",
                            "Timed out waiting", "timed out", "Broken pipe", "TCPStore", "recvValue"))


@dataclass
class RankFailure:
    """The first failure of a distributed run, as one line."""
    rank: int
    pid: int
    exitcode: int
    message: str
    host: str = ""

    @property
    def lost_contact(self) -> bool:
        return PEER_LOST in self.message

    def line(self) -> str:
        if self.rank < 0:
            return self.message
        if self.exitcode < 0:
            try:
                what = f"was killed by {signal.Signals(-self.exitcode).name}"
            except ValueError:
                what = f"was killed by signal {-self.exitcode}"
        elif self.message and not self.message.startswith("To enable traceback"):
            what = f"failed (exit code {self.exitcode}): {self.message}"
        else:
            what = f"exited with code {self.exitcode}"
        where = f"pid {self.pid}" + (f" on {self.host}" if self.host else "")
        return f"rank {self.rank} ({where}) {what}"


def _failure_message(f) -> str:
    m = f.message
    if isinstance(m, dict):
        m = m.get("message", "")
    lines = [ln.strip() for ln in str(m or "").strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def first_failure(failures: dict, host: str = "", window: int = 2) -> RankFailure:
    """The failure that started it. Among the failures within ``window`` s of the earliest one
    (timestamps are whole seconds), a rank that died or raised on its own comes before the ranks
    that lost contact with it, and those before ranks ended by SIGTERM (the agent stopping the rest);
    later failures are the agent's SIGKILL of ranks that ignored the SIGTERM. Then the earliest
    time, then the lowest rank."""
    out = [RankFailure(int(r), int(f.pid), int(f.exitcode), _failure_message(f), host) for r, f in failures.items()]
    stamp = {int(r): int(getattr(f, "timestamp", 0) or 0) for r, f in failures.items()}
    t0 = min(stamp.values())
    early = [x for x in out if stamp[x.rank] <= t0 + window]
    return min(early, key=lambda x: (x.exitcode == -signal.SIGTERM, x.lost_contact, stamp[x.rank], x.rank))


def session_members(leaders) -> list:
    """Processes (Linux /proc) whose session is one of ``leaders``: what is left of a rank that
    died, e.g. its data augmentation workers (the agent starts each rank in its own session)."""
    leaders, found = {int(p) for p in leaders}, []
    if not os.path.isdir("/proc"):
        return found
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != os.getpid():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) in leaders and fields[0] != "Z":
                found.append(int(d))
    return found


def kill_sessions(leaders) -> int:
    """SIGKILL what is left in the sessions of dead ranks; returns how many processes."""
    n = 0
    for pid in session_members(leaders):
        try:
            os.kill(pid, signal.SIGKILL)
            n += 1
        except OSError:
            pass
    return n


def launch_elastic(cmd: Sequence[str], nnodes: int, nproc_per_node: int, rdzv_backend: str = "c10d",
                   rdzv_endpoint: str = "127.0.0.1:0", run_id: str = "mmpretrain", node_rank: Optional[int] = None,
                   join_timeout: int = 600, shutdown_timeout: int = 30, local_addr: Optional[str] = None
                   ) -> Optional[RankFailure]:
    """Run ``cmd`` (a program and its arguments) as ``nproc_per_node`` workers on this node of an
    ``nnodes``-node job, with torchrun's elastic agent and rendezvous and no restarts.

    The agent checks its workers every 0.1 s; when one exits non-zero it sends the others SIGTERM
    and, 30 s later (torch's fixed grace), SIGKILL; ``shutdown_timeout`` is the same grace when
    the launcher itself is stopped (SIGTERM/SIGINT). Processes left behind in the sessions of the
    failed workers (their data augmentation workers) are killed. Returns None when every worker of
    this node finished, else the first failure."""
    import tempfile
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError, RendezvousTimeoutError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    configs = {"timeout": join_timeout, "join_timeout": join_timeout}
    if rdzv_backend == "static":
        configs["rank"] = int(node_rank or 0)
    with tempfile.TemporaryDirectory(prefix="mmpretrain_ddp_") as logs:
        cfg = LaunchConfig(min_nodes=nnodes, max_nodes=nnodes, nproc_per_node=nproc_per_node, run_id=run_id,
                           rdzv_backend=rdzv_backend, rdzv_endpoint=rdzv_endpoint, rdzv_configs=configs,
                           max_restarts=0, monitor_interval=0.1, start_method="spawn", local_addr=local_addr,
                           logs_specs=DefaultLogsSpecs(log_dir=logs), shutdown_timeout=shutdown_timeout)
        try:
            elastic_launch(cfg, entrypoint=cmd[0])(*cmd[1:])
        except ChildFailedError as e:
            left = kill_sessions(f.pid for f in e.failures.values())
            if left:
                log.warning(f"killed {left} process(es) left behind by the failed rank(s)")
            return first_failure(e.failures, socket.gethostname())
        except RendezvousError as e:
            what = "nodes did not all join in time" if isinstance(e, RendezvousTimeoutError) else \
                f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else 'no details'}"
            return RankFailure(-1, os.getpid(), 1, f"the rendezvous at {rdzv_endpoint} ({rdzv_backend}, {nnodes} "
                               f"node(s), id {run_id}) failed: {what}; start the command on every node with the same "
                               f"--nnodes, --rdzv-endpoint and --rdzv-id", socket.gethostname())
        except SignalException as e:
            return RankFailure(-1, os.getpid(), -int(e.sigval), f"the launcher received {e.sigval.name} and stopped its ranks",
                               socket.gethostname())
    return None
