"""``asr report EXP_DIR``: one self-contained HTML page per experiment.

Reads what the other stages leave in the model dir and skips, with a note, whatever is missing:

- ``config.yaml`` (and ``feats.yaml``): shown verbatim;
- ``metrics.csv`` (``epoch,step,train_loss,dev_loss,dev_cer,lr,seconds``; empty cells allowed):
  training/dev loss and learning-rate curves, dev CER per epoch, and a per-epoch table;
- every ``decode_*/``: ``scores.json`` from ``asr score`` (falling back to the ``wer`` file): WER
  with its 95 % bootstrap interval, per-speaker bars, the worst utterances aligned;
- ``decode_*/posteriors.npz`` (optional, written by the decoder for one sample utterance) for a
  posteriorgram. Arrays: ``log_probs`` float (T, V), CTC log-posteriors per output frame;
  ``tokens`` str (V,), symbol per id (blank first; when absent, ``EXP_DIR/tokens.txt`` is used);
  ``utt`` 0-d str, the utterance id; optional ``hyp`` 0-d str, the decoded text; optional
  ``frame_shift`` 0-d float, seconds per output frame.

PNG files go to ``EXP_DIR/report/`` and are also embedded (base64) in ``report.html``, so the
page can be mailed or moved on its own.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import json
import logging
import math
import re
from datetime import datetime
from pathlib import Path

import numpy as np

from asr.atomic import write_text
from asr.errors import AsrError
from asr.metrics import METRIC_COLUMNS, new_figure, plot_metrics, read_metrics, save_png

log = logging.getLogger(__name__)

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}
pre{background:#f6f6f6;padding:.8em;overflow-x:auto;font-size:.85em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.2em .5em;text-align:right}
th{background:#f0f0f0}td.l,th.l{text-align:left}.note{color:#888;font-style:italic}
img{max-width:100%;border:1px solid #eee}
table.align td{text-align:left;font-family:monospace;border:none;padding:0 .4em}
.S{background:#fdd}.I{background:#dfd}.D{background:#ddf}
"""


