"""Learning-rate schedules: per epoch from a dev metric (lower is better) with early stop, or per step.

Per epoch (``Schedule.step`` after each epoch sets the *epoch rate*, starting at ``optim.lr``):

- ``newbob`` (EESEN ``train_ctc_parallel.sh``, after Kaldi nnet1): once an epoch improves the dev
  metric by less than ``start_halving_impr``, halve the rate every epoch; once halving and an epoch
  improves by less than ``end_halving_impr``, stop (not before ``min_epochs``).
- ``plateau``: multiply the rate by ``factor`` after ``patience`` epochs without a new best; stop when
  it falls below ``min_lr``.
- ``none``: constant rate, run ``max_epochs``.

Per step (``Schedule.lr_at(step)`` gives the rate of every optimizer step). With ``n = step + 1`` the
1-based number of the step about to run (skipped non-finite steps count), ``W = warmup_steps``,
``T`` the total steps of ``max_epochs`` and ``base`` the epoch rate (``optim.lr`` for cosine and noam):

- warm-up, any schedule: ``lr = base * min(1, n / W)`` (``W = 0``: ``lr = base`` exactly); newbob,
  plateau and none change ``base`` per epoch on top of the ramp. Starting at ``base / W`` rather than
  0 wastes no step.
- ``cosine``: after warm-up, ``lr = min_lr + (base - min_lr) * (1 + cos(pi * p)) / 2`` with
  ``p = min(1, (n - W) / (T - W))``: ``base`` at ``n = W``, ``min_lr`` at the last step ``n = T``.
- ``noam`` (Vaswani et al. 2017): ``lr = base * W**0.5 * min(n**-0.5, n * W**-1.5)``: the linear
  warm-up, ``base`` at ``n = W``, then ``base * sqrt(W / n)``. Needs ``W > 0``.

Cosine and noam ignore the dev metric and never stop early. State is a plain dict (floats, ints,
bools, strings, None) so it goes into checkpoints loaded with ``weights_only=True`` and resumes exactly;
it keeps ``total_steps`` of the run that started, so a resume with another ``max_epochs`` keeps the
cosine curve it began with.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


@dataclass
class ScheduleConfig:
    name: Literal["newbob", "plateau", "none", "cosine", "noam"] = "newbob"
    metric: Literal["dev_cer", "dev_loss"] = "dev_cer"
    # newbob thresholds are absolute improvements of the metric (CER in percentage points), as EESEN's
    # are on token accuracy in %.
    start_halving_impr: float = 0.5
    end_halving_impr: float = 0.1
    halving_factor: float = 0.5
    min_epochs: int = 0
    patience: int = 1
    factor: float = 0.5
    min_lr: float = 1e-6  # plateau: stop below it; cosine: the final rate
    warmup_steps: int = 0  # linear ramp over the first N optimizer steps, any schedule

    def __post_init__(self) -> None:
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps {self.warmup_steps}: must be >= 0")
        if self.name == "noam" and self.warmup_steps == 0:
            raise ValueError("name noam needs warmup_steps > 0 (its peak, optim.lr, is at step warmup_steps)")


class Schedule:
    """``step(metric, epoch)`` after each epoch updates the epoch rate and ``stop``; ``lr_at(step)`` is the
    rate of each optimizer step, which ``apply`` puts into the optimizer."""

    def __init__(self, cfg: ScheduleConfig, lr: float, total_steps: int | None = None):
        self.cfg = cfg
        self.state = {
            "lr": lr,
            "halving": False,
            "prev": None,
            "best": None,
            "bad_epochs": 0,
            "stop": False,
            "reason": "",
            "total_steps": total_steps,
        }

    @property
    def lr(self) -> float:
        """The epoch rate (what newbob/plateau set; ``optim.lr`` for the per-step schedules)."""
        return self.state["lr"]

    @property
    def stop(self) -> bool:
        return self.state["stop"]

    def set_total_steps(self, total: int) -> None:
        """Steps of the whole run (``max_epochs`` x batches per epoch), which cosine decays over.

        A resumed run keeps its own total: changing it midway would jump the rate.
        """
        old = self.state["total_steps"]
        if old is None:
            self.state["total_steps"] = total
        elif old != total and self.cfg.name == "cosine":
            log.warning("cosine schedule: keeping this run's %d total steps (max_epochs now gives %d)", old, total)

    def lr_at(self, step: int) -> float:
        """Rate of optimizer step ``step`` (0-based: the number of steps taken before it)."""
        c, base = self.cfg, self.state["lr"]
        n, w = max(step, 0) + 1, c.warmup_steps
        if c.name == "noam":
            return base * w**0.5 * min(n**-0.5, n * w**-1.5)
        if c.name == "cosine":
            span = max((self.state["total_steps"] or 0) - w, 1)
            p = min(max((n - w) / span, 0.0), 1.0)
            base = c.min_lr + (base - c.min_lr) * (1 + math.cos(math.pi * p)) / 2
        # No multiplication without warm-up, so newbob/plateau rates stay bit for bit what they were.
        return base * (n / w) if n < w else base

    def apply(self, opt: torch.optim.Optimizer, step: int) -> float:
        """Set every parameter group's rate for optimizer step ``step``; returns it."""
        lr = self.lr_at(step)
        for g in opt.param_groups:
            g["lr"] = lr
        return lr

    def step(self, metric: float, epoch: int) -> float:
        """Update after ``epoch`` (1-based count of finished epochs) with its dev ``metric``."""
        s, c = self.state, self.cfg
        if not math.isfinite(metric):
            metric = math.inf
        if c.name == "newbob":
            impr = math.inf if s["prev"] is None else s["prev"] - metric
            if s["halving"] and impr < c.end_halving_impr and epoch >= c.min_epochs:
                s["stop"], s["reason"] = True, f"improvement {impr:.4g} < end_halving_impr {c.end_halving_impr}"
            else:
                if impr < c.start_halving_impr:
                    s["halving"] = True
                if s["halving"]:
                    s["lr"] *= c.halving_factor
            s["prev"] = metric
        elif c.name == "plateau":
            if s["best"] is None or metric < s["best"]:
                s["bad_epochs"] = 0
            else:
                s["bad_epochs"] += 1
                if s["bad_epochs"] > c.patience - 1:
                    s["lr"] *= c.factor
                    s["bad_epochs"] = 0
            if s["lr"] < c.min_lr and epoch >= c.min_epochs:
                s["stop"], s["reason"] = True, f"learning rate {s['lr']:.3g} < min_lr {c.min_lr}"
        if s["best"] is None or metric < s["best"]:
            s["best"] = metric
        return s["lr"]

    def state_dict(self) -> dict:
        return dict(self.state)

    def load_state_dict(self, state: dict) -> None:
        # Checkpoints from before total_steps existed lack it; the run then takes today's total.
        self.state = {"total_steps": None, **state}
