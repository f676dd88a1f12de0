"""Train (P x K) and test (sequential) data loaders with exactly reproducible epochs.

Reproducibility design
----------------------
Every training sample gets its own seed, derived from ``(seed, epoch, rank, position in the
epoch)`` in the main process by :class:`SeededSampler`, which wraps the :class:`PKSampler` and
yields ``(index, sample_seed)`` keys. :class:`SeededDataset` seeds torch's CPU RNG, ``random``
and ``numpy.random`` with that seed right before loading and transforming the image (and, in the
main process, restores their previous states afterwards). Hence the images and labels of an
epoch depend only on ``(seed, epoch)`` -- not on ``num_workers``, worker scheduling, persistent
workers or the history of earlier epochs -- which is what an exact ``--resume`` needs. Loader
workers need no seeding of their own (their ``worker_init_fn`` only leaves SIGINT/SIGTERM to
the main process, which checkpoints on them), and the loader never consumes the global torch
RNG (it has its own generator). A resumed epoch starts at its batch ``n`` with
``seed_epoch(..., start_batch=n)``: the sampler skips the positions already done, keeping the
seeds of the rest.

What the engine calls at the start of every epoch::

    seed_epoch(loader, seed, epoch)   # before `for batch in loader`

It sets the sampler's seed and epoch (the batches and augmentations of that epoch) and seeds the
global torch (CPU and CUDA), ``random`` and ``numpy`` RNGs with a value derived from
``(seed, epoch)``, so dropout and anything else random in the training step is reproducible too.
"""

from __future__ import annotations

import random
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from ..errors import InvalidValueError
from .io import ImageDataset, Item
from .sampler import PKSampler

Batch = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def collate_batch(samples: Sequence[tuple]) -> Batch:
    """``[(img, pid, camid, index), ...]`` -> ``(images[N,C,H,W], pids[N], camids[N], indices[N])``,
    the last three as int64 tensors."""
    imgs, pids, camids, indices = zip(*samples)
    return (
        torch.stack(imgs, 0),
        torch.as_tensor(pids, dtype=torch.long),
        torch.as_tensor(camids, dtype=torch.long),
        torch.as_tensor(indices, dtype=torch.long),
    )


class SeededSampler(Sampler):
    """Wrap an index sampler; yield ``(index, sample_seed)`` with per-position seeds fixed by
    ``(seed, epoch, rank)``. ``set_epoch`` is forwarded to the wrapped sampler."""

    def __init__(self, sampler: Sampler, seed: int = 0):
        self.sampler = sampler
        self.seed = int(seed)
        self.epoch = 0
        self.start = 0  # positions of the epoch to skip (a resume in the middle of an epoch)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (indices and augmentation seeds) that ``__iter__`` yields next."""
        self.epoch = int(epoch)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def set_start(self, start: int) -> None:
        """Skip the first ``start`` positions of every epoch from now on (0 = none).

        The skipped positions keep their seeds: position ``i`` yields the same
        ``(index, sample_seed)`` with or without a skip, so a run resumed after ``n`` batches
        sees exactly the batches an uninterrupted run sees from batch ``n`` on.
        """
        self.start = int(start)

    def set_seed(self, seed: int) -> None:
        """Change the base seed (also of the wrapped sampler, when it has one)."""
        self.seed = int(seed)
        if hasattr(self.sampler, "seed"):
            self.sampler.seed = int(seed)

    def __iter__(self):
        indices = list(iter(self.sampler))
        rank = int(getattr(self.sampler, "rank", 0))
        rng = np.random.default_rng([self.seed, self.epoch, rank, 0xA06])  # 0xA06: "augment" stream
        seeds = rng.integers(0, 2**63 - 1, size=len(indices), dtype=np.int64).tolist()
        return iter(list(zip(indices, seeds))[self.start :])

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.start)