def read_decode(d: Path) -> dict | None:
    """A decode dir's scores: ``scores.json`` when present, else the %WER/%SER/CI lines of ``wer``."""
    sj = d / "scores.json"
    if sj.is_file():
        try:
            return json.loads(sj.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            log.warning("%s: unreadable (%s); falling back to %s", sj, e, d / "wer")
    if (d / "wer").is_file():
        from asr.results import parse_wer_file

        w = parse_wer_file(d / "wer")
        if w is not None:
            return {"wer": w, "cer": None, "per_spk": None, "utts": [], "sentences": w.get("sentences")}
    return None


def plot_wers(decodes: list[tuple[str, dict]], out: Path) -> Path | None:
    named = [(n, s["wer"]) for n, s in decodes if s and s.get("wer")]
    if not named:
        return None
    fig = new_figure(7, 0.5 + 0.45 * len(named))
    ax = fig.subplots()
    y = np.arange(len(named))
    rates = np.array([w["rate"] for _, w in named])
    ci = np.array([w.get("ci95") or [w["rate"], w["rate"]] for _, w in named], dtype=np.float64)
    err = np.abs(np.stack([rates - ci[:, 0], ci[:, 1] - rates]))
    ax.barh(y, rates, xerr=np.nan_to_num(err), capsize=4, color="tab:blue", alpha=0.8)
    ax.set_yticks(y, [n for n, _ in named])
    ax.invert_yaxis()
    ax.set_xlabel("%WER (95% bootstrap interval)")
    ax.grid(axis="x", alpha=0.3)
    return save_png(fig, out)


def plot_speakers(rows: list[dict], out: Path, max_spk: int = 60) -> Path | None:
    spk = [r for r in rows if r["spk"] != "SUM"]
    total = next((r for r in rows if r["spk"] == "SUM"), None)
    if not spk:
        return None
    spk = sorted(spk, key=lambda r: -r["wer"])[:max_spk]
    fig = new_figure(max(5, 0.3 * len(spk) + 2), 3.2)
    ax = fig.subplots()
    ax.bar(range(len(spk)), [r["wer"] for r in spk], color="tab:orange")
    ax.set_xticks(range(len(spk)), [r["spk"] for r in spk], rotation=90, fontsize=7)
    if total:
        ax.axhline(total["wer"], color="k", linestyle="--", linewidth=1, label=f"all {total['wer']:.2f}")
        ax.legend()
    ax.set_ylabel("%WER")
    return save_png(fig, out)


def _read_token_symbols(path: Path) -> list[str] | None:
    if not path.is_file():
        return None
    pairs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            pairs.append((int(parts[1]), parts[0]))
    if not pairs:
        return None
    syms = [f"#{i}" for i in range(max(i for i, _ in pairs) + 1)]
    for i, s in pairs:
        syms[i] = s
    return syms


def plot_posteriorgram(npz: Path, exp_dir: Path, out: Path, floor: float = 0.05) -> tuple[Path, str] | None:
    """CTC posteriors over time for the tokens that ever exceed ``floor``, greedy tokens marked on top.

    Returns the PNG path and a caption, or None (with a warning) when the file is unusable.
    """
    try:
        with np.load(npz, allow_pickle=False) as z:
            lp = np.asarray(z["log_probs"], dtype=np.float64)
            tokens = [str(t) for t in z["tokens"]] if "tokens" in z else None
            utt = str(z["utt"]) if "utt" in z else "?"
            hyp = str(z["hyp"]) if "hyp" in z else None
            shift = float(z["frame_shift"]) if "frame_shift" in z else None
    except (OSError, KeyError, ValueError) as e:
        log.warning("%s: cannot read posteriorgram (%s)", npz, e)
        return None
    if lp.ndim != 2 or lp.shape[0] == 0:
        log.warning("%s: log_probs must be (T, V), got %s", npz, lp.shape)
        return None
    T, V = lp.shape
    tokens = tokens or _read_token_symbols(exp_dir / "tokens.txt") or [str(i) for i in range(V)]
    if len(tokens) < V:
        tokens = tokens + [f"#{i}" for i in range(len(tokens), V)]
    post = np.exp(lp)
    show = sorted({0} | set(np.flatnonzero(post.max(axis=0) > floor).tolist()))
    x_scale = shift or 1.0
    fig = new_figure(10, 1.2 + 0.18 * len(show))
    ax = fig.subplots()
    ax.imshow(post[:, show].T, aspect="auto", origin="lower", cmap="viridis", vmin=0, vmax=1,
              interpolation="nearest", extent=(0, T * x_scale, -0.5, len(show) - 0.5))
    ax.set_yticks(range(len(show)), [tokens[i] for i in show], fontsize=7)
    best = post.argmax(axis=1)
    for t in range(T):
        if best[t] != 0 and (t == 0 or best[t] != best[t - 1]):
            ax.text((t + 0.5) * x_scale, len(show) - 0.3, tokens[best[t]], ha="center", va="bottom",
                    fontsize=7, clip_on=False)
    ax.set_xlabel("seconds" if shift else "output frame")
    return save_png(fig, out), f"{utt}" + (f": {hyp}" if hyp else "")


def _img(path: Path | None, alt: str) -> str:
    if path is None:
        return f'<p class="note">no data for {html.escape(alt)}</p>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _align_html(u: dict) -> str:
    """Aligned ref/hyp rows from a scores.json utterance (ops: C S I D consume ref/hyp tokens)."""
    ref, hyp, ops = u["ref"].split(), u["hyp"].split(), u.get("ops", "")
    if len(ops) != len(ref) + ops.count("I") or len(ops) != len(hyp) + ops.count("D"):
        return f"<pre>REF: {html.escape(u['ref'])}\nHYP: {html.escape(u['hyp'])}</pre>"
    r_cells, h_cells, i, j = [], [], 0, 0
    for o in ops:
        r = ref[i] if o != "I" else "***"
        h = hyp[j] if o != "D" else "***"
        i, j = i + (o != "I"), j + (o != "D")
        cls = f' class="{o}"' if o != "C" else ""
        r_cells.append(f"<td{cls}>{html.escape(r)}</td>")
        h_cells.append(f"<td{cls}>{html.escape(h)}</td>")
    return (f'<table class="align"><tr><td>REF</td>{"".join(r_cells)}</tr>'
            f'<tr><td>HYP</td>{"".join(h_cells)}</tr></table>')


def _table(head: list[str], rows: list[list], left: int = 1) -> str:
    th = "".join(f'<th{" class=l" if k < left else ""}>{html.escape(h)}</th>' for k, h in enumerate(head))
    body = "".join("<tr>" + "".join(f'<td{" class=l" if k < left else ""}>{html.escape(str(c))}</td>'
                                    for k, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _num(x, fmt: str = ".2f") -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _config_section(exp: Path) -> list[str]:
    parts = ['<h2 id="config">Configuration</h2>']
    found = False
    for name in ("config.yaml", "feats.yaml"):
        if (exp / name).is_file():
            found = True
            text = (exp / name).read_text(encoding="utf-8", errors="replace")
            parts.append(f"<h3>{name}</h3><pre>{html.escape(text)}</pre>")
    if not found:
        parts.append('<p class="note">no config.yaml</p>')
    return parts


def _training_sections(exp: Path, img_dir: Path) -> list[str]:
    """Training curves, dev CER per epoch (the plots ``asr train`` draws) and the per-epoch table."""
    rows: list[dict[str, float]] = []
    if (exp / "metrics.csv").is_file():
        try:
            rows = read_metrics(exp / "metrics.csv")
        except (OSError, csv.Error, UnicodeDecodeError) as e:
            log.warning("%s: unreadable (%s)", exp / "metrics.csv", e)
    training_png, cer_png = plot_metrics(rows, img_dir)
    parts = ['<h2 id="training">Training curves</h2>']
    parts.append(_img(training_png, "training curves (metrics.csv)") if rows else '<p class="note">no metrics.csv</p>')
    parts.append('<h2 id="dev-cer">Dev CER per epoch</h2>')
    parts.append(_img(cer_png, "dev CER per epoch"))
    epoch_rows = [r for r in rows if math.isfinite(r.get("dev_loss", math.nan))
                  or math.isfinite(r.get("dev_cer", math.nan))]
    if epoch_rows:
        parts.append(_table(METRIC_COLUMNS,
                            [[_num(r.get("epoch"), ".0f"), _num(r.get("step"), ".0f"), _num(r.get("train_loss"), ".4f"),
                              _num(r.get("dev_loss"), ".4f"), _num(r.get("dev_cer"), ".4g"),
                              _num(r.get("lr"), ".3g"), _num(r.get("seconds"), ".0f")] for r in epoch_rows], left=0))
    return parts


def _decodes_section(decodes: list[tuple[str, dict | None]], img_dir: Path) -> list[str]:
    parts = ['<h2 id="decodes">Decodes</h2>']
    if not decodes:
        return parts + ['<p class="note">no decode_* directories</p>']
    table = []
    for name, s in decodes:
        if not s:
            table.append([name, "not scored", "", "", "", "", ""])
            continue
        w, c = s["wer"], s.get("cer") or {}
        ci = w.get("ci95")
        table.append([name, _num(w["rate"]), f"[{_num(ci[0])}, {_num(ci[1])}]" if ci else "",
                      _num(w.get("ser")), _num(c.get("rate")),
                      f"{w.get('ins', '')}/{w.get('del', '')}/{w.get('sub', '')}", s.get("sentences", "")])
    parts.append(_table(["decode", "%WER", "95% CI", "%SER", "%CER", "ins/del/sub", "#utts"], table))
    parts.append(_img(plot_wers(decodes, img_dir / "wer.png"), "WER per decode"))
    return parts


def _speakers_section(decodes: list[tuple[str, dict | None]], img_dir: Path) -> list[str]:
    parts = ['<h2 id="speakers">Per-speaker WER</h2>']
    for name, s in decodes:
        if s and s.get("per_spk"):
            parts.append(f"<h3>{html.escape(name)}</h3>")
            parts.append(_img(plot_speakers(s["per_spk"], img_dir / f"spk_{_slug(name)}.png"), "per-speaker WER"))
    if len(parts) == 1:
        parts.append('<p class="note">no per-speaker scores (score with utt2spk)</p>')
    return parts


def _worst_section(decodes: list[tuple[str, dict | None]], worst: int) -> list[str]:
    parts = [f'<h2 id="worst">Worst utterances (top {worst})</h2>']
    for name, s in decodes:
        utts = (s or {}).get("utts") or []
        if not utts:
            continue
        parts.append(f"<details open><summary>{html.escape(name)}</summary>")
        for u in utts[:worst]:
            tag = " (missing from hyp)" if u.get("missing") else ""
            parts.append(f"<p><b>{html.escape(u['utt'])}</b>: {u['errors']} errors / {u['words']} words"
                         f"{tag}</p>{_align_html(u)}")
        parts.append("</details>")
    if len(parts) == 1:
        parts.append('<p class="note">no per-utterance scores (scores.json)</p>')
    return parts


def _posteriorgram_section(exp: Path, img_dir: Path) -> list[str]:
    """The first readable ``decode_*/posteriors.npz``."""
    parts = ['<h2 id="posteriorgram">Posteriorgram</h2>']
    for npz in sorted(exp.glob("decode_*/posteriors.npz")):
        shown = plot_posteriorgram(npz, exp, img_dir / f"posteriorgram_{_slug(npz.parent.name)}.png")
        if shown:
            parts.append(f"<p>{html.escape(npz.parent.name)} &middot; {html.escape(shown[1])}</p>")
            parts.append(_img(shown[0], "posteriorgram"))
            return parts
    return parts + ['<p class="note">no decode_*/posteriors.npz</p>']


def _log_section(exp: Path) -> list[str]:
    if not (exp / "train.log").is_file():
        return []
    tail = (exp / "train.log").read_text(encoding="utf-8", errors="replace").splitlines()[-30:]
    return ['<h2 id="log">train.log (last lines)</h2><pre>' + html.escape("\n".join(tail)) + "</pre>"]


def build_report(exp_dir: str | Path, out_html: str | Path | None = None, worst: int = 10) -> Path:
    """Render ``exp_dir``'s report; returns the HTML path (default ``EXP_DIR/report.html``)."""
    exp = Path(exp_dir)
    if not exp.is_dir():
        raise AsrError(f"{exp}: not an experiment directory")
    out_html = Path(out_html) if out_html else exp / "report.html"
    img_dir = out_html.parent / "report"
    parts = [f"<h1>Experiment {html.escape(exp.name)}</h1>",
             f'<p class="note">{html.escape(str(exp.resolve()))} &middot; generated '
             f'{datetime.now().strftime("%Y-%m-%d %H:%M")}</p>']
    parts += _config_section(exp)
    parts += _training_sections(exp, img_dir)
    decodes = [(d.name, read_decode(d)) for d in sorted(exp.glob("decode_*")) if d.is_dir()]
    parts += _decodes_section(decodes, img_dir)
    parts += _speakers_section(decodes, img_dir)
    parts += _worst_section(decodes, worst)
    parts += _posteriorgram_section(exp, img_dir)
    parts += _log_section(exp)
    page = ('<!DOCTYPE html><html><head><meta charset="utf-8">'
            f"<title>asr report: {html.escape(exp.name)}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(parts) + "\n</body></html>\n")
    write_text(out_html, page)
    return out_html


def _cmd_report(args: argparse.Namespace) -> int:
    path = build_report(args.exp_dir, args.out, worst=args.worst)
    print(path)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("report", help="one self-contained HTML page for an experiment dir",
                              description="Write EXP_DIR/report.html (PNGs in EXP_DIR/report/, also embedded): "
                                          "config, training curves, dev CER, decodes with WER intervals, "
                                          "per-speaker bars, worst utterances, posteriorgram.")
    p.add_argument("exp_dir", metavar="EXP_DIR", help="experiment (model) directory")
    p.add_argument("-o", "--out", metavar="HTML", help="output file (default EXP_DIR/report.html)")
    p.add_argument("--worst", type=int, default=10, help="worst utterances shown per decode")
    p.set_defaults(func=_cmd_report)
