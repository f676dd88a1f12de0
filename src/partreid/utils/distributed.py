"""One process per device under ``torchrun``: set-up, collectives, sharded evaluation, seeds.

Entry points (all safe to call in a plain single process, where they do nothing or the obvious):

* :func:`init_distributed` -- read ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (set by
  ``torchrun``), pick the device (``cuda:LOCAL_RANK`` or the CPU), start the process group
  (``nccl`` on CUDA, ``gloo`` on the CPU) with a collective ``timeout``: a process that dies or
  stalls makes the others stop with a :class:`DistributedError` naming the collective, instead
  of hanging forever.  Returns a :class:`DistInfo`.
* :func:`rank`, :func:`world_size`, :func:`is_main`, :func:`barrier`, :func:`cleanup`.
* :func:`all_gather_rows` -- all-gather tensors whose first dimension differs per process.
* :func:`shard_bounds` / :func:`gather_in_order` -- split N evaluation items into contiguous
  blocks (every item in exactly one process, no padding) and reassemble the per-process results
  in the original order.
* :func:`process_seed`, :func:`per_process_pk`, :func:`convert_sync_batchnorm`, :func:`wrap_ddp`.

Batch sizes under DDP: the config's ``sampler.p x sampler.k`` is the GLOBAL batch.  Each process
takes ``P / world`` identities x K images per step (:func:`per_process_pk`).  The PK sampler
(``partreid.data.sampler.PKSampler``) builds one global list of P/world-identity batches from
``(seed, epoch)`` -- the same on every process, so ``seed`` must NOT differ per rank -- and hands
batch ``s * world + rank`` to process ``rank`` at step ``s``; within an epoch every identity
appears in one batch only, so the processes see different identities at every step.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

import torch
import torch.distributed as dist
from torch import nn

from ..errors import InvalidValueError, PartreidError

log = logging.getLogger("partreid")

DEFAULT_TIMEOUT_S = 600.0  # a collective that waits longer than this stops the run

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DistInfo",
    "DistributedError",
    "all_gather_rows",
    "barrier",
    "cleanup",
    "convert_sync_batchnorm",
    "env_world",
    "gather_in_order",
    "init_distributed",
    "is_distributed",
    "is_main",
    "per_process_pk",
    "process_seed",
    "rank",
    "shard_bounds",
    "world_size",
    "wrap_ddp",
]


class DistributedError(PartreidError, RuntimeError):
    """A collective failed: another process stopped, or did not answer within the timeout."""


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its rank, the world size, its device and the backend."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: Optional[str]  # None when not distributed

    @property
    def is_main(self) -> bool:
        """True on the process that writes logs, checkpoints and reports (rank 0)."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise InvalidValueError(
            f"environment variable {name}={value!r}: expected an integer"
        ) from exc


def env_world() -> Tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment (``(0, 1, 0)`` without it)."""
    world = _env_int("WORLD_SIZE", 1)
    rank_, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank_ < world:
        raise InvalidValueError(
            f"torchrun environment: need 0 <= RANK < WORLD_SIZE, got {rank_}/{world}"
        )
    return rank_, world, local


def _pick_device(device: Union[str, torch.device], local_rank: int, world: int) -> torch.device:
    name = str(device)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidValueError(f"device {name!r}: CUDA is not available on this machine")
        if world > 1 or dev.index is None:  # one device per process: cuda:LOCAL_RANK
            count = torch.cuda.device_count()
            if local_rank >= count:
                raise InvalidValueError(
                    f"LOCAL_RANK={local_rank} but this machine has {count} CUDA device(s); "
                    "start at most one process per GPU (torchrun --nproc-per-node)"
                )
            dev = torch.device("cuda", local_rank if world > 1 else (dev.index or 0))
        torch.cuda.set_device(dev)
    return dev


def init_distributed(
    device: Union[str, torch.device] = "auto",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    backend: Optional[str] = None,
) -> DistInfo:
    """Start the process group when torchrun launched several processes; return a :class:`DistInfo`.

    ``device``: ``auto`` | ``cpu`` | ``cuda`` (each process takes ``cuda:LOCAL_RANK``).
    ``backend``: default ``nccl`` for CUDA, ``gloo`` for the CPU.  ``timeout_s`` bounds every
    collective (NCCL: with asynchronous error handling, on by default, the stuck process aborts).
    A single process (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) starts no process group.
    """
    rank_, world, local = env_world()
    dev = _pick_device(device, local, world)
    if world == 1:
        return DistInfo(0, 1, 0, dev, None)
    if float(timeout_s) <= 0:
        raise InvalidValueError(
            f"timeout_s: expected a positive number of seconds, got {timeout_s}"
        )
    backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
    if not dist.is_initialized():
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
        if missing:
            raise InvalidValueError(
                f"WORLD_SIZE={world} but {', '.join(missing)} not set: start the processes with "
                "torchrun (e.g. `torchrun --nproc-per-node 2 -m partreid train ...`)"
            )
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        kwargs = dict(
            backend=backend,
            rank=rank_,
            world_size=world,
            timeout=datetime.timedelta(seconds=float(timeout_s)),
        )
        if backend == "nccl":
            kwargs["device_id"] = dev
        try:
            dist.init_process_group(**kwargs)
        except TypeError:  # older torch without device_id
            kwargs.pop("device_id", None)
            dist.init_process_group(**kwargs)
    log.info("distributed: rank %d/%d on %s (%s)", rank_, world, dev, backend)
    return DistInfo(rank_, world, local, dev, backend)


def is_distributed() -> bool:
    """True when a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """True on rank 0 (and in a plain single process): the one that writes files and logs."""
    return rank() == 0


