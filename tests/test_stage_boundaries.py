"""Options that cross a stage boundary behave the same on both sides: train -> model dir -> decode/transcribe.

Each test here failed on an earlier main where the two sides disagreed silently (issue 11): CMVN
computed one way in training and another in decoding, decoding that read the reference, ``average:
none``, SpecAugment after stacking, checkpoints that could run code.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, SHARED_DATA
from trainutil import fsdd_dir, lang_dir

from asr.audio import AudioSource, read_audio
from asr.checkpoint import choose_epochs
from asr.cli import main
from asr.cmvn import Cmvn, apply_cmvn, utterance_cmvn
from asr.config import apply_overrides, from_dict, read_yaml
from asr.datadir import read_kv
from asr.dataset import FeatsDataset
from asr.decode import decode_dir, log_probs_of
from asr.decoders import DecodeConfig
from asr.errors import AsrError
from asr.features import SPEAKER_PRIOR_FRAMES, FeatureConfig, FeaturePipeline, compute_features, stack_frames
from asr.modeldir import ModelDir
from asr.train import TrainConfig, train
from asr.transcribe import Transcriber

TINY = ["model.num_layers=1", "model.hidden=16", "frames_per_batch=400", "seed=3", "schedule.name=none"]


def _cfg(*overrides: str) -> TrainConfig:
    return from_dict(TrainConfig, apply_overrides({}, [*TINY, *overrides]))


@pytest.fixture(scope="module")
def speaker_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A model trained with per-speaker CMVN on two FSDD speakers, and a test dir of two other speakers."""
    if not (SHARED_DATA / "fsdd").is_dir():
        pytest.skip(f"FSDD not found under {SHARED_DATA}")
    tmp = tmp_path_factory.mktemp("spk")
    feats = dict(cmvn="speaker", stack=2, subsample=2)
    train_dir = fsdd_dir(SHARED_DATA, tmp / "train", ["george", "jackson"], [5], **feats)
    test_dir = fsdd_dir(SHARED_DATA, tmp / "test", ["theo", "nicolas"], [7], digits=[1, 2, 3], **feats)
    lang = lang_dir(train_dir, tmp / "lang")
    exp = tmp / "exp"
    train(train_dir, train_dir, lang, exp, _cfg("max_epochs=1", "average=last", "average_n=1"))
    return exp, test_dir, train_dir


def test_speaker_cmvn_decodes_with_the_test_sets_own_speaker_stats(speaker_model) -> None:
    exp, test_dir, train_dir = speaker_model
    assert read_yaml(exp / "feats.yaml")["cmvn"] == "speaker"  # the model dir records its normalisation
    md = ModelDir.load(exp)
    own = Cmvn.load(test_dir, per_speaker=True)
    ds = FeatsDataset(test_dir, md.tokens, pipeline=None, need_text=False)
    names, lp, lens, failed = next(log_probs_of(md, test_dir, None, batch_size=100))
    assert failed == 0 and names == ds.utts
    expected = [
        stack_frames(apply_cmvn(torch.from_numpy(np.array(ds._read(u))), own.speaker_stats[ds.utt2spk[u]]), 2, 2)
        for u in names
    ]
    want_lp, want_lens = md.log_probs(expected)
    assert torch.equal(lens, want_lens)
    torch.testing.assert_close(lp, want_lp)
    # ... and not with the training set's global stats, which is what decoding did before.
    glob = Cmvn.load(train_dir).global_stats
    wrong = [stack_frames(apply_cmvn(torch.from_numpy(np.array(ds._read(u))), glob), 2, 2) for u in names]
    assert not torch.allclose(md.log_probs(wrong)[0], lp, atol=1e-3)


