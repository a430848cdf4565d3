"""Unsupervised speaker adaptation (decoder config ``adapt_epochs``): selection, fine-tuning, per-speaker passes."""

from __future__ import annotations

import math
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA
from trainutil import fsdd_dir, lang_dir

import asr.adapt
from asr.adapt import confidence, fine_tune, first_pass_config
from asr.cli import main
from asr.config import apply_overrides, from_dict, read_yaml
from asr.datadir import read_kv
from asr.datadir_ops import subset_data_dir
from asr.decode import ModelInputs, decode_dir
from asr.decoders import DecodeConfig
from asr.errors import AsrError
from asr.modeldir import ModelDir
from asr.train import TrainConfig, train


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A per-speaker-CMVN model briefly trained on two FSDD speakers; a test dir of two others, 10 digits each."""
    if not (SHARED_DATA / "fsdd").is_dir():
        pytest.skip(f"FSDD not found under {SHARED_DATA}")
    tmp = tmp_path_factory.mktemp("adapt")
    feats = dict(cmvn="speaker", stack=2, subsample=2)
    train_dir = fsdd_dir(SHARED_DATA, tmp / "train", ["george", "jackson"], [5, 6], **feats)
    test_dir = fsdd_dir(SHARED_DATA, tmp / "test", ["theo", "nicolas"], [7, 8], digits=[0, 1, 2, 3, 4], **feats)
    over = ["model.num_layers=1", "model.hidden=16", "frames_per_batch=400", "seed=3", "schedule.name=none",
            "max_epochs=2", "average=last", "average_n=1"]
    cfg = from_dict(TrainConfig, apply_overrides({}, over))
    train(train_dir, train_dir, lang_dir(train_dir, tmp / "lang"), tmp / "exp", cfg)
    return tmp / "exp", test_dir


def test_confidence_is_the_best_hypothesis_share_of_the_nbest_mass() -> None:
    assert confidence([(["ONE"], 0.0), (["ON"], -math.log(3))]) == pytest.approx(0.75)
    assert confidence([(["ONE"], -7.0)]) == 1.0
    assert confidence([(["A"], -1.0), (["B"], -1.0), (["C"], -1.0), (["D"], -1.0)]) == pytest.approx(0.25)


def test_the_first_pass_keeps_the_decoders_lm_and_an_nbest() -> None:
    beam = first_pass_config(DecodeConfig(decoder="beam", lm="lm.arpa", alpha=0.7, adapt_epochs=5))
    assert (beam.decoder, beam.lm, beam.alpha, beam.nbest, beam.adapt_epochs) == ("beam", "lm.arpa", 0.7, 8, 0)
    greedy = first_pass_config(DecodeConfig(decoder="greedy", adapt_epochs=5))
    assert (greedy.decoder, greedy.lm, greedy.nbest) == ("beam", None, 8)
    with pytest.raises(AsrError, match="wfst"):
        first_pass_config(DecodeConfig(decoder="wfst", adapt_epochs=5))
    with pytest.raises(ValueError, match="adapt_min_conf"):
        DecodeConfig(adapt_min_conf=1.5)


def test_fine_tuning_fits_its_labels_on_a_copy_and_repeats_exactly(model) -> None:
    exp, test_dir = model
    md = ModelDir.load(exp)
    src = ModelInputs(md, test_dir)
    text = read_kv(test_dir / "text")
    utts = sorted(text)[:10]
    inputs = [src.read(u)[0] for u in utts]
    targets = [md.tokens.encode(text[u]) for u in utts]
    before = {k: v.clone() for k, v in md.model.state_dict().items()}
    net, first, last = fine_tune(md.model, inputs, targets, 10, 1e-2, 400, 5.0, seed=1)
    assert last < 0.8 * first  # the labels it was tuned on became more likely
    assert all(torch.equal(v, md.model.state_dict()[k]) for k, v in before.items())  # the model is untouched
    assert not net.training
    again, _, last2 = fine_tune(md.model, inputs, targets, 10, 1e-2, 400, 5.0, seed=1)
    assert last2 == last
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in net.state_dict().items())


def test_each_speaker_is_adapted_alone_and_without_the_reference(model, tmp_path) -> None:
    exp, test_dir = model
    cfg = DecodeConfig(decoder="greedy", adapt_epochs=3, adapt_lr=3e-3, adapt_min_conf=0.0)
    both, _ = decode_dir(exp, test_dir, cfg, tmp_path / "both")
    plain, _ = decode_dir(exp, test_dir, DecodeConfig(decoder="greedy"), tmp_path / "plain")
    assert sorted(both) == sorted(plain)
    assert any(both[u][0][1] != plain[u][0][1] for u in both)  # the second pass ran adapted models
    utt2spk = read_kv(test_dir / "utt2spk")
    theo = subset_data_dir(test_dir, tmp_path / "theo", [u for u, s in utt2spk.items() if s == "theo"])
    (theo / "text").unlink()  # the labels are the first pass's own hypotheses
    alone, _ = decode_dir(exp, theo, cfg, tmp_path / "alone")
    assert alone and alone == {u: both[u] for u in alone}
    assert read_yaml(tmp_path / "both" / "decode.yaml")["adapt_epochs"] == 3


@pytest.mark.parametrize("plain_cfg", [DecodeConfig(decoder="beam", beam=4, nbest=2), DecodeConfig(decoder="greedy")])
def test_a_speaker_with_too_few_confident_utterances_keeps_the_model(model, tmp_path, monkeypatch, plain_cfg) -> None:
    # A beam decode reuses the first pass's (longer) n-best for such a speaker; greedy decodes again.
    exp, test_dir = model
    monkeypatch.setattr(asr.adapt, "MIN_UTTS", 10**6)
    cfg = replace(plain_cfg, adapt_epochs=3)
    kept, _ = decode_dir(exp, test_dir, cfg, tmp_path / "kept")
    plain, _ = decode_dir(exp, test_dir, plain_cfg, tmp_path / "plain")
    assert kept == plain
    assert (tmp_path / "kept" / "text").read_text() == (tmp_path / "plain" / "text").read_text()


def test_the_cli_takes_adaptation_from_set_and_refuses_bad_values_in_one_line(model, tmp_path, capsys) -> None:
    exp, test_dir = model
    d = tmp_path / "test"
    shutil.copytree(test_dir, d, symlinks=True)
    out = tmp_path / "out"
    assert main(["decode", str(exp), str(d), "--decoder", "greedy", "--set", "adapt_epochs=1", "-o", str(out)]) == 0
    assert len(read_kv(out / "text")) == len(read_kv(d / "utt2spk"))
    capsys.readouterr()
    assert main(["decode", str(exp), str(d), "--decoder", "greedy", "--set", "adapt_min_conf=2", "-o", str(out)]) != 0
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "adapt_min_conf" in err, err


def test_commands_that_cannot_adapt_refuse_it_instead_of_ignoring_it(model, tmp_path, capsys) -> None:
    exp, test_dir = model
    wav = next(iter(read_kv(test_dir / "wav.scp").values()))
    capsys.readouterr()
    assert main(["transcribe", str(exp), wav, "--set", "adapt_epochs=2"]) != 0
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "adapt_epochs" in err and "asr decode" in err, err
    assert main(["tune-lm", str(exp), str(test_dir), "--lm", str(tmp_path / "lm.arpa"), "--set", "adapt_epochs=2"]) != 0
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "adapt_epochs" in err, err


def test_one_speaker_transcribe_adapts_as_decode_does_for_that_speaker(model, tmp_path, capsys) -> None:
    exp, test_dir = model
    utt2spk = read_kv(test_dir / "utt2spk")
    theo = subset_data_dir(test_dir, tmp_path / "theo", [u for u, s in utt2spk.items() if s == "theo"])
    sets = ["--set", "adapt_epochs=3", "--set", "adapt_lr=3e-3", "--set", "adapt_min_conf=0"]
    assert main(["decode", str(exp), str(theo), "--decoder", "greedy", *sets, "-o", str(tmp_path / "dec")]) == 0
    assert main(["decode", str(exp), str(theo), "--decoder", "greedy", "-o", str(tmp_path / "plain")]) == 0
    out = tmp_path / "tr.txt"
    assert main(["transcribe", str(exp), str(theo / "wav.scp"), "--one-speaker", "--decoder", "greedy", *sets,
                 "-o", str(out)]) == 0
    assert sorted(out.read_text().splitlines()) == sorted((tmp_path / "dec" / "text").read_text().splitlines())
