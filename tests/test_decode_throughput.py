"""Decoding throughput (issue 14): length-sorted batches equal one-at-a-time decoding, threads, --device, RTF."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA
from trainutil import fsdd_dir, lang_dir

from asr.cli import main
from asr.datadir import read_kv
from asr.decode import _plan, decode_dir, log_probs_of
from asr.decoders import DecodeConfig
from asr.errors import AsrError
from asr.modeldir import ModelDir, available_cores, cpu_threads, resolve_device

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> tuple[Path, Path]:
    """A 1x16 BiLSTM with a conv front-end (2 epochs on 20 FSDD digits), and 20 test digits of other lengths."""
    from asr.models import ModelConfig
    from asr.schedule import ScheduleConfig
    from asr.train import OptimConfig, TrainConfig, train

    if not (SHARED_DATA / "fsdd").is_dir():
        pytest.skip(f"FSDD not found under {SHARED_DATA}")
    tmp = tmp_path_factory.mktemp("throughput")
    train_dir = fsdd_dir(SHARED_DATA, tmp / "train", ["george", "jackson"], [5])
    test_dir = fsdd_dir(SHARED_DATA, tmp / "test", ["theo", "nicolas"], [7])
    cfg = TrainConfig(
        model=ModelConfig(num_layers=1, hidden=16, dropout=0.0, frontend="conv2d", frontend_channels=4),
        optim=OptimConfig(lr=0.01),
        schedule=ScheduleConfig(name="none"),
        max_epochs=2,
        frames_per_batch=2000,
    )
    train(train_dir, train_dir, lang_dir(train_dir, tmp / "lang"), tmp / "exp", cfg)
    return tmp / "exp", test_dir


def _rows(batches) -> tuple[dict[str, torch.Tensor], int, list[list[str]]]:
    rows, failed, names = {}, 0, []
    for n, lp, lens, f in batches:
        failed += f
        names.append(n)
        for i, u in enumerate(n):
            rows[u] = lp[i, : int(lens[i])]
    return rows, failed, [n for n in names if n]


def test_sorted_batches_equal_one_at_a_time(model, tmp_path):
    exp, test = model
    md = ModelDir.load(exp)
    single, _, one_each = _rows(log_probs_of(md, test, None, batch_size=1))
    frames = 300  # a few digits per batch
    batched, failed, batches = _rows(log_probs_of(md, test, None, batch_size=0, batch_frames=frames))
    assert failed == 0 and sorted(batched) == sorted(single) and len(one_each) == len(single) == 20
    assert 1 < len(batches) < len(single)
    for u, lp in single.items():
        torch.testing.assert_close(batched[u], lp, atol=1e-5, rtol=0)
    # shortest first; B x longest within the cap; rows in the data dir's order
    lens = {u: md.log_probs([x])[1] for u, x in zip(*_feats(md, test), strict=True)}
    longest = [max(int(lens[u]) for u in b) for b in batches]
    assert longest == sorted(longest)
    order = read_kv(test / "utt2spk")
    assert all(b == sorted(b, key=list(order).index) for b in batches)
    out = {}
    for name, extra in [("one", ["--batch-size", "1"]), ("sorted", ["--batch-frames", str(frames)])]:
        assert main(["decode", str(exp), str(test), "--decoder", "greedy", "-o", str(tmp_path / name), *extra]) == 0
        out[name] = (tmp_path / name / "text").read_text()
    assert out["one"] == out["sorted"]
    assert [line.split()[0] for line in out["one"].splitlines()] == list(order)  # the data dir's order


def _feats(md, data: Path) -> tuple[list[str], list[torch.Tensor]]:
    from asr.dataset import FeatsDataset

    ds = FeatsDataset(data, md.tokens, pipeline=md.pipeline_for(data), need_text=False)
    return ds.utts, [ds[i][1] for i in range(len(ds))]


def test_an_unreadable_utterance_does_not_lose_its_batch_mates(model, tmp_path, caplog):
    exp, test = model
    bad = tmp_path / "bad"
    shutil.copytree(test, bad)
    scp = (bad / "feats.scp").read_text().splitlines()
    victim = scp[3].split()[0]
    scp[3] = f"{victim} {bad}/nowhere.ark:17"
    (bad / "feats.scp").write_text("\n".join(scp) + "\n")
    md = ModelDir.load(exp)
    with caplog.at_level(logging.WARNING, logger="asr"):
        rows, failed, batches = _rows(log_probs_of(md, bad, None, batch_size=0, batch_frames=10**6))
    assert failed == 1 and len(rows) == 19 and victim not in rows and len(batches) == 1
    lines = [r.getMessage() for r in caplog.records if victim in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0] and "cannot read features" in lines[0]
    # the same from audio: one missing file, the rest of its batch decoded
    (bad / "feats.scp").unlink()
    wav = (bad / "wav.scp").read_text().splitlines()
    wav[5] = f"{wav[5].split()[0]} {tmp_path}/missing.wav"
    (bad / "wav.scp").write_text("\n".join(wav) + "\n")
    result, failed = decode_dir(exp, bad, DecodeConfig(decoder="greedy"), tmp_path / "out", device="cpu")
    assert failed == 1 and len(result) == 19 and wav[5].split()[0] not in result


def test_a_batch_the_model_fails_on_goes_one_at_a_time(model, monkeypatch):
    exp, test = model
    md = ModelDir.load(exp)
    victim = read_kv(test / "utt2spk").popitem()[0]
    real = md.log_probs

    def flaky(feats):
        if any(f.shape == victim_shape for f in feats):
            raise RuntimeError("CUDA out of memory\nmore")
        return real(feats)

    utts, feats = _feats(md, test)
    victim_shape = feats[utts.index(victim)].shape
    monkeypatch.setattr(md, "log_probs", flaky)
    rows, failed, _ = _rows(log_probs_of(md, test, None, batch_size=0, batch_frames=10**6))
    same = sum(f.shape == victim_shape for f in feats)
    assert failed == same and len(rows) == 20 - same and victim not in rows


def test_threads_devices_and_the_log_line(model, tmp_path, caplog, monkeypatch):
    exp, test = model
    cores = available_cores()
    assert _plan("cpu", 1, 0, 10)[1:] == (1, cores)
    assert _plan("cpu", 2, 0, 10)[1:] == (2, max(1, cores // 2))
    assert _plan("cpu", 64, 0, 3)[1:] == (3, 1) and _plan("cpu", 1, 3, 10)[2] == 3
    before = torch.get_num_threads()
    with cpu_threads(cores + 1):
        assert torch.get_num_threads() == cores + 1
    assert torch.get_num_threads() == before
    with caplog.at_level(logging.INFO, logger="asr"):
        assert main(["decode", str(exp), str(test), "--decoder", "greedy", "-o", str(tmp_path / "d")]) == 0
    line = [r.getMessage() for r in caplog.records if r.getMessage().startswith("decoded ")][-1]
    assert "20 utterance(s)" in line and "utt/s" in line and "RTF 0." in line and f"1 x {cores} threads" in line
    assert torch.get_num_threads() == before  # decoding in this process leaves its thread count alone
    stats: dict = {}
    decode_dir(exp, test, DecodeConfig(decoder="greedy"), tmp_path / "e", device="cpu", stats=stats)
    wavs = read_kv(test / "wav.scp").values()
    import soundfile as sf

    audio = sum(sf.info(w).duration for w in wavs)
    assert abs(stats["audio_s"] - audio) < 0.03 * len(wavs)
    # a GPU asked for and none here, in a pool of processes: one process, said in one line
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with caplog.at_level(logging.INFO, logger="asr"):
        assert _plan("cuda", 4, 0, 10)[1:] == (1, cores)
    assert "one process decodes (--nj 4 ignored" in caplog.text


@NO_GPU
def test_device_cuda_without_a_gpu_is_one_line(model, tmp_path, capsys):
    exp, test = model
    with pytest.raises(AsrError, match="no CUDA GPU"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")
    for argv in (["decode", str(exp), str(test), "-o", str(tmp_path / "x")],
                 ["transcribe", str(exp), str(SHARED_DATA / "fsdd" / "recordings" / "3_theo_9.wav")]):
        for device in ("cuda", "gpu0"):
            assert main([*argv, "--device", device]) == 1
            err = capsys.readouterr().err.strip()
            assert "\n" not in err and f"--device {device}" in err, err
    assert not (tmp_path / "x").exists()
    wav = str(SHARED_DATA / "fsdd" / "recordings" / "3_theo_9.wav")
    assert main(["transcribe", str(exp), wav, "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith(wav)
