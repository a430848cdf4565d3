"""TensorBoard scalars from ``asr train``: read back with tensorboard's own event reader, they equal metrics.csv;
the option off (or the package missing) makes no directory; a resumed run shows every step once."""

from __future__ import annotations

import csv
import importlib.util
import math
import sys
from pathlib import Path

import pytest
from conftest import SHARED_DATA
from trainutil import fsdd_dir, lang_dir

from asr.config import apply_overrides, from_dict
from asr.metrics import TB_EPOCH_COLUMNS, TensorBoardLog
from asr.train import TrainConfig, train

TINY = ["model.num_layers=1", "model.hidden=16", "optim.lr=0.01", "frames_per_batch=150", "average=last", "seed=7"]
STEP_TAGS = ["step/loss", "step/lr", "step/grad_norm"]
EPOCH_TAGS = [f"epoch/{c}" for c in TB_EPOCH_COLUMNS]
HAVE_TB = importlib.util.find_spec("tensorboard") is not None
needs_tb = pytest.mark.skipif(not HAVE_TB, reason="tensorboard not installed (pip install 'asr[tensorboard]')")


class Killed(Exception):
    pass


def _cfg(*overrides: str) -> TrainConfig:
    return from_dict(TrainConfig, apply_overrides({}, [*TINY, *overrides]))


def _metrics(exp: Path) -> list[dict]:
    with open(exp / "metrics.csv") as f:
        return list(csv.DictReader(f))


def _scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """``tag -> [(step, value)]`` as TensorBoard shows them (orphaned points purged)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})  # 0: keep every point
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _raw_steps(log_dir: Path, tag: str) -> list[list[int]]:
    """The steps of ``tag`` in each event file, files in name order, nothing purged."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    out = []
    for f in sorted(log_dir.glob("events.out.tfevents.*")):
        events = EventFileLoader(str(f)).Load()
        out.append([e.step for e in events if e.HasField("summary") and any(v.tag == tag for v in e.summary.value)])
    return out


@pytest.fixture(scope="module")
def fsdd(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """20 training utterances (2 speakers x 10 digits), a 10-utterance dev set, char tokens."""
    if not (SHARED_DATA / "fsdd").is_dir():
        pytest.skip(f"FSDD not found under {SHARED_DATA}")
    tmp = tmp_path_factory.mktemp("fsdd")
    train_dir = fsdd_dir(SHARED_DATA, tmp / "train", ["george", "jackson"], [5], stack=3, subsample=3)
    dev_dir = fsdd_dir(SHARED_DATA, tmp / "dev", ["george"], [6], stack=3, subsample=3)
    return train_dir, dev_dir, lang_dir(train_dir, tmp / "lang")


@needs_tb
def test_scalars_equal_metrics_csv(fsdd: tuple[Path, Path, Path], tmp_path: Path) -> None:
    exp = tmp_path / "exp"
    train(*fsdd, exp, _cfg("max_epochs=2", "log_every=3"))  # step points reach the writer every 3 steps
    rows, sc = _metrics(exp), _scalars(exp / "tensorboard")
    assert set(sc) == set(STEP_TAGS + EPOCH_TAGS)
    assert len(rows) == 2 and len(list((exp / "tensorboard").iterdir())) == 1
    for col in TB_EPOCH_COLUMNS:
        assert [s for s, _ in sc[f"epoch/{col}"]] == [int(r["step"]) for r in rows], col
        assert [v for _, v in sc[f"epoch/{col}"]] == pytest.approx([float(r[col]) for r in rows], rel=1e-5), col
    n = int(rows[-1]["step"])
    for tag in STEP_TAGS:  # one point per optimizer step, numbered 1..n like metrics.csv's step
        assert [s for s, _ in sc[tag]] == list(range(1, n + 1)), tag
        assert all(math.isfinite(v) and v > 0 for _, v in sc[tag]), tag
    step_lr = dict(sc["step/lr"])  # an epoch's lr is the rate of its last step
    assert [step_lr[s] for s, _ in sc["epoch/lr"]] == [v for _, v in sc["epoch/lr"]]


@needs_tb
def test_resume_shows_each_step_once(fsdd: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """Killed at step 5 with a checkpoint at step 4: the resumed run writes step 5 again, in a second event
    file that TensorBoard reads last; it shows steps 1..n once each, with the values of an uninterrupted run."""
    cfg = _cfg("max_epochs=2", "checkpoint_every=2", "model.dropout=0")
    train(*fsdd, tmp_path / "ref", cfg)
    exp = tmp_path / "exp"

    def kill(step: int) -> None:
        if step == 5:
            raise Killed

    with pytest.raises(Killed):
        train(*fsdd, exp, cfg, on_step=kill)
    train(*fsdd, exp, cfg)
    raw = _raw_steps(exp / "tensorboard", "step/loss")
    assert len(raw) == 2 and raw[0] == [1, 2, 3, 4, 5] and raw[1][0] == 5  # step 5 in both files
    ref, got = _scalars(tmp_path / "ref" / "tensorboard"), _scalars(exp / "tensorboard")
    assert set(got) == set(ref)
    for tag in ref:
        steps = [s for s, _ in got[tag]]
        assert steps == [s for s, _ in ref[tag]] and steps == sorted(set(steps)), tag
        assert [v for _, v in got[tag]] == pytest.approx([v for _, v in ref[tag]], rel=1e-6), tag


@pytest.mark.parametrize("how", ["option off", "package missing"])
def test_no_tensorboard_dir(
    fsdd: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    exp = tmp_path / "exp"
    if how == "package missing":
        monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import raises ImportError
    train(*fsdd, exp, _cfg("max_epochs=1", "tensorboard=false" if how == "option off" else "tensorboard=true"))
    assert (exp / "final.pt").is_file() and not (exp / "tensorboard").exists()
    warnings = [line for line in (exp / "train.log").read_text().splitlines() if "TensorBoard" in line]
    if how == "option off":
        assert warnings == []
    else:
        assert len(warnings) == 1 and "WARNING" in warnings[0] and "pip install tensorboard" in warnings[0]


def test_writer_off_does_nothing(tmp_path: Path) -> None:
    with TensorBoardLog(None, 7) as tb:
        tb.step(8, 1.0, 0.1, 2.0)
        tb.epoch({"step": 8, "train_loss": 1.0, "dev_loss": 1.0, "dev_cer": 50.0, "lr": 0.1})
        tb.flush()
    assert list(tmp_path.iterdir()) == []


@needs_tb
def test_a_later_writer_sorts_last(tmp_path: Path) -> None:
    """TensorBoard reads event files in name order, names start with their second: a run resumed within
    the same second as an earlier file (another process, or a counter past 9) must still sort after it."""
    import time

    earlier = tmp_path / f"events.out.tfevents.{int(time.time()):010d}.zzz.99999.99"
    earlier.write_bytes(b"")
    with TensorBoardLog(tmp_path, 3):
        pass
    assert sorted(tmp_path.iterdir())[-1] != earlier