def test_speaker_cmvn_without_cmvn_scp_or_features_gives_the_same_hypotheses(speaker_model, tmp_path) -> None:
    # A dir without cmvn.scp, or with audio only, gets each speaker's stats computed in memory: the same
    # normalisation as 'compute-cmvn --per-speaker', and nothing is written into the dir.
    exp, test_dir, _ = speaker_model
    assert main(["decode", str(exp), str(test_dir), "--decoder", "greedy", "-o", str(tmp_path / "ref")]) == 0
    want = (tmp_path / "ref" / "text").read_text()
    bare = tmp_path / "bare"
    shutil.copytree(test_dir, bare)
    for name in ("cmvn.scp", "cmvn.ark"):
        (bare / name).unlink()
    audio = tmp_path / "audio"
    audio.mkdir()
    for name in ("wav.scp", "utt2spk", "spk2utt", "text"):
        shutil.copy(test_dir / name, audio / name)
    for d in (bare, audio):
        before = sorted(p.name for p in d.iterdir())
        assert main(["decode", str(exp), str(d), "--decoder", "greedy", "-o", str(tmp_path / f"{d.name}.out")]) == 0
        assert (tmp_path / f"{d.name}.out" / "text").read_text() == want, d.name
        assert sorted(p.name for p in d.iterdir()) == before
    # Features from the audio, normalised with stats from the audio: the stored features' log-probs.
    names, lp, lens, _ = next(log_probs_of(ModelDir.load(exp), audio, None, batch_size=100))
    ref_names, ref_lp, ref_lens, _ = next(log_probs_of(ModelDir.load(exp), test_dir, None, batch_size=100))
    assert names == ref_names and torch.equal(lens, ref_lens)
    torch.testing.assert_close(lp, ref_lp, atol=1e-4, rtol=1e-4)


def test_a_speaker_of_one_utterance_is_decoded_as_transcribe_does_a_loose_file(speaker_model, tmp_path) -> None:
    # utt2spk mapping each utterance to itself (speaker unknown): decode gives transcribe's file-by-file text.
    exp, test_dir, _ = speaker_model
    d = tmp_path / "alone"
    shutil.copytree(test_dir, d)
    utts = sorted(read_kv(d / "utt2spk"))
    (d / "utt2spk").write_text("".join(f"{u} {u}\n" for u in utts))
    (d / "spk2utt").write_text("".join(f"{u} {u}\n" for u in utts))
    assert main(["compute-cmvn", str(d), "--per-speaker"]) == 0
    assert main(["decode", str(exp), str(d), "--decoder", "greedy", "-o", str(tmp_path / "dec")]) == 0
    assert main(["transcribe", str(exp), str(d / "wav.scp"), "--decoder", "greedy", "-o", str(tmp_path / "tr")]) == 0
    assert read_kv(tmp_path / "dec" / "text") == read_kv(tmp_path / "tr")
    names, lp, lens, _ = next(log_probs_of(ModelDir.load(exp), d, None, batch_size=100))
    tr = Transcriber(exp, progress=False)
    wavs = read_kv(d / "wav.scp")
    for i, u in enumerate(names):
        torch.testing.assert_close(tr.posteriors(AudioSource.open(wavs[u], 8000)), lp[i, : lens[i]])
    # ... where the speakers' own per-utterance stats (no prior) give other posteriors.
    own = Cmvn.load(d, per_speaker=True)
    ds = FeatsDataset(d, ModelDir.load(exp).tokens, pipeline=None, need_text=False)
    x = stack_frames(apply_cmvn(torch.from_numpy(np.array(ds._read(names[0]))), own.speaker_stats[names[0]]), 2, 2)
    assert not torch.allclose(ModelDir.load(exp).log_probs([x])[0][0], lp[0, : lens[0]], atol=1e-3)


def test_speaker_cmvn_transcribe_of_a_loose_file_uses_its_own_stats_with_the_global_prior(speaker_model) -> None:
    exp, _, train_dir = speaker_model
    md = ModelDir.load(exp)
    wave = read_audio(str(SHARED_DATA / "fsdd" / "recordings" / "4_yweweler_9.wav"), 8000)
    raw = compute_features(wave, md.feature_config)
    glob = Cmvn.load(train_dir).global_stats  # the training set's, which the model dir keeps
    prior = glob * (SPEAKER_PRIOR_FRAMES / glob[0, -1])
    own = np.zeros_like(glob)
    own[0, :-1], own[0, -1], own[1, :-1] = raw.double().sum(0).numpy(), raw.shape[0], raw.double().pow(2).sum(0).numpy()
    torch.testing.assert_close(md.features(wave), stack_frames(apply_cmvn(raw, own + prior), 2, 2))
    assert not torch.allclose(md.features(wave), stack_frames(utterance_cmvn(raw), 2, 2), atol=1e-3)


