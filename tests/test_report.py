"""asr report: a fake experiment dir renders to one HTML page with every section and its PNGs."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np

from asr.cli import main

SECTIONS = ["config", "training", "dev-cer", "decodes", "speakers", "worst", "posteriorgram"]


def _fake_exp(root: Path, posteriors: bool = True) -> Path:
    exp = root / "exp" / "blstm"
    exp.mkdir(parents=True)
    (exp / "config.yaml").write_text("model:\n  layers: 4\n  units: 320\noptim:\n  lr: 0.001\n")
    rows = ["epoch,step,train_loss,dev_loss,dev_cer,lr,seconds"]
    for e in range(1, 6):
        rows.append(f"{e},{e * 100 - 50},{3.0 / e:.3f},,,{1e-3 / e},{e * 10}")
        rows.append(f"{e},{e * 100},{2.9 / e:.3f},{3.2 / e:.3f},{60 / e:.2f},{1e-3 / e},{e * 20}")
    (exp / "metrics.csv").write_text("\n".join(rows) + "\n")
    (exp / "tokens.txt").write_text("<blk> 0\n<unk> 1\n<space> 2\na 3\nb 4\nc 5\n")
    (exp / "train.log").write_text("epoch 1 done\nepoch 5 done\n")
    data = root / "data" / "test"
    data.mkdir(parents=True)
    (data / "text").write_text("u1 a b c\nu2 b <b> c\nu3 c c a b\nu4 a\n")
    (data / "utt2spk").write_text("u1 s1\nu2 s1\nu3 s2\nu4 s2\n")
    for name, hyp in (("decode_test_greedy", "u1 a b c\nu2 b c c\nu3 c a b\n"),
                      ("decode_test_beam", "u1 a b c\nu2 b c\nu3 c c a b\nu4 a\n")):
        d = exp / name
        d.mkdir()
        (d / "text").write_text(hyp)
        assert main(["score", str(data), str(d), "--bootstrap", "100"]) == 0
    if posteriors:
        T, V = 40, 6
        lp = np.full((T, V), -8.0)
        lp[:, 0] = -0.01
        for t, tok in ((5, 3), (12, 4), (20, 2), (28, 5)):
            lp[t] = -8.0
            lp[t, tok] = -0.01
        np.savez(exp / "decode_test_greedy" / "posteriors.npz", log_probs=lp,
                 tokens=np.array(["<blk>", "<unk>", "<space>", "a", "b", "c"]), utt=np.array("u1"),
                 hyp=np.array("ab c"))
    (exp / "decode_dev_greedy").mkdir()  # decoded but not scored yet
    return exp


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.imgs: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "h2" and "id" in a:
            self.ids.append(a["id"])
        if tag == "img":
            self.imgs.append(a["src"])


def test_report_sections_and_pngs(tmp_path, capsys):
    exp = _fake_exp(tmp_path)
    assert main(["report", str(exp)]) == 0
    html_path = exp / "report.html"
    assert capsys.readouterr().out.strip().endswith("report.html")
    page = html_path.read_text()
    p = _Collect()
    p.feed(page)
    assert [s for s in SECTIONS if s not in p.ids] == []
    pngs = sorted(x.name for x in (exp / "report").glob("*.png"))
    assert pngs == ["dev_cer.png", "posteriorgram_decode_test_greedy.png", "spk_decode_test_beam.png",
                    "spk_decode_test_greedy.png", "training.png", "wer.png"]
    assert len(p.imgs) == len(pngs)
    for src in p.imgs:  # self-contained: every image is an embedded PNG
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "layers: 4" in page
    assert "decode_dev_greedy" in page and "not scored" in page
    # WER with interval for the greedy decode: 2 errors of 9 words (u4 missing -> 1 deletion).
    assert re.search(r"decode_test_greedy</td><td>\d+\.\d\d</td><td>\[\d+\.\d\d, \d+\.\d\d\]", page)
    assert "missing from hyp" in page
    assert '<td class="D">' in page  # the worst utterances are shown aligned
    assert "&lt;b&gt;" in page  # text is escaped


def test_report_degrades_when_pieces_missing(tmp_path):
    exp = tmp_path / "exp" / "empty"
    exp.mkdir(parents=True)
    assert main(["report", str(exp), "-o", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    p = _Collect()
    p.feed(page)
    assert [s for s in SECTIONS if s not in p.ids] == []
    for note in ("no config.yaml", "no metrics.csv", "no decode_* directories", "no decode_*/posteriors.npz"):
        assert note in page
    assert p.imgs == []


def test_report_bad_posteriors_and_missing_dir(tmp_path, capsys):
    exp = _fake_exp(tmp_path, posteriors=False)
    np.savez(exp / "decode_test_beam" / "posteriors.npz", something=np.zeros(3))
    (exp / "metrics.csv").write_text("epoch,step,train_loss,dev_loss,dev_cer,lr,seconds\n1,10,nan,,,x,\n")
    assert main(["report", str(exp)]) == 0
    assert "no decode_*/posteriors.npz" in (exp / "report.html").read_text()
    assert main(["report", str(tmp_path / "nope")]) == 1
    assert "not an experiment directory" in capsys.readouterr().err
