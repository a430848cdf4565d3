"""Training end to end on real FSDD digits: overfit, exact resume, 2-process DDP, one-line errors."""

from __future__ import annotations

import csv
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA
from trainutil import fsdd_dir, lang_dir

from asr.cli import main
from asr.config import apply_overrides, from_dict
from asr.dataset import BucketBatchSampler, FeatsDataset
from asr.features import load_pipeline
from asr.modeldir import ModelDir
from asr.tokens import TokenTable
from asr.train import TrainConfig, load_train_config, train

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "model.num_layers=2",
    "model.hidden=16",
    "model.dropout=0.3",
    "optim.lr=0.01",
    "schedule.name=plateau",
    "frames_per_batch=150",
    "average=last",
    "average_n=2",
    "seed=7",
]


def _cfg(*overrides: str) -> TrainConfig:
    return from_dict(TrainConfig, apply_overrides({}, list(overrides)))


def _metrics(exp: Path) -> list[dict]:
    with open(exp / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def fsdd(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """20 training utterances (2 speakers x 10 digits), a 10-utterance dev set, char tokens."""
    if not (SHARED_DATA / "fsdd").is_dir():
        pytest.skip(f"FSDD not found under {SHARED_DATA}")
    tmp = tmp_path_factory.mktemp("fsdd")
    train_dir = fsdd_dir(SHARED_DATA, tmp / "train", ["george", "jackson"], [5], stack=3, subsample=3)
    dev_dir = fsdd_dir(SHARED_DATA, tmp / "dev", ["george"], [6], stack=3, subsample=3)
    return train_dir, dev_dir, lang_dir(train_dir, tmp / "lang")


def _greedy_exact(exp: Path, data: Path) -> tuple[int, int]:
    m = ModelDir.load(exp)
    ds = FeatsDataset(data, m.tokens, m.pipeline)
    lp, lens = m.log_probs([ds[i][1] for i in range(len(ds))])
    exact = 0
    for i in range(len(ds)):
        path = lp[i, : lens[i]].argmax(-1).tolist()
        hyp = [t for j, t in enumerate(path) if t and (j == 0 or t != path[j - 1])]
        exact += m.tokens.decode(hyp) == m.tokens.decode(ds[i][2].tolist())
    return exact, len(ds)


def test_overfit_20_utterances(fsdd: tuple[Path, Path, Path], tmp_path: Path) -> None:
    train_dir, dev_dir, lang = fsdd
    cfg = _cfg(
        "model.num_layers=2",
        "model.hidden=64",
        "model.dropout=0",
        "optim.lr=0.02",
        "schedule.name=none",
        "max_epochs=35",
        "frames_per_batch=150",
        "average=last",
        "average_n=1",
    )
    exp = tmp_path / "exp"
    train(train_dir, dev_dir, lang, exp, cfg)
    rows = _metrics(exp)
    assert len(rows) == 35 and list(rows[0]) == ["epoch", "step", "train_loss", "dev_loss", "dev_cer", "lr", "seconds"]
    assert float(rows[-1]["train_loss"]) < 0.1
    assert _greedy_exact(exp, train_dir) == (20, 20)
    for name in (
        "config.yaml",
        "feats.yaml",
        "cmvn_global.ark",
        "tokens.txt",
        "train.log",
        "epoch-35.pt",
        "final.pt",
        "plots/training.png",
        "plots/dev_cer.png",
    ):
        assert (exp / name).is_file(), name


@pytest.mark.slow
def test_overfit_yesno(tmp_path: Path) -> None:
    from trainutil import yesno_dir

    if not (SHARED_DATA / "yesno").is_dir():
        pytest.skip(f"yesno not found under {SHARED_DATA}")
    data = yesno_dir(SHARED_DATA, tmp_path / "data", 20, stack=3, subsample=3)
    lang = lang_dir(data, tmp_path / "lang")
    cfg = _cfg(
        "model.num_layers=2",
        "model.hidden=64",
        "model.dropout=0",
        "optim.lr=0.01",
        "schedule.name=none",
        "max_epochs=80",
        "frames_per_batch=1000",
        "average=last",
        "average_n=1",
    )
    train(data, data, lang, tmp_path / "exp", cfg)
    assert float(_metrics(tmp_path / "exp")[-1]["train_loss"]) < 0.5
    assert _greedy_exact(tmp_path / "exp", data) == (20, 20)


class Killed(Exception):
    pass


# The cosine case also kills once inside the warm-up (step 3 of 5): the per-step rate must resume exactly.
COSINE = ("schedule.name=cosine", "schedule.warmup_steps=5", "schedule.min_lr=0.001")


@pytest.mark.parametrize(
    "every,kills,specaug,sched", [(1, [2, 5], False, ()), (2, [3], True, ()), (1, [3, 7], False, COSINE)]
)
def test_resume_gives_identical_weights(
    fsdd: tuple[Path, Path, Path], tmp_path: Path, every: int, kills: list[int], specaug: bool, sched: tuple[str, ...]
) -> None:
    train_dir, dev_dir, lang = fsdd
    cfg = _cfg(
        *TINY,
        "max_epochs=3",
        f"checkpoint_every={every}",
        f"specaug={str(specaug).lower()}",
        "specaug_opts.freq_width=10",
        "specaug_opts.time_width=5",
        *sched,
    )
    ref = train(train_dir, dev_dir, lang, tmp_path / "ref", cfg)
    exp = tmp_path / "exp"
    for k in kills:

        def kill(step: int, k: int = k) -> None:
            if step == k:
                raise Killed

        with pytest.raises(Killed):
            train(train_dir, dev_dir, lang, exp, cfg, on_step=kill)
        assert not (exp / "final.pt").exists()
    out = train(train_dir, dev_dir, lang, exp, cfg)
    assert (exp / "train.log").read_text().count("resuming") == len(kills)
    a, b = torch.load(ref, weights_only=True)["model"], torch.load(out, weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in _metrics(tmp_path / "ref")]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in _metrics(exp)]
    if sched:  # metrics.csv's lr is the rate of each epoch's last step: min_lr at the end of a cosine run
        assert float(_metrics(exp)[-1]["lr"]) == pytest.approx(0.001)
        assert 0.001 < float(_metrics(exp)[0]["lr"]) < 0.01


def test_warmup_rate_reaches_the_optimizer(fsdd: tuple[Path, Path, Path], tmp_path: Path) -> None:
    train_dir, dev_dir, lang = fsdd
    # A warm-up of 10**9 steps keeps every rate near 1e-11: the weights must barely move between epochs.
    cfg = _cfg(*TINY, "schedule.name=none", "schedule.warmup_steps=1000000000", "max_epochs=2")
    train(train_dir, dev_dir, lang, tmp_path / "exp", cfg)
    a, b = (torch.load(tmp_path / "exp" / f"epoch-{e}.pt", weights_only=True)["model"] for e in (1, 2))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6


def test_ddp_two_processes_match_one(fsdd: tuple[Path, Path, Path], tmp_path: Path) -> None:
    train_dir, dev_dir, lang = fsdd
    lengths = FeatsDataset(train_dir, TokenTable.load(lang), load_pipeline(train_dir)).lengths

    def same_batches(cap: int) -> bool:  # no batch of one utterance, which 2 ranks could not share
        one, two = BucketBatchSampler(lengths, cap, seed=7), BucketBatchSampler(lengths, cap, seed=7, world_size=2)
        return all(one.global_batches(e) == two.global_batches(e) for e in range(2))

    cap = next(c for c in range(100, 400, 5) if same_batches(c))
    sets = [*TINY, "model.dropout=0", "max_epochs=2", f"frames_per_batch={cap}"]
    train(train_dir, dev_dir, lang, tmp_path / "one", _cfg(*sets))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "asr.cli",
        "train",
        str(train_dir),
        str(dev_dir),
        str(lang),
        str(tmp_path / "two"),
    ]
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on 2 process(es)" in (tmp_path / "two" / "train.log").read_text()
    if importlib.util.find_spec("tensorboard"):  # rank 0 alone writes TensorBoard events
        assert len(list((tmp_path / "two" / "tensorboard").glob("events.out.tfevents.*"))) == 1
    one, two = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert len(one) == len(two) == 2
    for r1, r2 in zip(one, two, strict=True):
        for key in ("train_loss", "dev_loss"):
            assert float(r2[key]) == pytest.approx(float(r1[key]), rel=1e-4), key
        assert r1["step"] == r2["step"]