def test_one_speaker_transcribe_matches_decode_with_that_speakers_stats(speaker_model, tmp_path, capsys) -> None:
    exp, _, _ = speaker_model
    one = fsdd_dir(SHARED_DATA, tmp_path / "theo", ["theo"], [7], digits=[1, 2, 3], cmvn="speaker", stack=2,
                   subsample=2)
    names, lp, lens, _ = next(log_probs_of(ModelDir.load(exp), one, None, batch_size=100))
    wavs = read_kv(one / "wav.scp")
    sources = [AudioSource.open(wavs[u], 8000) for u in names]
    tr = Transcriber(exp, progress=False)
    alone = tr.posteriors(sources[0])  # no speaker known: the file's own stats
    assert tr.use_speaker_stats(sources) == int(Cmvn.load(one, per_speaker=True).speaker_stats["theo"][0, -1])
    for i, src in enumerate(sources):
        torch.testing.assert_close(tr.posteriors(src), lp[i, : lens[i]])
    assert not torch.allclose(alone, lp[0, : lens[0]], atol=1e-3)
    # The command line: the same words as 'asr decode' of the data dir.
    assert main(["decode", str(exp), str(one), "--decoder", "greedy", "-o", str(tmp_path / "dec")]) == 0
    out = tmp_path / "tr.txt"
    assert main(["transcribe", str(exp), str(one / "wav.scp"), "--one-speaker", "--decoder", "greedy",
                 "-o", str(out)]) == 0
    assert sorted(out.read_text().splitlines()) == sorted((tmp_path / "dec" / "text").read_text().splitlines())


