"""asr decode / tune-lm end to end on a (briefly trained) yesno model: files, n-best, --nj, bad input."""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
import sys
from importlib import resources
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
                "--no-install",  # the module's model dir stays untuned for the other tests
            ]
        )
        == 0
    )
    assert len((tmp_path / "t" / "results.tsv").read_text().splitlines()) == 3
    assert not (exp_dir / "lm_tuned.yaml").exists()


def test_decode_bad_input(exp, tmp_path, capsys):
    exp_dir, data = exp
    assert main(["decode", str(exp_dir), str(tmp_path / "nowhere")]) == 1
    assert main(["decode", str(exp_dir), str(data), "--decoder", "greedy", "--lm", "x.arpa"]) == 1
    bad = tmp_path / "bad.arpa"
    bad.write_text("\\data\\\nngram 1=1\n\n\\1-grams:\nzzz\n\\end\\\n")
    assert main(["decode", str(exp_dir), str(data), "--lm", str(bad), "-o", str(tmp_path / "x")]) == 1
    assert "bad.arpa:5" in capsys.readouterr().err


DECODE_DEFAULTS = ("decode_beam.yaml", "decode_greedy.yaml", "decode_wfst.yaml")
REPO = Path(__file__).resolve().parents[1]


def test_packaged_decode_defaults_are_the_repo_conf():
    """asr/conf ships in the wheel; conf/ is what recipes and readers see: they must not drift apart."""
    packaged = resources.files("asr") / "conf"
    for name in DECODE_DEFAULTS:
        assert (packaged / name).read_bytes() == (REPO / "conf" / name).read_bytes(), name


def test_package_data_lists_decode_defaults():
    tomllib = pytest.importorskip("tomllib")
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["asr"]
    for name in DECODE_DEFAULTS:
        assert any(fnmatch.fnmatch(f"conf/{name}", p) for p in patterns), name


INSTALLED_CONFIG = """
import argparse, json
import asr
from asr.config import to_dict
from asr.decode import _config

def cfg(decoder, sets=()):
    return to_dict(_config(argparse.Namespace(conf=None, decoder=decoder, set=list(sets), lm=None, nbest=None)))

print(json.dumps({"file": asr.__file__, "beam": cfg("beam"), "greedy": cfg("greedy"),
                  "set": cfg("beam", ["beam=3"]), "none": cfg(None)}))
"""


def test_decode_defaults_come_from_the_installed_package(tmp_path):
    """Like a wheel install: the package alone on the path, no repo conf/ beside it, run from elsewhere."""
    site = tmp_path / "site"
    shutil.copytree(REPO / "asr", site / "asr", ignore=shutil.ignore_patterns("__pycache__"))
    # Marked values, so the result shows which file was read (the real ones equal the dataclass defaults).
    beam = site / "asr" / "conf" / "decode_beam.yaml"
    beam.write_text(beam.read_text().replace("beam: 32", "beam: 7").replace("alpha: 0.5", "alpha: 0.75"))
    greedy = site / "asr" / "conf" / "decode_greedy.yaml"
    greedy.write_text(greedy.read_text().replace("nbest: 1", "nbest: 2"))
    run = tmp_path / "elsewhere"
    run.mkdir()
    out = subprocess.run([sys.executable, "-c", INSTALLED_CONFIG], cwd=run, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(site)}, timeout=300)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert Path(got["file"]).parent == site / "asr"
    assert (got["beam"]["decoder"], got["beam"]["beam"], got["beam"]["alpha"]) == ("beam", 7, 0.75)
    assert (got["greedy"]["decoder"], got["greedy"]["nbest"]) == ("greedy", 2)
    assert got["set"]["beam"] == 3 and got["set"]["alpha"] == 0.75  # --set applies on top of the defaults
    assert got["none"] == got["beam"]  # no --decoder: the default decoder's defaults
