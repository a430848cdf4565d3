"""Training metrics: how dev CER is counted, ``EXP_DIR/metrics.csv`` (one row per epoch), the plots of its curves.

The dev CER logged per epoch is a greedy token error rate (:func:`greedy_errors`), cheap enough for every
dev pass. ``asr train`` rewrites ``metrics.csv`` and ``plots/`` after every epoch; ``asr report`` reads the
csv back and draws the same plots (:func:`plot_metrics`) for its page. The figure helpers
:func:`new_figure` and :func:`save_png` are shared with the report's other plots. :class:`TensorBoardLog`
writes the same numbers, and per-step ones, for TensorBoard.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from asr.atomic import atomic_open, write_text

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

METRIC_COLUMNS = ["epoch", "step", "train_loss", "dev_loss", "dev_cer", "lr", "seconds"]


def write_metrics(exp_dir: Path, history: list[dict]) -> None:
    """``metrics.csv`` from the history kept in the checkpoint (so a resumed run never duplicates rows)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    w.writeheader()
    for row in history:
        w.writerow({k: (f"{row[k]:.6g}" if isinstance(row[k], float) else row[k]) for k in METRIC_COLUMNS})
    write_text(exp_dir / "metrics.csv", buf.getvalue())


def greedy_errors(
    log_probs: torch.Tensor, lengths: torch.Tensor, y: torch.Tensor, y_lens: torch.Tensor
) -> tuple[int, int]:
    """Token edit errors of argmax+collapse hypotheses vs references, and the reference token count.

    ``log_probs`` (B, T, V), ``lengths`` (B,), ``y`` (B, U), ``y_lens`` (B,).
    """
    best = log_probs.argmax(-1).cpu()
    errors = total = 0
    for b in range(best.shape[0]):
        path = best[b, : int(lengths[b])].tolist()
        hyp = [t for i, t in enumerate(path) if t != 0 and (i == 0 or t != path[i - 1])]
        ref = y[b, : int(y_lens[b])].tolist()
        prev = list(range(len(ref) + 1))
        for i, h in enumerate(hyp, 1):
            cur = [i] + [0] * len(ref)
            for j, r in enumerate(ref, 1):
                cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (h != r))
            prev = cur
        errors += prev[-1]
        total += len(ref)
    return errors, total


def _float(x: str | None) -> float:
    try:
        v = float(x) if x not in (None, "") else math.nan
    except ValueError:
        return math.nan
    return v


def read_metrics(path: Path) -> list[dict[str, float]]:
    """Rows of metrics.csv as floats (nan for empty or unparsable cells)."""
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: _float(v) for k, v in row.items() if k} for row in csv.DictReader(f)]


# ------------------------------------------------------------------ plots


def new_figure(w: float = 8, h: float = 3.5):
    """A bare Figure: it renders with Agg, with no pyplot state or GUI."""
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=100, layout="constrained")