def _one_line_error(capsys: pytest.CaptureFixture, argv: list[str], match: str) -> None:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and match in err, err


def test_bad_inputs_are_one_line_errors(
    fsdd: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    train_dir, dev_dir, lang = fsdd
    exp = tmp_path / "exp"
    conf = str(ROOT / "conf" / "blstm_debug.yaml")
    args = ["train", str(train_dir), str(dev_dir), str(lang), str(exp), "--conf", conf]
    _one_line_error(capsys, [*args, "--set", "bogus=1"], "unknown key(s) bogus")
    nofeats = tmp_path / "nofeats"
    shutil.copytree(train_dir, nofeats)
    (nofeats / "feats.scp").unlink()
    _one_line_error(capsys, ["train", str(nofeats), str(dev_dir), str(lang), str(exp), "--conf", conf], "make-feats")
    other = tmp_path / "other_lang"
    (tmp_path / "text").write_text("u1 XYZ\n")
    assert main(["make-tokens", str(tmp_path / "text"), str(other)]) == 0
    _one_line_error(
        capsys, ["train", str(train_dir), str(dev_dir), str(other), str(exp), "--conf", conf], "do not cover"
    )
    assert not exp.exists()
    assert main(args) == 0
    before = {p.name: p.read_bytes() for p in exp.iterdir() if p.is_file()}
    _one_line_error(capsys, [*args, "--set", "model.hidden=8"], "incompatible config (model.hidden: 16 -> 8)")
    assert {p.name: p.read_bytes() for p in exp.iterdir() if p.is_file()} == before
    assert main(args) == 0  # finished run: nothing to do


@pytest.mark.parametrize("name", ["blstm.yaml", "blstm_debug.yaml"])
def test_shipped_configs_load(name: str) -> None:
    cfg = load_train_config(ROOT / "conf" / name)
    assert cfg.model.cell == "lstm"


def test_non_finite_loss_skips_the_step(tmp_path: Path) -> None:
    import kaldiio
    import numpy as np

    from asr.config import dump
    from asr.datadir import write_data_dir
    from asr.features import FeatureConfig

    d = tmp_path / "data"
    d.mkdir()
    rng = np.random.default_rng(0)
    frames = {f"u{i}": 20 + i for i in range(6)}
    with kaldiio.WriteHelper(f"ark,scp:{d / 'feats.ark'},{d / 'feats.scp'}") as w:
        for u, n in frames.items():
            m = rng.standard_normal((n, 4)).astype(np.float32)
            if u == "u3":
                m[5, 1] = np.nan
            w(u, m)
    write_data_dir(d, text={u: "AB" for u in frames}, utt2spk={u: "s" for u in frames}, utt2num_frames=frames)
    dump(FeatureConfig(kind="precomputed", cmvn="none"), d / "feats.yaml")
    lang = lang_dir(d, tmp_path / "lang")
    exp = tmp_path / "exp"
    train(d, d, lang, exp, _cfg(*TINY, "max_epochs=2", "frames_per_batch=50"))
    assert "non-finite loss" in (exp / "train.log").read_text()
    state = torch.load(exp / "final.pt", weights_only=True)["model"]
    assert all(torch.isfinite(v).all() for v in state.values())
