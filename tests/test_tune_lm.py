"""asr tune-lm: the grid point of lowest dev WER wins, is installed in the model dir, and decode and
transcribe use it by default (``--set`` > tuned > ``--conf`` > defaults)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from trainutil import lang_dir, yesno_dir

from asr.cli import main
from asr.config import read_yaml
from asr.decoders import DecodeConfig
from asr.errors import AsrError
from asr.lm.backends import load_lm
from asr.tune_lm import best, grid_search

SYMBOLS = ["<blk>", "<unk>", "<space>", "E", "N", "O", "S", "T", "Y"]


def frames(*spec: str | dict[str, float]) -> torch.Tensor:
    """Log-probs ``(T, V)``: a symbol ("-" is blank) gets 0.9 on its frame, a dict gives several."""
    rows = []
    for s in spec:
        want = {s: 0.9} if isinstance(s, str) else s
        want = {SYMBOLS[0] if k == "-" else k: p for k, p in want.items()}
        rest = (1 - sum(want.values())) / (len(SYMBOLS) - len(want))
        rows.append([want.get(sym, rest) for sym in SYMBOLS])
    return torch.tensor(rows).log()


def write_lm(path: Path) -> Path:
    """A bigram that prefers NO to YES (tab-separated: KenLM, when installed, reads it too)."""
    g1 = ["-0.5\t</s>", "-99\t<s>\t0", "-0.2\tNO\t0", "-1.5\tYES\t0", "-3\t<unk>"]
    g2 = ["-0.3\t<s> NO", "-1.3\t<s> YES"]
    path.write_text(
        "\\data\\\nngram 1=5\nngram 2=2\n\n\\1-grams:\n" + "\n".join(g1) + "\n\n\\2-grams:\n" + "\n".join(g2)
        + "\n\n\\end\\\n"
    )
    return path


def test_grid_picks_the_point_of_lowest_dev_wer(tmp_path):
    # "a" (ref NO) sounds like NOT, an OOV word: it needs some LM weight (alpha > ~0.04). "b" (ref YES)
    # sounds a little more like YES than NO, which the LM prefers: too much LM weight (alpha > ~0.14)
    # turns it into NO. Only the middle alpha gets both right.
    a = frames("-", "N", "O", {"T": 0.55, "-": 0.44}, "-")
    b = frames("-", {"Y": 0.5, "N": 0.45}, {"E": 0.5, "O": 0.45}, {"S": 0.5, "-": 0.45}, "-")
    batches = [(["a", "b"], torch.stack([a, b]), torch.tensor([5, 5]))]
    lm = write_lm(tmp_path / "lm.arpa")
    cfg = DecodeConfig(decoder="beam", lm=str(lm))
    rows = grid_search(batches, {"a": "NO", "b": "YES"}, SYMBOLS, cfg, load_lm(str(lm)), [0.0, 0.1, 1.0], [0.0],
                       [0.0])
    assert [r[0] for r in rows] == [50.0, 0.0, 50.0]
    assert best(rows) == (0.0, 0.1, 0.0, 0.0)
    tied = [(10.0, 0.5, 1.0, -10.0), (5.0, 1.0, 0.0, -10.0), (5.0, 1.5, 0.0, -10.0)]
    assert best(tied) == (5.0, 1.0, 0.0, -10.0)  # no prior: the first in grid order
    assert best(tied, prior=(1.4, 0.0, -10.0)) == (5.0, 1.5, 0.0, -10.0)  # equals: nearest the configured weights
    assert best(tied, prior=(0.5, 1.0, -10.0)) == (5.0, 1.0, 0.0, -10.0)  # the worse row never wins


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> tuple[Path, Path]:
    from conftest import SHARED_DATA

    from asr.config import apply_overrides, from_dict
    from asr.train import TrainConfig, train

    if not (SHARED_DATA / "yesno").is_dir():
        pytest.skip(f"yesno not found under {SHARED_DATA}")
    out = tmp_path_factory.mktemp("tune")
    data = yesno_dir(SHARED_DATA, out / "data", 4, stack=3, subsample=3)
    lang = lang_dir(data, out / "lang")
    sets = ["model.num_layers=1", "model.hidden=8", "max_epochs=1", "schedule.name=none", "frames_per_batch=3000"]
    train(data, data, lang, out / "exp", from_dict(TrainConfig, apply_overrides({}, sets)))
    return out / "exp", data


def _decode_cfg(exp: Path, data: Path, out: Path, *args: str) -> dict:
    assert main(["decode", str(exp), str(data), "-o", str(out), "--set", "beam=4", *args]) == 0
    return read_yaml(out / "decode.yaml")


def test_tuned_weights_live_in_the_model_dir_and_decode_and_transcribe_use_them(model, tmp_path, monkeypatch):
    src, data = model
    exp = tmp_path / "exp"
    shutil.copytree(src, exp)
    lm = tmp_path / "lm.arpa"
    assert main(["build-lm", str(data), "--order", "2", "-o", str(lm)]) == 0
    grid = ["--alpha", "0.3", "0.7", "--beta", "0.2", "--unk-penalty", "-7"]
    assert main(["tune-lm", str(exp), str(data), "--lm", str(lm), "--set", "beam=4", *grid]) == 0
    tuned = read_yaml(exp / "lm_tuned.yaml")
    rows = (exp / f"tune_lm_{data.name}" / "results.tsv").read_text().splitlines()[1:]
    wers = {(float(r.split()[0]), float(r.split()[1])): float(r.split()[3]) for r in rows}
    assert (tuned["alpha"], tuned["beta"], tuned["unk_penalty"]) in {(a, b, -7.0) for (a, b) in wers}
    assert tuned["dev_wer"] == min(wers.values())
    assert (exp / "lm.arpa").read_bytes() == lm.read_bytes()

    want = {"alpha": tuned["alpha"], "beta": 0.2, "unk_penalty": -7.0}
    conf = str(Path(__file__).resolve().parents[1] / "conf" / "decode_beam.yaml")
    # The same LM (by content) as the recipe passes it, with the recipe's --conf: tuned weights.
    got = _decode_cfg(exp, data, tmp_path / "d1", "--decoder", "beam", "--conf", conf, "--lm", str(lm))
    assert {k: got[k] for k in want} == want
    # No --lm: the model dir's own LM, with its weights.
    got = _decode_cfg(exp, data, tmp_path / "d2")
    assert got["decoder"] == "beam" and got["lm"] == str(exp / "lm.arpa") and {k: got[k] for k in want} == want
    # --set beats the tuning; greedy stays greedy; another LM keeps the configured weights.
    assert _decode_cfg(exp, data, tmp_path / "d3", "--set", "alpha=0.05")["alpha"] == 0.05
    got = _decode_cfg(exp, data, tmp_path / "d4", "--decoder", "greedy")
    assert got["decoder"] == "greedy" and got["lm"] is None
    other = tmp_path / "other.arpa"
    other.write_text(lm.read_text().replace("\\end\\", "\n\\end\\"))
    got = _decode_cfg(exp, data, tmp_path / "d5", "--conf", conf, "--lm", str(other))
    assert got["alpha"] == read_yaml(conf)["alpha"]

    # A TLG graph carries its own LM: the tuned ARPA never replaces it.
    from asr.lm_tuned import apply_tuned

    wfst = apply_tuned(DecodeConfig(decoder="wfst", graph="g"), exp, set(), False, None)
    assert (wfst.decoder, wfst.lm, wfst.graph) == ("wfst", None, "g")

    # transcribe: with no flags a tuned model dir decodes with its LM.
    import asr.transcribe

    seen: list[DecodeConfig] = []

    def fake(model_dir, decode, **kw):
        seen.append(decode)
        raise AsrError("stop here")

    monkeypatch.setattr(asr.transcribe, "Transcriber", fake)
    wav = next(iter(wav_paths(data)))
    assert main(["transcribe", str(exp), wav]) == 1
    assert main(["transcribe", str(exp), wav, "--decoder", "greedy"]) == 1
    assert (seen[0].decoder, seen[0].lm, seen[0].alpha) == ("beam", str(exp / "lm.arpa"), tuned["alpha"])
    assert seen[1].decoder == "greedy" and seen[1].lm is None


def wav_paths(data: Path) -> list[str]:
    return [line.split(maxsplit=1)[1] for line in (data / "wav.scp").read_text().splitlines()]