def test_one_speaker_with_a_global_cmvn_model_is_one_clear_error(tmp_path, capsys) -> None:
    if not (SHARED_DATA / "fsdd").is_dir():
        pytest.skip(f"FSDD not found under {SHARED_DATA}")
    data = fsdd_dir(SHARED_DATA, tmp_path / "d", ["theo"], [7], digits=[1, 2])
    train(data, data, lang_dir(data, tmp_path / "lang"), tmp_path / "exp", _cfg("max_epochs=1", "average=last"))
    assert main(["transcribe", str(tmp_path / "exp"), str(data / "wav.scp"), "--one-speaker"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "cmvn: global" in err and "cmvn: speaker" in err, err


def test_decoding_never_reads_the_reference(speaker_model, tmp_path) -> None:
    exp, test_dir, _ = speaker_model
    d = tmp_path / "test"
    shutil.copytree(test_dir, d)
    utts = (d / "utt2spk").read_text().split("\n")
    first = utts[0].split()[0]
    # A reference far too long for its frames (it used to drop the utterance, scored as deletions) ...
    lines = (d / "text").read_text().splitlines()
    lines[0] = f"{first} " + " ".join(["SEVEN"] * 200)
    (d / "text").write_text("\n".join(lines) + "\n")
    with_text, _ = decode_dir(exp, d, DecodeConfig(decoder="greedy"), tmp_path / "a")
    # ... and no reference at all, or an unreadable one, give the same hypotheses.
    (d / "text").write_bytes(b"\xff\xfe not utf-8\n")
    broken, _ = decode_dir(exp, d, DecodeConfig(decoder="greedy"), tmp_path / "b")
    (d / "text").unlink()
    without, _ = decode_dir(exp, d, DecodeConfig(decoder="greedy"), tmp_path / "c")
    assert first in with_text and len(with_text) == len(test_dir.joinpath("utt2spk").read_text().splitlines())
    assert with_text == broken == without
    assert (tmp_path / "a" / "text").read_text() == (tmp_path / "c" / "text").read_text()


def test_average_none_takes_the_last_epoch(tmp_path) -> None:
    history = [{"epoch": e, "dev_cer": c, "dev_loss": c} for e, c in [(1, 50.0), (2, 10.0), (3, 30.0)]]
    assert choose_epochs(history, "none", 3, "dev_cer") == [3]
    assert choose_epochs(history, "last", 2, "dev_cer") == [2, 3]
    assert choose_epochs(history, "best", 2, "dev_cer") == [2, 3]
    assert choose_epochs(history, "best", 1, "dev_loss") == [2]
    if not (SHARED_DATA / "fsdd").is_dir():
        pytest.skip(f"FSDD not found under {SHARED_DATA}")
    data = fsdd_dir(SHARED_DATA, tmp_path / "data", ["george"], [5], stack=3, subsample=3)
    lang = lang_dir(data, tmp_path / "lang")
    exp = tmp_path / "exp"
    train(data, data, lang, exp, _cfg("max_epochs=2", "average=none"))
    final = torch.load(exp / "final.pt", weights_only=True)
    last = torch.load(exp / "epoch-2.pt", weights_only=True)["model"]
    first = torch.load(exp / "epoch-1.pt", weights_only=True)["model"]
    assert final["averaged_epochs"] == [2]
    assert all(torch.equal(final["model"][k], last[k]) for k in last)
    assert not all(torch.equal(final["model"][k], first[k]) for k in first)


def test_specaugment_masks_bins_before_stacking() -> None:
    cfg = FeatureConfig(kind="precomputed", cmvn="none", stack=3, subsample=3)
    x = torch.randn(30, 8) + 5.0

    def mask_bins_2_to_4(f: torch.Tensor) -> torch.Tensor:
        assert f.shape == (30, 8)  # sees input frames and stored bins, not stacked ones
        f = f.clone()
        f[:, 2:5] = 0.0
        f[6:9] = 0.0  # three input frames = exactly one output frame
        return f

    y = FeaturePipeline(cfg)(x, augment=mask_bins_2_to_4).reshape(10, 3, 8)
    assert (y[:, :, 2:5] == 0).all()  # the same mel bins in every stacked sub-frame
    others = [j for j in range(10) if j != 2]
    assert (y[others][:, :, [0, 1, 5, 6, 7]] != 0).all()
    assert (y[2] == 0).all()  # the three masked input frames are one whole output frame


def test_train_applies_specaugment_to_unstacked_frames(tmp_path, monkeypatch) -> None:
    import asr.augment
    import asr.train

    if not (SHARED_DATA / "fsdd").is_dir():
        pytest.skip(f"FSDD not found under {SHARED_DATA}")
    data = fsdd_dir(SHARED_DATA, tmp_path / "data", ["george"], [5], stack=3, subsample=3)
    lang = lang_dir(data, tmp_path / "lang")
    frames = dict(line.split() for line in (data / "utt2num_frames").read_text().splitlines())
    seen: list[tuple[int, int]] = []
    real = asr.augment.spec_augment

    def spy(x, lengths=None, cfg=None, generator=None):
        seen.append(tuple(x.shape))
        return real(x, lengths, cfg, generator)

    warped: list[tuple[int, int]] = []
    real_warp = asr.augment.freq_warp

    def spy_warp(x, *args, **kw):
        warped.append(tuple(x.shape))
        return real_warp(x, *args, **kw)

    monkeypatch.setattr(asr.augment, "spec_augment", spy)
    monkeypatch.setattr(asr.augment, "freq_warp", spy_warp)
    conf = [str(ROOT / "conf" / "blstm_debug.yaml"), str(ROOT / "conf" / "specaug.yaml")]
    cfg = asr.train.load_train_config(conf, [*TINY, "max_epochs=1", "specaug_opts.freq_width=5", "vtlp.enabled=true"])
    train(data, data, lang, tmp_path / "exp", cfg)
    assert len(seen) == len(frames)  # once per training utterance, none for dev
    assert {d for _, d in seen} == {23}  # the stored 23 mel bins, not 3 x 23 stacked
    assert sorted(n for n, _ in seen) == sorted(int(n) for n in frames.values())  # input frames
    assert sorted(warped) == sorted(seen)  # VTLP warps the same unstacked frames, first


def test_vtlp_on_mfcc_features_is_one_clear_error(tmp_path, capsys) -> None:
    if not (SHARED_DATA / "fsdd").is_dir():
        pytest.skip(f"FSDD not found under {SHARED_DATA}")
    data = fsdd_dir(SHARED_DATA, tmp_path / "data", ["george"], [5], digits=[1, 2], kind="mfcc")
    lang = lang_dir(data, tmp_path / "lang")
    sets = [x for s in [*TINY, "max_epochs=1", "vtlp.enabled=true"] for x in ("--set", s)]
    assert main(["train", str(data), str(data), str(lang), str(tmp_path / "exp"), *sets]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "mfcc" in err.lower(), err
    assert not (tmp_path / "exp").exists()


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['ASR_EVIL_MARKER']}",))


def test_a_malicious_checkpoint_is_refused_in_one_line(speaker_model, tmp_path, monkeypatch, capsys) -> None:
    exp, test_dir, _ = speaker_model
    bad = tmp_path / "exp"
    shutil.copytree(exp, bad)
    marker = tmp_path / "pwned"
    monkeypatch.setenv("ASR_EVIL_MARKER", str(marker))
    ckpt = torch.load(bad / "final.pt", weights_only=True)
    ckpt["payload"] = _Evil()
    torch.save(ckpt, bad / "final.pt")
    with pytest.raises(AsrError, match="refused"):
        ModelDir.load(bad)
    assert main(["decode", str(bad), str(test_dir), "--decoder", "greedy", "-o", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "final.pt" in err and "refused" in err, err
    assert not marker.exists()


def test_a_second_writer_of_a_model_or_data_dir_is_refused(tmp_path, capsys) -> None:
    from asr.lock import hold

    if not (SHARED_DATA / "fsdd").is_dir():
        pytest.skip(f"FSDD not found under {SHARED_DATA}")
    data = fsdd_dir(SHARED_DATA, tmp_path / "data", ["george"], [5], digits=[1, 2])
    lang = lang_dir(data, tmp_path / "lang")
    exp = tmp_path / "exp"
    exp.mkdir()
    sets = [x for s in [*TINY, "max_epochs=1"] for x in ("--set", s)]
    with hold(exp, "asr train"):  # as if another 'asr train' were running on exp
        assert main(["train", str(data), str(data), str(lang), str(exp), *sets]) == 1
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and f"another 'asr train' (pid {os.getpid()})" in err, err
        assert not (exp / "config.yaml").exists()
    with hold(data, "asr make-feats"):
        assert main(["compute-cmvn", str(data)]) == 1
        assert "another 'asr make-feats'" in capsys.readouterr().err
    assert main(["train", str(data), str(data), str(lang), str(exp), *sets]) == 0
    assert (exp / "final.pt").is_file() and not (exp / ".lock").exists()


def test_loose_cmvn_trains_on_what_transcribe_feeds_a_loose_file(speaker_model, tmp_path, capsys) -> None:
    from asr.train import _datasets

    exp, _, train_dir = speaker_model
    md = ModelDir.load(exp)  # its pipeline: the training set's global stats, for files with no speaker
    wavs = read_kv(train_dir / "wav.scp")
    torch.manual_seed(0)
    loose, _ = _datasets(_cfg("loose_cmvn=1.0"), train_dir, train_dir, exp)
    plain, _ = _datasets(_cfg(), train_dir, train_dir, exp)
    for i in range(4):
        u, x, _ = loose[i]
        want = md.features(read_audio(wavs[u], 8000))
        torch.testing.assert_close(x, want, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(x, plain[i][1], atol=1e-3)  # the speaker's stats would differ
    torch.manual_seed(0)
    half, _ = _datasets(_cfg("loose_cmvn=0.5"), train_dir, train_dir, exp)
    same = [torch.equal(half[i][1], plain[i][1]) for _ in range(3) for i in range(len(half))]
    assert 0.25 * len(same) < sum(same) < 0.75 * len(same)  # about half keep their speaker's stats
    # Training with it runs; a model whose features are not normalised per speaker refuses it in one line.
    train(train_dir, train_dir, exp.parent / "lang", tmp_path / "exp", _cfg("loose_cmvn=0.5", "max_epochs=1"))
    glob = fsdd_dir(SHARED_DATA, tmp_path / "g", ["theo"], [7], digits=[1, 2])
    assert main(["train", str(glob), str(glob), str(lang_dir(glob, tmp_path / "lang")), str(tmp_path / "e2"),
                 "--set", "loose_cmvn=0.5", "--set", "max_epochs=1"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "loose_cmvn" in err and "cmvn: global" in err, err