def _fail(what: str, exc: BaseException) -> DistributedError:
    return DistributedError(
        f"rank {rank()}/{world_size()}: collective {what} failed - another process stopped or did "
        f"not answer within the timeout ({type(exc).__name__}: {str(exc).splitlines()[0][:300]})"
    )


def barrier() -> None:
    """Wait for every process (no-op when not distributed); raises DistributedError on failure."""
    if not is_distributed():
        return
    try:
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()
    except Exception as exc:  # noqa: BLE001 - gloo/nccl raise various RuntimeError subclasses
        raise _fail("barrier", exc) from exc


def cleanup() -> None:
    """Destroy the process group if one is running (call once at the end of a run)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _comm_device(t: torch.device) -> torch.device:
    """gloo communicates CPU tensors, nccl CUDA tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_rows(t: torch.Tensor) -> List[torch.Tensor]:
    """Every process's ``t`` (first dimension may differ per process), in rank order.

    Number of dimensions, trailing dimensions and dtype must agree across processes, except that
    a process with zero rows may pass any trailing shape.  The results are on ``t``'s device.
    """
    if not is_distributed():
        return [t]
    if t.dim() == 0:
        raise InvalidValueError("all_gather_rows: expected a tensor with at least one dimension")
    world = world_size()
    comm = _comm_device(t.device)
    try:
        shape = torch.tensor(list(t.shape), dtype=torch.int64, device=comm)
        shapes = [torch.zeros_like(shape) for _ in range(world)]
        dist.all_gather(shapes, shape)
        sizes = [s.tolist() for s in shapes]
        trailing = max((s[1:] for s in sizes if s[0] > 0), default=sizes[0][1:])
        if any(s[0] > 0 and s[1:] != trailing for s in sizes):
            raise InvalidValueError(
                f"all_gather_rows: trailing shapes differ across processes: {sizes}"
            )
        n_max = max(s[0] for s in sizes)
        padded = torch.zeros((n_max, *trailing), dtype=t.dtype, device=comm)
        if t.shape[0]:
            padded[: t.shape[0]] = t
        out = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(out, padded)
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise _fail("all_gather", exc) from exc
    return [o[: s[0]].to(t.device) for o, s in zip(out, sizes)]


def shard_bounds(
    n: int, rank_: Optional[int] = None, world: Optional[int] = None
) -> Tuple[int, int]:
    """``[start, end)`` of this process's contiguous block of ``n`` items (sizes differ by <= 1).

    Unlike ``DistributedSampler`` nothing is padded or repeated: concatenating the blocks in rank
    order gives ``range(n)`` exactly, which :func:`gather_in_order` relies on.
    """
    r = rank() if rank_ is None else int(rank_)
    w = world_size() if world is None else int(world)
    base, extra = divmod(int(n), w)
    start = r * base + min(r, extra)
    return start, start + base + (1 if r < extra else 0)


def gather_in_order(local: torch.Tensor, n: int) -> torch.Tensor:
    """Concatenate every process's :func:`shard_bounds` block in rank order -> all ``n`` rows."""
    if not is_distributed():
        if local.shape[0] != n:
            raise InvalidValueError(f"gather_in_order: expected {n} rows, got {local.shape[0]}")
        return local
    parts = all_gather_rows(local)
    out = torch.cat(parts)
    if out.shape[0] != n:
        raise DistributedError(
            f"gather_in_order: gathered {out.shape[0]} rows from {len(parts)} processes "
            f"({[p.shape[0] for p in parts]}), expected {n}"
        )
    return out


def process_seed(seed: int, rank_: Optional[int] = None) -> int:
    """A per-process seed for process-local randomness (device augmentation, dropout).

    Rank 0 keeps ``seed`` (single-process runs are unchanged).  Do not use it for the sampler or
    the model initialisation, which must be identical on every process.
    """
    r = rank() if rank_ is None else int(rank_)
    return (int(seed) + 1_000_003 * r) % (2**63 - 1)


def per_process_pk(p: int, k: int, world: Optional[int] = None) -> Tuple[int, int]:
    """``(P_local, K)``: the global P x K batch split over ``world`` processes by identities."""
    w = world_size() if world is None else int(world)
    if int(p) % w:
        raise InvalidValueError(
            f"sampler.p={p} is the global number of identities per batch and must be divisible by "
            f"the number of processes ({w}); choose sampler.p as a multiple of {w}"
        )
    return int(p) // w, int(k)


def convert_sync_batchnorm(model: nn.Module, enabled: bool = True) -> nn.Module:
    """BatchNorm layers -> SyncBatchNorm (statistics over the global batch) when distributed."""
    if enabled and is_distributed():
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def wrap_ddp(
    model: nn.Module, device: torch.device, find_unused_parameters: bool = False
) -> nn.Module:
    """Wrap ``model`` (already on ``device``) in DistributedDataParallel when distributed.

    Some models leave branches unused in a given configuration (e.g. heads whose loss weight is
    zero): pass ``find_unused_parameters=True`` for those.  The unwrapped model is
    ``wrapped.module``; save checkpoints from that so they load without DDP.
    """
    if not is_distributed():
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        model, device_ids=ids, find_unused_parameters=find_unused_parameters
    )
