"""asr decode / tune-lm end to end on a (briefly trained) yesno model: files, n-best, --nj, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from trainutil import lang_dir, yesno_dir

from asr.cli import main
from asr.datadir import read_kv


@pytest.fixture(scope="module")
def exp(tmp_path_factory) -> tuple[Path, Path]:
    """A 1x16 BiLSTM trained 2 epochs on 8 yesno files (seconds): the plumbing, not the accuracy."""
    from conftest import SHARED_DATA

    from asr.models import ModelConfig
    from asr.schedule import ScheduleConfig
    from asr.train import OptimConfig, TrainConfig, train

    if not SHARED_DATA.is_dir():
        pytest.skip(f"real corpora not found at {SHARED_DATA}")
    out = tmp_path_factory.mktemp("yesno_decode")
    data = yesno_dir(SHARED_DATA, out / "data", 8, stack=3, subsample=3)
    lang = lang_dir(data, out / "lang")
    cfg = TrainConfig(
        model=ModelConfig(num_layers=1, hidden=16, dropout=0.0),
        optim=OptimConfig(lr=0.01),
        schedule=ScheduleConfig(name="none"),
        max_epochs=2,
        frames_per_batch=3000,
    )
    train(data, data, lang, out / "exp", cfg)
    return out / "exp", data


def test_decode_writes_text_and_nbest(exp, tmp_path):
    exp_dir, data = exp
    assert main(["decode", str(exp_dir), str(data), "--decoder", "greedy"]) == 0
    text = read_kv(exp_dir / f"decode_{data.name}_greedy" / "text")
    assert sorted(text) == sorted(read_kv(data / "text"))
    out = tmp_path / "beam"
    assert (
        main(
            ["decode", str(exp_dir), str(data), "--decoder", "beam", "--nbest", "3", "-o", str(out), "--set", "beam=4"]
        )
        == 0
    )
    lines = (out / "nbest").read_text().splitlines()
    assert lines and all(len(line.split("\t")) == 4 for line in lines)
    assert (out / "decode.yaml").is_file()
    out2 = tmp_path / "beam_nj2"
    assert (
        main(["decode", str(exp_dir), str(data), "--decoder", "beam", "--nj", "2", "-o", str(out2), "--set", "beam=4"])
        == 0
    )
    assert (out2 / "text").read_text() == (out / "text").read_text()
    # the report's posteriorgram: the first utterance's posteriors, the same whichever job decoded it
    import numpy as np

    with np.load(out / "posteriors.npz") as a, np.load(out2 / "posteriors.npz") as b:
        assert str(a["utt"]) == sorted(text)[0] and a["log_probs"].shape[1] == len(a["tokens"])
        np.testing.assert_allclose(np.exp(a["log_probs"]).sum(1), 1.0, rtol=1e-4)
        np.testing.assert_array_equal(a["log_probs"], b["log_probs"])


def test_decode_with_lm_and_tune(exp, tmp_path):
    exp_dir, data = exp
    lm = tmp_path / "lm.arpa"
    assert main(["build-lm", str(data), "--order", "2", "-o", str(lm)]) == 0
    assert main(["decode", str(exp_dir), str(data), "--lm", str(lm), "-o", str(tmp_path / "d")]) == 0
    assert (tmp_path / "d" / "text").is_file()
    assert (
        main(
            [
                "tune-lm",
                str(exp_dir),
                str(data),
                "--lm",
                str(lm),
                "--alpha",
                "0",
                "1",
                "--beta",
                "0",
                "-o",
                str(tmp_path / "t"),
            ]
        )
        == 0
    )
    assert len((tmp_path / "t" / "results.tsv").read_text().splitlines()) == 3


def test_decode_bad_input(exp, tmp_path, capsys):
    exp_dir, data = exp
    assert main(["decode", str(exp_dir), str(tmp_path / "nowhere")]) == 1
    assert main(["decode", str(exp_dir), str(data), "--decoder", "greedy", "--lm", "x.arpa"]) == 1
    bad = tmp_path / "bad.arpa"
    bad.write_text("\\data\\\nngram 1=1\n\n\\1-grams:\nzzz\n\\end\\\n")
    assert main(["decode", str(exp_dir), str(data), "--lm", str(bad), "-o", str(tmp_path / "x")]) == 1
    assert "bad.arpa:5" in capsys.readouterr().err
