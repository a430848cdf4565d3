"""CMVN: Kaldi stats layout, kaldiio round trips, zero mean / unit variance per speaker on real data."""

from __future__ import annotations

from pathlib import Path

import kaldiio
import numpy as np
import pytest
import torch

from asr.cli import main
from asr.cmvn import (
    Cmvn,
    accumulate,
    apply_cmvn,
    compute_cmvn,
    mean_scale,
    read_stats,
    utterance_cmvn,
    write_stats_ark,
)
from asr.datadir import DataDir, write_data_dir
from asr.errors import AsrError
from asr.features import FeaturePipeline, read_feature_config

torch.set_num_threads(1)


def fsdd_dir(shared: Path, dst: Path, per_speaker: int, speakers=("george", "jackson")) -> Path:
    rec = shared / "fsdd" / "recordings"
    files = [f for spk in speakers for f in sorted(rec.glob(f"*_{spk}_1*.wav"))[:per_speaker]]
    utt = {f"{f.stem.split('_')[1]}-{f.stem}": f for f in files}
    return write_data_dir(dst, wav_scp={u: str(f) for u, f in utt.items()},
                          utt2spk={u: u.split("-")[0] for u in utt}, text={u: "X" for u in utt})


def test_stats_layout_is_kaldis():
    x = np.array([[1.0, 2.0], [3.0, 6.0], [5.0, 10.0]])
    stats = accumulate(x)
    assert stats.dtype == np.float64 and stats.shape == (2, 3)
    assert stats.tolist() == [[9.0, 18.0, 3.0], [35.0, 140.0, 0.0]]
    stats = accumulate(torch.tensor(x[:1]), stats)  # additive
    assert stats[0, 2] == 4 and stats[0, 0] == 10
    with pytest.raises(AsrError, match="do not fit"):
        accumulate(np.zeros((2, 5)), stats)


def test_apply_is_kaldis_formula():
    x = torch.randn(50, 3, dtype=torch.float64) * torch.tensor([1.0, 5.0, 0.1]) + torch.tensor([3.0, -2.0, 7.0])
    stats = accumulate(x)
    mean = x.mean(0)
    var = (x * x).mean(0) - mean**2
    ref = (x - mean) / var.sqrt()
    assert torch.allclose(apply_cmvn(x, stats), ref.float(), atol=1e-5)
    assert torch.allclose(apply_cmvn(x, stats, norm_vars=False), (x - mean).float(), atol=1e-5)
    # a constant dimension has its variance floored, not divided by zero
    c = torch.ones(10, 2)
    assert torch.isfinite(apply_cmvn(c, accumulate(c))).all()
    y = utterance_cmvn(x.float())
    assert torch.allclose(y.mean(0), torch.zeros(3), atol=1e-5)
    assert torch.allclose(y.std(0, unbiased=False), torch.ones(3), atol=1e-4)
    m, s = mean_scale(stats)
    assert m.dtype == torch.float32 and s.shape == (3,)


def test_stats_ark_round_trip_through_kaldiio(tmp_path):
    stats = {"spkB": accumulate(np.random.rand(5, 4)), "spkA": accumulate(np.random.rand(7, 4))}
    write_stats_ark(tmp_path / "cmvn.ark", stats, scp=tmp_path / "cmvn.scp")
    loaded = kaldiio.load_scp(str(tmp_path / "cmvn.scp"))
    assert list(loaded) == ["spkA", "spkB"]
    for k, v in stats.items():
        assert loaded[k].dtype == np.float64 and np.array_equal(loaded[k], v)
    write_stats_ark(tmp_path / "g.ark", {"global": stats["spkA"]})
    assert np.array_equal(read_stats(tmp_path / "g.ark"), stats["spkA"])
    assert not list(tmp_path.glob(".*tmp"))


def test_per_speaker_cmvn_gives_zero_mean_unit_variance(shared_data, tmp_path):
    d = fsdd_dir(shared_data, tmp_path / "d", per_speaker=4, speakers=("george", "jackson", "theo"))
    assert main(["make-feats", str(d), "--nj", "2", "--no-progress"]) == 0
    assert main(["compute-cmvn", str(d), "--per-speaker"]) == 0
    cmvn = Cmvn.load(d)
    data = DataDir.load(d)
    assert sorted(cmvn.speaker_stats) == ["george", "jackson", "theo"]
    assert np.allclose(cmvn.global_stats, sum(cmvn.speaker_stats.values()))
    assert cmvn.global_stats[0, -1] == sum(data.utt2num_frames.values())
    cfg = read_feature_config(d)
    cfg.cmvn = "speaker"
    pipe = FeaturePipeline(cfg, cmvn)
    feats = kaldiio.load_scp(str(d / "feats.scp"))
    for spk, utts in data.spk2utt.items():
        y = torch.cat([pipe(feats[u], spk) for u in utts]).double()
        assert torch.allclose(y.mean(0), torch.zeros(80, dtype=torch.float64), atol=1e-4), spk
        assert torch.allclose(y.std(0, unbiased=False), torch.ones(80, dtype=torch.float64), atol=1e-3), spk
    # global mode: zero mean / unit variance over the whole set
    cfg.cmvn = "global"
    y = torch.cat([FeaturePipeline(cfg, Cmvn.load(d))(feats[u]) for u in data.utts]).double()
    assert torch.allclose(y.mean(0), torch.zeros(80, dtype=torch.float64), atol=1e-4)
    assert torch.allclose(y.std(0, unbiased=False), torch.ones(80, dtype=torch.float64), atol=1e-3)


def test_unknown_speaker_is_an_error_not_a_fallback_to_global_stats():
    g, a = accumulate(np.random.rand(9, 2)), accumulate(np.random.rand(4, 2) + 5)
    cmvn = Cmvn(global_stats=g, speaker_stats={"a": a})
    assert cmvn.stats_for("a") is a and cmvn.stats_for(None) is g
    with pytest.raises(AsrError, match="no CMVN stats for speaker new"):
        cmvn.stats_for("new")
    assert cmvn.dim == 2


def test_global_only_and_errors(shared_data, tmp_path, capsys):
    d = fsdd_dir(shared_data, tmp_path / "d", per_speaker=2)
    with pytest.raises(AsrError, match="compute-cmvn"):
        Cmvn.load(d)
    assert main(["compute-cmvn", str(d)]) == 1
    assert "feats.scp: no such file" in capsys.readouterr().err
    assert main(["make-feats", str(d), "--no-progress"]) == 0
    cmvn = compute_cmvn(d)
    assert (d / "cmvn_global.ark").is_file() and not (d / "cmvn.scp").exists()
    assert Cmvn.load(d).speaker_stats == {} and np.array_equal(Cmvn.load(d).global_stats, cmvn.global_stats)
