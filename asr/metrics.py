"""Training metrics: how dev CER is counted, ``EXP_DIR/metrics.csv`` (one row per epoch), the plots of its curves.

The dev CER logged per epoch is a greedy token error rate (:func:`greedy_errors`), cheap enough for every
dev pass. ``asr train`` rewrites ``metrics.csv`` and ``plots/`` after every epoch; ``asr report`` reads the
csv back and draws the same plots (:func:`plot_metrics`) for its page. The figure helpers
:func:`new_figure` and :func:`save_png` are shared with the report's other plots.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from asr.atomic import atomic_open, write_text

if TYPE_CHECKING:
    import torch

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