class SeededDataset(Dataset):
    """Dataset wrapper: key ``(index, sample_seed)`` seeds the RNGs, then loads ``dataset[index]``.

    A plain integer key loads without seeding. In the main process (``num_workers=0``) the
    previous RNG states are restored afterwards, so loading does not disturb the training RNGs.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        if not isinstance(key, (tuple, list)):
            return self.dataset[key]
        index, sample_seed = int(key[0]), int(key[1])
        if get_worker_info() is not None:  # a worker process: its RNGs are ours to set
            _seed_cpu_rngs(sample_seed)
            return self.dataset[index]
        states = torch.get_rng_state(), random.getstate(), np.random.get_state()
        try:
            _seed_cpu_rngs(sample_seed)
            return self.dataset[index]
        finally:
            torch.set_rng_state(states[0])
            random.setstate(states[1])
            np.random.set_state(states[2])


def _seed_cpu_rngs(seed: int) -> None:
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def _workers_ignore_stop_signals(worker_id: int) -> None:
    """Loader workers leave SIGINT/SIGTERM to the main process.

    A Ctrl-C in a terminal or a scheduler's pre-emption SIGTERM reaches the whole process
    group; the main process then finishes its step and checkpoints (engine/checkpointing.py), which it
    could not do if the workers feeding it had died first. Workers still exit with the main
    process (DataLoader shutdown, or its watchdog when the main process is gone).
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _pids(items: Sequence[Item]) -> List[int]:
    try:
        return [int(item[1]) for item in items]
    except (TypeError, IndexError, ValueError) as exc:
        raise InvalidValueError(
            "build_train_loader: items must be (path, pid, camid) tuples with integer pid"
        ) from exc


def build_train_loader(
    items: Sequence[Item],
    transform: Optional[Callable],
    p: int,
    k: int,
    num_workers: int = 2,
    seed: int = 0,
    pin_memory: Optional[bool] = None,
    num_replicas: Optional[int] = None,
    rank: Optional[int] = None,
    dataset: Optional[Dataset] = None,
) -> DataLoader:
    """P x K training loader: batches of ``P*K`` images, ``drop_last``, yielding
    ``(images, pids, camids, indices)``.

    ``loader.sampler`` is a :class:`SeededSampler` around a :class:`PKSampler`
    (``loader.sampler.sampler``); call :func:`seed_epoch` (or at least
    ``loader.sampler.set_epoch(epoch)``) before each epoch. ``pin_memory=None`` pins when CUDA is
    available. ``num_replicas``/``rank`` default to the torch.distributed world when initialised.
    ``dataset``: what to load instead of ``ImageDataset(items, transform)`` (same order as
    ``items``, e.g. the decoded-image cache's ``CachedImageDataset``).
    """
    if len(items) == 0:
        raise InvalidValueError("build_train_loader: the training item list is empty")
    pk = PKSampler(_pids(items), p, k, seed=seed, num_replicas=num_replicas, rank=rank)
    sampler = SeededSampler(pk, seed=seed)
    num_workers = int(num_workers)
    return DataLoader(
        SeededDataset(ImageDataset(items, transform) if dataset is None else dataset),
        batch_size=pk.p * pk.k,
        sampler=sampler,
        drop_last=True,
        num_workers=num_workers,
        collate_fn=collate_batch,
        pin_memory=torch.cuda.is_available() if pin_memory is None else bool(pin_memory),
        persistent_workers=num_workers > 0,
        worker_init_fn=_workers_ignore_stop_signals if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(int(seed)),
    )


def build_test_loader(
    items: Sequence[Item],
    transform: Optional[Callable],
    batch_size: int = 128,
    num_workers: int = 2,
    pin_memory: Optional[bool] = None,
) -> DataLoader:
    """Sequential loader over ``items`` (all of them, in order) yielding
    ``(images, pids, camids, indices)``."""
    return DataLoader(
        ImageDataset(items, transform),
        batch_size=int(batch_size),
        shuffle=False,
        drop_last=False,
        num_workers=int(num_workers),
        collate_fn=collate_batch,
        pin_memory=torch.cuda.is_available() if pin_memory is None else bool(pin_memory),
    )


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed :func:`seed_epoch` gives the global RNGs for ``epoch`` (a 63-bit mix of both)."""
    return int(np.random.default_rng([int(seed), int(epoch), 0x61B]).integers(0, 2**63 - 1))


def seed_epoch(loader: DataLoader, seed: int, epoch: int, start_batch: int = 0) -> None:
    """Call at the start of every training epoch, before iterating ``loader``.

    Sets the loader's sampler to ``(seed, epoch)`` (batches and per-sample augmentation seeds)
    and seeds torch (all devices), ``random`` and ``numpy`` with :func:`epoch_seed`.
    ``start_batch=n`` makes the epoch start at its batch ``n`` (resume in the middle of an
    epoch; the engine then restores the global RNG states saved at that step).
    """
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_start"):
        sampler.set_start(int(start_batch) * int(loader.batch_size or 1))
    elif start_batch:
        raise InvalidValueError("seed_epoch: start_batch needs the loader of build_train_loader")
    if hasattr(sampler, "set_seed"):
        sampler.set_seed(seed)
    elif hasattr(sampler, "seed"):
        sampler.seed = int(seed)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    s = epoch_seed(seed, epoch)
    torch.manual_seed(s)
    random.seed(s)
    np.random.seed(s % 2**32)
