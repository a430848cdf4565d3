"""Learning-rate schedules against hand-computed values, their checkpoint state, and which epochs get averaged."""

from __future__ import annotations

import io
import logging

import pytest
import torch

from asr.checkpoint import choose_epochs
from asr.config import from_dict
from asr.errors import AsrError
from asr.schedule import Schedule, ScheduleConfig
from asr.train import TrainConfig


def test_warmup_ramps_linearly_to_the_base_rate() -> None:
    s = Schedule(ScheduleConfig(name="none", warmup_steps=4), 0.01)
    # Step k (0-based) is the (k+1)-th step: rate 0.01 * (k+1) / 4 until step 3.
    assert s.lr_at(0) == pytest.approx(0.0025)
    assert s.lr_at(1) == pytest.approx(0.005)
    assert s.lr_at(3) == 0.01
    assert s.lr_at(1000) == 0.01


def test_warmup_scales_what_newbob_sets_per_epoch() -> None:
    s = Schedule(ScheduleConfig(name="newbob", start_halving_impr=0.5, warmup_steps=10), 0.01)
    s.step(50.0, 1)
    s.step(49.9, 2)  # improvement 0.1 < 0.5: halve
    assert s.lr == pytest.approx(0.005)
    assert s.lr_at(4) == pytest.approx(0.0025)
    assert s.lr_at(9) == pytest.approx(0.005)


@pytest.mark.parametrize("name", ["newbob", "plateau", "none"])
def test_no_warmup_leaves_the_epoch_rate_untouched(name: str) -> None:
    s = Schedule(ScheduleConfig(name=name), 0.1 + 0.2)  # a rate that any rescaling would round differently
    assert all(s.lr_at(k) is s.lr for k in (0, 1, 7, 10**6))


def test_cosine_decays_from_base_to_min_lr_after_warmup() -> None:
    s = Schedule(ScheduleConfig(name="cosine", warmup_steps=10, min_lr=0.001), 0.01, total_steps=110)
    assert s.lr_at(4) == pytest.approx(0.005)  # warm-up, 5/10 of the base
    assert s.lr_at(9) == pytest.approx(0.01)  # 10th step: the base rate
    assert s.lr_at(59) == pytest.approx((0.01 + 0.001) / 2)  # halfway through the 100 decay steps
    assert s.lr_at(109) == pytest.approx(0.001)  # the last step runs at min_lr
    assert s.lr_at(500) == pytest.approx(0.001)
    rates = [s.lr_at(k) for k in range(9, 110)]
    assert rates == sorted(rates, reverse=True)


def test_cosine_ignores_the_dev_metric_and_never_stops() -> None:
    s = Schedule(ScheduleConfig(name="cosine", min_lr=0.0), 0.01, total_steps=20)
    for epoch, cer in enumerate([50.0, 60.0, 70.0, 80.0], 1):
        s.step(cer, epoch)
    assert s.lr == 0.01 and not s.stop
    assert s.lr_at(9) == pytest.approx(0.005)  # n = 10 of 20: halfway
    assert s.lr_at(19) == 0.0


def test_noam_peaks_at_warmup_and_halves_at_four_times_it() -> None:
    s = Schedule(ScheduleConfig(name="noam", warmup_steps=100), 0.002)
    assert s.lr_at(99) == pytest.approx(0.002)  # n = 100: the base rate
    assert s.lr_at(399) == pytest.approx(0.001)  # n = 400: base * sqrt(100 / 400)
    assert s.lr_at(49) == pytest.approx(0.001)  # linear warm-up: 50/100 of the base
    assert max(s.lr_at(k) for k in range(1000)) == pytest.approx(0.002)


def test_noam_without_warmup_is_one_clear_error() -> None:
    with pytest.raises(ValueError, match="warmup_steps"):
        ScheduleConfig(name="noam")
    with pytest.raises(AsrError) as e:
        from_dict(TrainConfig, {"schedule": {"name": "noam"}})
    assert "noam needs warmup_steps > 0" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(AsrError, match="must be >= 0"):
        from_dict(TrainConfig, {"schedule": {"warmup_steps": -1}})


def test_state_round_trips_through_a_weights_only_checkpoint() -> None:
    cfg = ScheduleConfig(name="plateau", patience=1, warmup_steps=3)
    s = Schedule(cfg, 0.01)
    s.set_total_steps(40)
    for epoch, loss in enumerate([5.0, 4.0, 4.5], 1):
        s.step(loss, epoch)
    buf = io.BytesIO()
    torch.save({"schedule": s.state_dict()}, buf)
    buf.seek(0)
    t = Schedule(cfg, 0.01)
    t.load_state_dict(torch.load(buf, weights_only=True)["schedule"])
    t.set_total_steps(40)
    assert t.state == s.state and t.lr == pytest.approx(0.005)
    assert [t.lr_at(k) for k in range(6)] == [s.lr_at(k) for k in range(6)]
    t.step(4.6, 4)
    s.step(4.6, 4)
    assert t.state == s.state


def test_resume_keeps_the_runs_own_total(caplog: pytest.LogCaptureFixture) -> None:
    cfg = ScheduleConfig(name="cosine", min_lr=0.0)
    s = Schedule(cfg, 0.01)
    s.set_total_steps(100)
    t = Schedule(cfg, 0.01)
    t.load_state_dict(s.state_dict())
    with caplog.at_level(logging.WARNING, logger="asr.schedule"):
        t.set_total_steps(200)  # max_epochs raised on resume
    assert t.lr_at(99) == s.lr_at(99) == 0.0
    assert "keeping this run's 100 total steps" in caplog.text
    old = {k: v for k, v in s.state_dict().items() if k != "total_steps"}  # a checkpoint from before warm-up
    u = Schedule(cfg, 0.01)
    u.load_state_dict(old)
    u.set_total_steps(100)
    assert u.state == s.state


def test_apply_sets_every_parameter_group() -> None:
    w = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))]
    opt = torch.optim.SGD([{"params": w[:1]}, {"params": w[1:]}], lr=1.0)
    s = Schedule(ScheduleConfig(name="none", warmup_steps=4), 0.01)
    assert s.apply(opt, 1) == pytest.approx(0.005)
    assert [g["lr"] for g in opt.param_groups] == [s.lr_at(1)] * 2


def test_best_epochs_by_dev_loss_and_by_dev_cer_differ() -> None:
    history = [
        {"epoch": 1, "dev_loss": 9.0, "dev_cer": 40.0},
        {"epoch": 2, "dev_loss": 3.0, "dev_cer": 25.0},
        {"epoch": 3, "dev_loss": 4.0, "dev_cer": 20.0},
        {"epoch": 4, "dev_loss": 2.0, "dev_cer": 22.0},
        {"epoch": 5, "dev_loss": 5.0, "dev_cer": 21.0},
    ]
    assert choose_epochs(history, "best", 2, "dev_loss") == [2, 4]
    assert choose_epochs(history, "best", 2, "dev_cer") == [3, 5]
    assert choose_epochs(history, "best", 1, "dev_loss") == [4]
    assert choose_epochs(history, "best", 1, "dev_cer") == [3]
    with pytest.raises(AsrError, match="dev_cer or dev_loss"):
        choose_epochs(history, "best", 1, "schedule")


def test_average_metric_is_a_config_key() -> None:
    assert from_dict(TrainConfig, {}).average_metric == "schedule"
    assert from_dict(TrainConfig, {"average_metric": "dev_loss"}).average_metric == "dev_loss"
    with pytest.raises(AsrError, match="average_metric"):
        from_dict(TrainConfig, {"average_metric": "wer"})
