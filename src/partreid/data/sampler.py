"""P x K identity sampler for metric-learning batches (P identities, K images each)."""

from __future__ import annotations

from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from ..errors import InvalidValueError


def _default_world() -> tuple:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


class PKSampler(Sampler[int]):
    """Yield dataset indices so that every run of P*K consecutive indices is one P x K batch.

    One epoch: the identities are shuffled; each identity contributes one group of K images
    (K distinct images drawn without replacement when it has at least K; otherwise all of its
    images, in random order, topped up with draws with replacement from them); consecutive
    groups of P identities form a batch, so no batch repeats an identity. The
    ``num_ids mod (P * num_replicas)`` identities left over by the shuffle sit this epoch out
    (a different set every epoch). An epoch therefore has ``num_ids // P`` batches in total.

    Deterministic given ``(seed, epoch)`` -- call ``set_epoch(epoch)`` before each epoch (epochs
    differ). Under DDP every rank computes the same global batch list and takes every
    ``num_replicas``-th batch starting at ``rank`` (the list is first cut to a multiple of
    ``num_replicas``), so ranks get disjoint batches and the same length.

    ``len(sampler)`` is the number of indices yielded to this rank per epoch
    (``batches_per_rank * P * K``); use it with ``batch_size=P*K, drop_last=True``.
    """

    def __init__(
        self,
        pids: Sequence[int],
        p: int,
        k: int,
        seed: int = 0,
        num_replicas: Optional[int] = None,
        rank: Optional[int] = None,
    ):
        if int(p) < 1 or int(k) < 1:
            raise InvalidValueError(
                f"PKSampler: P and K must be positive integers, got P={p}, K={k}"
            )
        world, this_rank = _default_world()
        self.num_replicas = int(world if num_replicas is None else num_replicas)
        self.rank = int(this_rank if rank is None else rank)
        if self.num_replicas < 1 or not 0 <= self.rank < self.num_replicas:
            raise InvalidValueError(
                f"PKSampler: need 0 <= rank < num_replicas, got rank={self.rank}, "
                f"num_replicas={self.num_replicas}"
            )
        self.p, self.k = int(p), int(k)
        self.seed = int(seed)
        self.epoch = 0

        pids_arr = np.asarray(pids, dtype=np.int64).reshape(-1)
        ids, inverse, counts = np.unique(pids_arr, return_inverse=True, return_counts=True)
        self.num_ids = len(ids)
        if self.num_ids < self.p * self.num_replicas:
            raise InvalidValueError(
                f"PKSampler: the training set has {self.num_ids} identities (from {len(pids_arr)} images) "
                f"but a batch needs P={self.p} distinct identities on each of {self.num_replicas} "
                f"replica(s); lower P or use a larger training set"
            )
        self._order = np.argsort(inverse, kind="stable")  # dataset indices grouped by identity
        self._group = inverse[self._order]  # identity number of each grouped position
        self._counts = counts
        self._offsets = np.concatenate(([0], np.cumsum(counts)[:-1]))
        self.batches_per_rank = (self.num_ids // self.p) // self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose permutation ``__iter__`` yields next."""
        self.epoch = int(epoch)

    def global_batches(self) -> np.ndarray:
        """All batches of the current epoch before the split across ranks: (num_batches, P*K)."""
        rng = np.random.default_rng([self.seed, self.epoch])
        n_ids, k = self.num_ids, self.k
        # random order of each identity's images: sort by (identity, random key)
        within = np.lexsort((rng.random(len(self._order)), self._group))
        shuffled = self._order[within]
        # K picks per identity: the first K of the shuffled images, or all of them plus
        # draws with replacement when the identity has fewer than K
        j = np.arange(k)[None, :]
        counts = self._counts[:, None]
        extra = np.floor(rng.random((n_ids, k)) * counts).astype(np.int64)
        picks = shuffled[self._offsets[:, None] + np.where(j < counts, j, extra)]  # (n_ids, K)
        num_batches = (n_ids // self.p) // self.num_replicas * self.num_replicas
        id_order = rng.permutation(n_ids)[: num_batches * self.p]
        return picks[id_order].reshape(num_batches, self.p * k)

    def __iter__(self) -> Iterator[int]:
        mine = self.global_batches()[self.rank :: self.num_replicas]
        return iter(mine.reshape(-1).tolist())

    def __len__(self) -> int:
        return self.batches_per_rank * self.p * self.k

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(P={self.p}, K={self.k}, ids={self.num_ids}, seed={self.seed}, "
            f"epoch={self.epoch}, rank={self.rank}/{self.num_replicas})"
        )