def save_png(fig, path: Path) -> Path:
    """Write ``fig`` to ``path`` as PNG, atomically (parent dirs made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png")
    return path


def _col(rows: list[dict], key: str) -> np.ndarray:
    return np.array([r.get(key, math.nan) for r in rows], dtype=np.float64)


def plot_training(rows: list[dict], out: Path) -> Path | None:
    """Loss curves (train and dev) over steps (epochs when there are no steps) and the learning rate."""
    if not rows:
        return None
    step, epoch = _col(rows, "step"), _col(rows, "epoch")
    x, xlabel = (step, "step") if np.isfinite(step).all() and len(set(step)) == len(step) else (epoch, "epoch")
    fig = new_figure(9, 3.5)
    ax, ax_lr = fig.subplots(1, 2, width_ratios=[2, 1])
    for key, style in (("train_loss", "-"), ("dev_loss", "o-")):
        y = _col(rows, key)
        ok = np.isfinite(y) & np.isfinite(x)
        if ok.any():
            ax.plot(x[ok], y[ok], style, label=key, markersize=3)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("CTC loss")
    if ax.get_lines():
        ax.legend()
    ax.grid(alpha=0.3)
    lr = _col(rows, "lr")
    ok = np.isfinite(lr) & np.isfinite(x)
    if ok.any():
        ax_lr.plot(x[ok], lr[ok], "-", color="tab:green")
        if (lr[ok] > 0).all():
            ax_lr.set_yscale("log")
    ax_lr.set_xlabel(xlabel)
    ax_lr.set_ylabel("learning rate")
    ax_lr.grid(alpha=0.3)
    return save_png(fig, out)


def plot_dev_cer(rows: list[dict], out: Path) -> Path | None:
    """Dev CER per epoch, the best one annotated."""
    epoch, cer = _col(rows, "epoch"), _col(rows, "dev_cer")
    ok = np.isfinite(epoch) & np.isfinite(cer)
    if not ok.any():
        return None
    fig = new_figure(6, 3.2)
    ax = fig.subplots()
    ax.plot(epoch[ok], cer[ok], "o-")
    best = int(np.argmin(cer[ok]))
    ax.annotate(
        f"best {cer[ok][best]:.3g}",
        (epoch[ok][best], cer[ok][best]),
        textcoords="offset points",
        xytext=(0, 8),
        ha="center",
    )
    ax.set_xlabel("epoch")
    ax.set_ylabel("dev_cer (as logged)")
    ax.grid(alpha=0.3)
    return save_png(fig, out)


def plot_metrics(rows: list[dict], out_dir: Path) -> tuple[Path | None, Path | None]:
    """``out_dir/training.png`` (:func:`plot_training`) and ``out_dir/dev_cer.png`` (:func:`plot_dev_cer`);
    None for a plot with nothing to draw. ``rows``: metrics.csv rows or the training history."""
    return plot_training(rows, out_dir / "training.png"), plot_dev_cer(rows, out_dir / "dev_cer.png")


# ------------------------------------------------------------------ TensorBoard

TB_EPOCH_COLUMNS = ("train_loss", "dev_loss", "dev_cer", "lr")  # metrics.csv columns, as tags epoch/<column>


class TensorBoardLog:
    """Scalars for TensorBoard in ``log_dir`` (``EXP_DIR/tensorboard/``), at metrics.csv's ``step`` numbering.

    Per optimizer step (1-based global count): ``step/loss`` (the batch's CTC loss per utterance), ``step/lr``,
    ``step/grad_norm`` (before clipping), none for a step skipped as non-finite; per epoch, at its last step:
    ``epoch/<column>`` for :data:`TB_EPOCH_COLUMNS`. ``log_dir=None`` (option off, or not rank 0) writes
    nothing and makes no directory; without the ``tensorboard`` package it writes nothing either, after one
    warning.

    Step points are kept in memory and handed to the writer (whose background thread writes them) every
    ``every`` steps and at each :meth:`epoch`, :meth:`flush` (each checkpoint) and :meth:`close`: a
    few microseconds per step, where writing each step costs the loop ~0.1-1 ms in thread hand-offs.

    Each run opens a new event file. A resumed one (``start_step`` steps already done) starts its file with a
    restart mark at step ``start_step + 1``: TensorBoard then hides the earlier files' points from that step on
    (those an interrupted run wrote after its last checkpoint, which the resumed run writes again), so every
    step shows once, with the later file's value. The raw files keep the hidden points.
    """

    def __init__(self, log_dir: Path | None = None, start_step: int = 0, every: int = 50) -> None:
        self._w, self._every, self._steps = None, every, []
        if log_dir is None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            log.warning("no TensorBoard logging (%s): pip install tensorboard, or --set tensorboard=false", e)
            return
        _wait_past_event_files(log_dir)
        self._w = SummaryWriter(str(log_dir), purge_step=start_step + 1 if start_step else None, max_queue=1000)

    def step(self, step: int, loss: float, lr: float, grad_norm: float) -> None:
        if self._w is not None:
            self._steps.append((step, time.time(), loss, lr, grad_norm))
            if len(self._steps) >= self._every:
                self._write_steps()

    def _write_steps(self) -> None:
        for step, wall, *values in self._steps:
            for tag, value in zip(("step/loss", "step/lr", "step/grad_norm"), values, strict=True):
                self._w.add_scalar(tag, value, step, walltime=wall)
        self._steps.clear()

    def epoch(self, row: dict) -> None:
        """A metrics.csv row (the training history's), at its ``step``."""
        if self._w is not None:
            self._write_steps()
            for key in TB_EPOCH_COLUMNS:
                self._w.add_scalar(f"epoch/{key}", row[key], row["step"])

    def flush(self) -> None:
        """Everything so far onto disk."""
        if self._w is not None:
            self._write_steps()
            self._w.flush()

    def close(self) -> None:
        if self._w is not None:
            self._write_steps()
            self._w.close()
            self._w = None

    def __enter__(self) -> TensorBoardLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _wait_past_event_files(log_dir: Path) -> None:
    """Sleep, if need be, into a later second than any event file in ``log_dir`` was made in.

    TensorBoard reads a directory's event files in name order, and a name starts with its second of creation
    (then host, pid and a per-process counter): a run resumed within the same second must still sort last.
    """
    stamps = [p.name.split(".")[3] for p in log_dir.glob("events.out.tfevents.*")]
    wait = max((int(s) for s in stamps if s.isdigit()), default=0) + 1 - time.time()
    if wait > 0:
        time.sleep(wait)
