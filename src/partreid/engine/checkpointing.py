"""What keeps a long training run safe, kept out of the loop itself: which process writes,
pre-emption signals, non-finite losses, the checkpoint folder and the step logs.

Every side effect (log files, checkpoints, reports, signal-triggered saves) happens only where
:func:`is_main_process` is true, so a DDP run writes each file once. Under DDP the stop flag of
:class:`StopOnSignal` must be agreed on by all ranks (e.g. ``all_reduce(MAX)`` of
``stop.requested``) so that every rank leaves at the same step.

Run folder layout::

    OUTPUT/last.pth                      newest checkpoint (what `--resume` reads)
    OUTPUT/best.pth                      highest train.best_metric (with periodic evaluation)
    OUTPUT/checkpoints/step_00000120.pth the last train.keep_checkpoints step checkpoints
    OUTPUT/train_log.csv                 one row per logged step (column `step`)
"""

from __future__ import annotations

import contextlib
import csv
import glob
import logging
import math
import os
import re
import signal
import threading
from typing import Any, Dict, List, Optional, Tuple

import torch

from ..checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ..errors import PartreidError, UnknownNameError

log = logging.getLogger("partreid")


def is_main_process() -> bool:
    """True on rank 0 of a DDP run and in a single-process run: the one that writes files."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


# --------------------------------------------------------------------------- signals


class TrainingInterrupted(RuntimeError):
    """The run stopped on SIGTERM/SIGINT after checkpointing; ``exit_code`` is 128 + signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = int(signum)
        self.exit_code = 128 + int(signum)


class StopOnSignal:
    """Context manager: SIGTERM/SIGINT set :attr:`requested` instead of killing the process.

    The loop finishes its current step, checkpoints and leaves. A second signal of the same
    kind acts as usual (default handler), so a stuck run can still be stopped. Outside the main
    thread (where Python cannot install handlers) it does nothing.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._old: Dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        """Whether a stop signal arrived."""
        return self.signum is not None

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum
        signal.signal(signum, self._old.get(signum, signal.SIG_DFL))  # a second one is final
        log.warning(
            "received %s: finishing the current step, writing a checkpoint, then stopping",
            signal.Signals(signum).name,
        )

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()


# --------------------------------------------------------------------------- non-finite losses


class NonFiniteLossError(PartreidError, FloatingPointError):
    """A loss term became NaN or infinite (``train.nonfinite=stop``)."""


def nonfinite_term(loss: torch.Tensor, parts: Dict[str, float]) -> Optional[str]:
    """The name of the first non-finite loss term (``"loss"`` for the total), or None."""
    for name, value in parts.items():
        if not math.isfinite(float(value)):
            return name
    return None if bool(torch.isfinite(loss.detach()).all()) else "loss"


# --------------------------------------------------------------------------- checkpoints

_STEP_NAME = "step_{:08d}.pth"
_STEP_RE = re.compile(r"step_(\d{8})\.pth$")


def _link_or_copy(src: str, dst: str) -> None:
    """Make ``dst`` hold ``src``'s bytes atomically (hard link when possible, else a copy)."""
    import shutil

    tmp = f"{dst}.tmp{os.getpid()}"
    with contextlib.suppress(OSError):
        os.remove(tmp)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise CheckpointError(
            f"could not write checkpoint {dst}: {exc}; the previous checkpoint there "
            "(if any) is unchanged"
        ) from exc


