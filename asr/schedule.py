"""Learning-rate schedules driven by a dev metric (lower is better), with early stop.

- ``newbob`` (EESEN ``train_ctc_parallel.sh``, after Kaldi nnet1): once an epoch improves the dev
  metric by less than ``start_halving_impr``, halve the rate every epoch; once halving and an epoch
  improves by less than ``end_halving_impr``, stop (not before ``min_epochs``).
- ``plateau``: multiply the rate by ``factor`` after ``patience`` epochs without a new best; stop when
  it falls below ``min_lr``.
- ``none``: constant rate, run ``max_epochs``.

State is a plain dict so it goes into checkpoints and resumes exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal


@dataclass
class ScheduleConfig:
    name: Literal["newbob", "plateau", "none"] = "newbob"
    metric: Literal["dev_cer", "dev_loss"] = "dev_cer"
    # newbob thresholds are absolute improvements of the metric (CER in percentage points), as EESEN's
    # are on token accuracy in %.
    start_halving_impr: float = 0.5
    end_halving_impr: float = 0.1
    halving_factor: float = 0.5
    min_epochs: int = 0
    patience: int = 1
    factor: float = 0.5
    min_lr: float = 1e-6


class Schedule:
    """``step(metric, epoch)`` after each epoch returns the new learning rate; ``stop`` says when to end."""

    def __init__(self, cfg: ScheduleConfig, lr: float):
        self.cfg = cfg
        self.state = {
            "lr": lr,
            "halving": False,
            "prev": None,
            "best": None,
            "bad_epochs": 0,
            "stop": False,
            "reason": "",
        }

    @property
    def lr(self) -> float:
        return self.state["lr"]

    @property
    def stop(self) -> bool:
        return self.state["stop"]

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
        self.state = dict(state)
