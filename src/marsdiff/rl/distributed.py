"""Data parallelism over the processes of one round job (``sampling.processes``, docs/rl.md "Multi-GPU").

This module owns the process layout and every collective the round stages use:

* :func:`launch` runs a stage function in N processes started from inside the stage
  (``torch.multiprocessing`` spawn, ``init_process_group`` on a free local port): one GPU per
  process with NCCL on CUDA, gloo on the CPU. N = 1 calls the function in the stage's own
  process with :data:`SINGLE`, whose collectives do nothing: the single-process path is the one
  that ran before this module existed, operation for operation.
* :class:`RankGroup` is what the sampler and the PPO/TRPO updates see: the rank, the share of
  a minibatch that rank works on (:meth:`RankGroup.shard`, contiguous, in rank order) and the
  reductions (sums of floats and gradients, maxima, concatenation in rank order, gathering
  Python objects to rank 0).

Rank 0 alone writes outputs. A failure on any rank fails the job: the other processes are
terminated, a :class:`~marsdiff.errors.MarsdiffError` comes back as itself (one line), any other
exception as a ``RuntimeError`` carrying the failed rank's traceback, which the stage logs into
the rule's log.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from marsdiff.errors import MarsdiffError

log = logging.getLogger(__name__)

#: The config key that sets the number of processes (one per GPU on CUDA).
PROCESSES_KEY = "sampling.processes"


@dataclass
class RankGroup:
    """This process's place in the round job and the collectives over all of its processes."""

    rank: int = 0
    world: int = 1
    #: Where reductions of tensors happen (the NCCL device on CUDA, the CPU with gloo).
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    #: A gloo group for pickled Python objects (None: the default group is gloo already).
    objects: Any = None

    @property
    def is_writer(self) -> bool:
        """Rank 0 writes every output file; the others only compute."""
        return self.rank == 0

    # --- splitting work --------------------------------------------------------------------
    def bounds(self, n: int) -> tuple[int, int]:
        """This rank's contiguous share [lo, hi) of n rows (sizes differ by at most one)."""
        return n * self.rank // self.world, n * (self.rank + 1) // self.world

    def shard(self, batch: Any) -> Any:
        """This rank's rows of a minibatch (a TransitionBatch or an array of plan-action rows).

        Contiguous and in rank order, so concatenating the shards in rank order gives the batch."""
        if self.world == 1:
            return batch
        lo, hi = self.bounds(len(batch))
        return batch[lo:hi] if isinstance(batch, np.ndarray) else batch.take(slice(lo, hi))

    # --- reductions ------------------------------------------------------------------------
    def sum(self, value: float) -> float:
        """The sum of a float over ranks (float64), the same on every rank."""
        return self._reduce_float(value, "SUM")

    def max(self, value: float) -> float:
        """The largest of a float over ranks, the same on every rank."""
        return self._reduce_float(value, "MAX")

    def _reduce_float(self, value: float, op: str) -> float:
        if self.world == 1:
            return value
        import torch.distributed as dist

        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=getattr(dist.ReduceOp, op))
        return float(t.item())

    def sum_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over ranks, in place (and returned)."""
        if self.world == 1:
            return tensor
        import torch.distributed as dist

        if tensor.device == self.device:
            dist.all_reduce(tensor)
            return tensor
        moved = tensor.to(self.device)
        dist.all_reduce(moved)
        tensor.copy_(moved)
        return tensor

    def sum_gradients(self, parameters: Sequence[torch.nn.Parameter]) -> None:
        """Sum every parameter's ``.grad`` over ranks (one flat buffer per dtype and device, so
        one collective each). A rank without a gradient for a parameter (no rows in its share)
        adds zeros; a parameter no rank has a gradient for keeps ``grad`` None, as it would in
        one process (AdamW skips such a parameter, where a zero gradient would still decay it)."""
        if self.world == 1:
            return
        parameters = list(parameters)
        present = torch.tensor([float(p.grad is not None) for p in parameters], dtype=torch.float64)
        present = self.sum_tensor(present.to(self.device)).cpu()
        groups: dict[tuple[torch.dtype, torch.device], list[torch.nn.Parameter]] = {}
        for p, seen in zip(parameters, present.tolist()):
            if seen > 0:
                groups.setdefault((p.dtype, p.device), []).append(p)
        for params in groups.values():
            flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
            self.sum_tensor(flat)
            lo = 0
            for p in params:
                part = flat[lo : lo + p.numel()].view_as(p)
                if p.grad is None:
                    p.grad = part.clone()
                else:
                    p.grad.copy_(part)
                lo += p.numel()

    def cat(self, tensor: torch.Tensor) -> torch.Tensor:
        """The ranks' 1-D tensors concatenated in rank order (on the CPU), on every rank."""
        if self.world == 1:
            return tensor
        import torch.distributed as dist

        parts: list[Any] = [None] * self.world
        dist.all_gather_object(parts, tensor.detach().cpu(), group=self.objects)
        return torch.cat(parts)

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` in rank order on rank 0 (None on the others)."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] | None = [None] * self.world if self.is_writer else None
        dist.gather_object(obj, out, dst=0, group=self.objects)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_writer else None]
        dist.broadcast_object_list(box, src=0, group=self.objects)
        return box[0]


#: The single-process group: every collective is the identity.
SINGLE = RankGroup()


class ShardedSampler:
    """A :class:`~marsdiff.diffusion.sampler.RecordingSampler` whose batches are shared out
    over the ranks, gathered on rank 0 in the single-process order.

    Batch k of the single-process layout (images k * batch_size ...) is sampled whole by rank
    k mod N, so every batch is computed exactly as one process computes it: every image has
    its own seeds, and the batch it is in is the same batch, so the trajectories are
    bit-identical to one process's whatever the kernels do with the batch dimension. Rank 0's
    ``sample`` yields every batch in order (what ``write_round`` reads); the other ranks'
    yields nothing, and must be run to the end so they take part in every gather."""

    def __init__(self, sampler: Any, group: RankGroup):
        self._sampler = sampler
        self.group = group

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sampler, name)

    def sample(self, num_images: int, round_index: int = 0, start_index: int = 0):
        size = max(1, int(self._sampler.settings.batch_size))
        starts = list(range(0, num_images, size))
        for wave in range(0, len(starts), self.group.world):
            k = wave + self.group.rank
            mine = None
            if k < len(starts):
                lo, hi = starts[k], min(num_images, starts[k] + size)
                mine = next(iter(self._sampler.sample(hi - lo, round_index=round_index, start_index=start_index + lo)))
            gathered = self.group.gather(mine)
            if gathered is not None:
                yield from (batch for batch in gathered if batch is not None)


def processes_setting(value: Any) -> int:
    """``sampling.processes`` as an int >= 1, or a one-line error naming the key."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value) or int(value) < 1:
        raise MarsdiffError(f"{PROCESSES_KEY} must be an integer >= 1, got {value!r}")
    return int(value)


def round_device(cfg: Mapping[str, Any]) -> str:
    """'cuda' or 'cpu': where a round stage of ``cfg`` (the round's params: the backend's model
    section and the sampling keys, schema-filled) runs its model."""
    from marsdiff.devices import resolve_device

    model = cfg["model"]
    if model["backend"] == "stable_diffusion":
        setting, value = "model.stable_diffusion.device", model["stable_diffusion"]["device"]
    else:
        setting, value = "sampling.device", cfg["sampling"]["device"]
    return resolve_device(value, setting).type


# --- the launcher -------------------------------------------------------------------------------

def free_port() -> int:
    """A TCP port free on the loopback interface now (the OS picks it). Another process could
    take it before rank 0 binds it; two round jobs starting on one node in the same millisecond
    is the only way, and the bind error then fails the job (Snakemake's retry starts it again)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(fn: Callable[..., Any], processes: int, *, device: str = "cpu", threads: int | None = None,
           args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None) -> Any:
    """``fn(*args, group=..., **kwargs)`` on ``processes`` ranks; returns rank 0's result.

    ``device`` 'cuda' gives each rank its own GPU (``cuda:rank`` is the current device) and
    NCCL; 'cpu' gloo. ``threads``: torch threads per rank (default: this process's count split
    evenly). ``fn`` and the arguments must pickle (module-level functions, plain data)."""
    processes = processes_setting(processes)
    kwargs = dict(kwargs or {})
    if processes == 1:
        return fn(*args, group=SINGLE, **kwargs)
    if device == "cuda" and torch.cuda.device_count() < processes:
        raise MarsdiffError(f"{PROCESSES_KEY} is {processes} but only {torch.cuda.device_count()} CUDA GPUs are visible "
                            "(the rule's gpu resource asks for one per process)")
    if threads is None:
        threads = torch.get_num_threads()
    per_rank = max(1, int(threads) // processes)
    log_paths = _append_mode_log_files()
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="marsdiff-ranks-") as tmp:
        spec = _Spec(fn, tuple(args), kwargs, processes, free_port(), device, per_rank, tmp, log_paths, os.getpid())
        log.info("starting %d processes (%s, %s, %d threads each)", processes, device,
                 "nccl" if device == "cuda" else "gloo", per_rank)
        try:
            mp.start_processes(_worker, args=(spec,), nprocs=processes, join=True, start_method="spawn")
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as exc:
            kind, rank, text = _first_failure(tmp) or ("trace", exc.error_index, str(exc))
            if kind == "user":
                raise MarsdiffError(text) from None
            raise RuntimeError(f"rank {rank} of {processes} failed:\n{text}") from None
        with open(Path(tmp) / "result.pkl", "rb") as handle:
            return pickle.load(handle)


@dataclass
class _Spec:
    fn: Callable[..., Any]
    args: tuple
    kwargs: dict
    world: int
    port: int
    device: str
    threads: int
    tmp: str
    log_paths: list[str]
    parent: int


def _append_mode_log_files() -> list[str]:
    """The files the root logger writes (the rule log), switched to append mode.

    The ranks write into the same file; a handler opened with mode 'w' writes at its own
    offset and would overwrite their lines with its next record."""
    paths = []
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.acquire()
            try:
                handler.flush()
                if handler.mode != "a":
                    handler.close()
                    handler.mode = "a"
                    handler.stream = handler._open()
            finally:
                handler.release()
            paths.append(handler.baseFilename)
    return paths


def _exit_with_parent(parent: int) -> None:
    """End this rank when the stage process is gone (killed by Snakemake or a signal): an orphaned
    rank would otherwise run on, holding its GPU, and rank 0 could still write outputs of a job
    Snakemake has already marked failed."""
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="marsdiff-parent-watch", daemon=True).start()


def _worker(rank: int, spec: _Spec) -> None:
    import torch.distributed as dist

    from marsdiff.logs import LOG_FORMAT

    _exit_with_parent(spec.parent)

    handlers: list[logging.Handler] = [logging.FileHandler(p, mode="a") for p in spec.log_paths]
    handlers.append(logging.StreamHandler())
    logging.basicConfig(level=logging.INFO, format=f"[rank {rank}] {LOG_FORMAT}", handlers=handlers, force=True)
    torch.set_num_threads(spec.threads)
    if spec.device == "cuda":
        torch.cuda.set_device(rank)
        backend, device = "nccl", torch.device("cuda", rank)
    else:
        backend, device = "gloo", torch.device("cpu")
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{spec.port}", rank=rank, world_size=spec.world)
    log.info("rank %d of %d up (%s, %s, %d threads)", rank, spec.world, device, backend, spec.threads)
    try:
        # Pickled objects travel on the CPU: a gloo group beside NCCL keeps them off the GPUs.
        objects = dist.new_group(backend="gloo") if backend == "nccl" else None
        group = RankGroup(rank, spec.world, device, objects)
        try:
            result = spec.fn(*spec.args, group=group, **spec.kwargs)
        except BaseException as err:
            # The first rank to fail holds the cause; the others then fail in a collective with
            # "connection closed". The file's time tells the parent which came first.
            kind = "user" if isinstance(err, MarsdiffError) else "trace"
            text = str(err) if kind == "user" else traceback.format_exc()
            (Path(spec.tmp) / f"{kind}-{rank}.txt").write_text(text)
            raise
        if group.is_writer:
            with open(Path(spec.tmp) / "result.pkl", "wb") as handle:
                pickle.dump(result, handle)
    finally:
        dist.destroy_process_group()


def _first_failure(tmp: str) -> tuple[str, int, str] | None:
    """(kind, rank, text) of the rank that failed first: a user error before any traceback
    (a MarsdiffError is the cause; another rank's broken collective only follows from it)."""
    files = sorted(Path(tmp).glob("*-*.txt"), key=lambda p: (not p.name.startswith("user"), p.stat().st_mtime_ns))
    if not files:
        return None
    kind, rank = files[0].stem.split("-")
    return kind, int(rank), files[0].read_text()


__all__ = ["RankGroup", "SINGLE", "ShardedSampler", "launch", "processes_setting", "round_device", "PROCESSES_KEY"]