class Checkpointer:
    """Writes ``last.pth``, the step checkpoints (keeping the newest ``keep``) and ``best.pth``.

    Every write is atomic (temporary file, then rename); a failing write raises
    :class:`CheckpointError` and leaves the previous files as they were.
    """

    def __init__(self, output_dir: str, keep: int, best_metric: str):
        self.out = output_dir
        self.dir = os.path.join(output_dir, "checkpoints")
        self.keep = int(keep)
        self.best_metric = best_metric
        self.last = os.path.join(output_dir, "last.pth")
        self.best = os.path.join(output_dir, "best.pth")

    def remove_unfinished(self) -> None:
        """Delete temporary files of a write that a killed process left (main process only)."""
        stale = glob.glob(os.path.join(self.out, "*.pth.tmp*")) + glob.glob(
            os.path.join(self.dir, "*.pth.tmp*")
        )
        for p in stale:  # left by a process killed while writing
            with contextlib.suppress(OSError):
                os.remove(p)
        if stale:
            log.info("removed %d unfinished checkpoint file(s) of an interrupted write", len(stale))

    def step_files(self) -> List[Tuple[int, str]]:
        """``(step, path)`` of the step checkpoints on disk, oldest first."""
        found = []
        for p in glob.glob(os.path.join(self.dir, "step_*.pth")):
            m = _STEP_RE.search(p)
            if m:
                found.append((int(m.group(1)), p))
        return sorted(found)

    def save(
        self,
        model_state: Dict[str, torch.Tensor],
        meta: Dict[str, Any],
        train_state: Dict[str, Any],
    ) -> str:
        """Write the checkpoint of ``train_state["step"]``; ``last.pth`` becomes it. Returns it."""
        step = int(train_state["step"])
        if self.keep > 0:
            path = os.path.join(self.dir, _STEP_NAME.format(step))
            save_checkpoint(path, model_state, meta, train_state)
            _link_or_copy(path, self.last)
            for _, old in self.step_files()[: -self.keep]:
                with contextlib.suppress(OSError):
                    os.remove(old)
        else:
            save_checkpoint(self.last, model_state, meta, train_state)
        return self.last

    def is_better(self, metrics: Dict[str, Any], best: Optional[Dict[str, Any]]) -> bool:
        """Whether ``metrics`` beat the best so far on ``best_metric`` (higher is better)."""
        if self.best_metric not in metrics:
            raise UnknownNameError(
                f"train.best_metric={self.best_metric!r} is not among the evaluation metrics "
                f"{sorted(k for k, v in metrics.items() if isinstance(v, float))}"
            )
        return best is None or float(metrics[self.best_metric]) > float(best["value"])

    def mark_best(self) -> None:
        """``best.pth`` becomes the newest checkpoint (``last.pth``)."""
        _link_or_copy(self.last, self.best)

    def resume_path(self, resume: str) -> Tuple[Optional[str], Optional[Dict[str, Any]]]:
        """Resolve ``--resume`` and read the checkpoint.

        ``"auto"`` reads ``last.pth``; when it is missing or damaged, the newest step checkpoint
        that reads cleanly is used instead (with a warning naming what was wrong). When the run
        folder holds no checkpoint at all (pre-empted before its first one), ``(None, None)``:
        the run starts from the beginning.
        """
        if resume != "auto":
            return resume, load_checkpoint(resume)
        candidates = [p for p in [self.last] if os.path.exists(p)]
        candidates += [p for _, p in reversed(self.step_files())]
        if not candidates:
            log.warning("--resume: no checkpoint in %s yet; starting from the beginning", self.out)
            return None, None
        errors = []
        for p in candidates:
            try:
                ckpt = load_checkpoint(p)
            except CheckpointError as exc:
                errors.append(str(exc))
                continue
            for e in errors:
                log.warning("not resuming from it: %s", e)
            return p, ckpt
        raise CheckpointError(
            f"nothing to resume in {self.out}: " + ("; ".join(errors) or "no checkpoint found")
        )


# --------------------------------------------------------------------------- step logs


def truncate_file(path: str, size: int) -> None:
    """Cut ``path`` back to ``size`` bytes (drop what an interrupted run wrote after a save)."""
    if os.path.isfile(path) and os.path.getsize(path) > size:
        with open(path, "r+b") as f:
            f.truncate(size)


class StepLog:
    """``train_log.csv`` (one row per logged step, first column ``step``) and TensorBoard.

    On resume from step ``s`` the CSV rows after ``s`` are removed and TensorBoard events after
    ``s`` are purged, so an interrupted and resumed run logs each step exactly once.
    """

    def __init__(self, output_dir: str, use_tb: bool, resume_step: Optional[int] = None):
        path = os.path.join(output_dir, "train_log.csv")
        if resume_step is not None:
            _keep_rows_until(path, resume_step)
        self._file = open(path, "a" if resume_step is not None else "w", newline="")  # noqa: SIM115
        self._csv: Optional[csv.DictWriter] = None
        self._tb = None
        if use_tb:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(
                    os.path.join(output_dir, "tb"),
                    purge_step=None if resume_step is None else resume_step + 1,
                )
            except Exception:  # tensorboard is an optional extra
                log.info(
                    "tensorboard is not installed (pip install 'partreid[tensorboard]'); "
                    "writing CSV logs only"
                )

    def row(self, step: int, values: Dict[str, float]) -> None:
        """Append one step's values (the header comes from the first row)."""
        values = {"step": step, **values}
        if self._csv is None:
            self._csv = csv.DictWriter(self._file, fieldnames=list(values), extrasaction="ignore")
            if self._file.tell() == 0:
                self._csv.writeheader()
        self._csv.writerow(values)
        self._file.flush()
        self.scalars(step, {k: v for k, v in values.items() if k not in ("step", "epoch", "iter")})

    def scalars(self, step: int, values: Dict[str, float]) -> None:
        """TensorBoard scalars only (e.g. evaluation metrics)."""
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        """Flush and close the files."""
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def _keep_rows_until(path: str, step: int) -> None:
    """Rewrite the CSV at ``path`` without its rows whose ``step`` is after ``step``."""
    if not os.path.isfile(path):
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    if "step" not in rows[0]:  # written by an older partreid: keep it aside, start a new one
        os.replace(path, path + ".before-resume")
        log.info("train_log.csv has no step column; moved to %s.before-resume", path)
        return
    col = rows[0].index("step")
    kept = [rows[0]] + [r for r in rows[1:] if _row_step(r, col, len(rows[0])) <= step]
    if len(kept) == len(rows):
        return
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        csv.writer(f).writerows(kept)
    os.replace(tmp, path)
    log.info("train_log.csv: removed %d row(s) logged after step %d", len(rows) - len(kept), step)


def _row_step(row: List[str], col: int, width: int) -> float:
    """The step of a CSV row; a half-written last row (process killed mid-write) counts as after."""
    try:
        return float(row[col]) if len(row) == width else math.inf
    except ValueError:
        return math.inf
