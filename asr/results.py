"""``asr results EGS_DIR|EXP_ROOT [-o RESULTS.md]``: every ``wer`` under exp/ in one markdown table.

Kaldi recipes keep a RESULTS file built with ``grep WER exp/*/decode*/wer_* | utils/best_wer.sh``;
this is the same habit: one table per test set (WERs of different sets are not comparable), best
first, ties broken by path. The test set is the name of the reference's data dir, read from
``scores.json`` (``data/test/text`` -> ``test``); without it, ``decode_<set>_<decoder>`` is used.

With ``-o``, an existing file keeps everything outside the ``<!-- asr results begin/end -->``
markers, so a recipe's hand-written notes survive ``make results``.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from asr.atomic import write_text
from asr.errors import AsrError

BEGIN, END = "<!-- asr results begin -->", "<!-- asr results end -->"

_WER_RE = re.compile(r"^%WER\s+(\S+)\s+\[\s*(\d+)\s*/\s*(\d+),\s*(\d+)\s+ins,\s*(\d+)\s+del,\s*(\d+)\s+sub\s*\]")
_SER_RE = re.compile(r"^%SER\s+(\S+)\s+\[\s*(\d+)\s*/\s*(\d+)\s*\]")
_CI_RE = re.compile(r"^%WER-CI95\s+\[\s*(\S+)\s*,\s*(\S+)\s*\]")
_SCORED_RE = re.compile(r"^Scored (\d+) sentences, (\d+) not present")


def parse_wer_file(path: str | Path) -> dict | None:
    """The numbers in a Kaldi/asr ``wer`` file, or None when it has no %WER line.

    Keys (percent rates): ``rate errors total ins del sub`` and, when present, ``ser``,
    ``sentence_errors``, ``sentences``, ``missing``, ``ci95`` ([lo, hi]).
    """
    out: dict = {}
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        if m := _WER_RE.match(line):
            out.update(rate=float(m[1]), errors=int(m[2]), total=int(m[3]), ins=int(m[4]),
                       **{"del": int(m[5])}, sub=int(m[6]))
        elif m := _SER_RE.match(line):
            out.update(ser=float(m[1]), sentence_errors=int(m[2]), sentences=int(m[3]))
        elif m := _CI_RE.match(line):
            out["ci95"] = [float(m[1]), float(m[2])]
        elif m := _SCORED_RE.match(line):
            out.update(sentences=int(m[1]), missing=int(m[2]))
    return out if "rate" in out else None


def _set_name(wer_path: Path, scores: dict | None) -> str:
    ref = (scores or {}).get("ref")
    if ref:
        p = Path(ref)
        return p.parent.name if p.name == "text" else p.name
    m = re.match(r"decode_(.+?)(_(greedy|beam|lm|prefix)\w*)?$", wer_path.parent.name)
    return m[1] if m else "?"


def collect(root: str | Path) -> tuple[Path, list[dict]]:
    """Find every ``wer`` / ``wer_*`` file under ``root/exp`` (or ``root`` itself).

    Returns the base dir that paths are shown relative to, and one dict per scored decode with
    ``path set wer ci95 ser cer ins del sub errors total missing``.
    """
    root = Path(root)
    if not root.is_dir():
        raise AsrError(f"{root}: not a directory")
    base = root
    search = root / "exp" if (root / "exp").is_dir() else root
    entries = []
    for f in sorted(search.rglob("wer*")):
        if not f.is_file() or not (f.name == "wer" or f.name.startswith("wer_")):
            continue
        w = parse_wer_file(f)
        if w is None:
            continue
        scores = None
        if f.name == "wer" and (f.parent / "scores.json").is_file():
            try:
                scores = json.loads((f.parent / "scores.json").read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                scores = None
        cer = ((scores or {}).get("cer") or {}).get("rate")
        entries.append({"path": str(f.relative_to(base)), "set": _set_name(f, scores), "wer": w["rate"],
                        "ci95": w.get("ci95"), "ser": w.get("ser"), "cer": cer, "ins": w["ins"],
                        "del": w["del"], "sub": w["sub"], "errors": w["errors"], "total": w["total"],
                        "missing": w.get("missing", 0)})
    return base, entries


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}"


def markdown(entries: list[dict], title: str = "Results") -> str:
    """One table per test set, sets in name order, rows best (lowest %WER) first."""
    lines = [f"# {title}", "",
             "%WER with its 95% bootstrap interval over utterances (`asr score`), best first per test set.",
             "Regenerate with `make results` (`asr results`)."]
    if not entries:
        return "\n".join([*lines, "", "No scored decodes found (no `wer` files under exp/).", ""])
    for name in sorted({e["set"] for e in entries}):
        rows = sorted((e for e in entries if e["set"] == name), key=lambda e: (e["wer"], e["path"]))
        lines += ["", f"## {name}", "",
                  "| %WER | 95% CI | %SER | %CER | ins | del | sub | errors / words | decode |",
                  "|---:|:---:|---:|---:|---:|---:|---:|---:|:---|"]
        for e in rows:
            ci = f"[{_fmt(e['ci95'][0])}, {_fmt(e['ci95'][1])}]" if e["ci95"] else ""
            miss = f" ({e['missing']} missing)" if e["missing"] else ""
            lines.append(f"| {_fmt(e['wer'])} | {ci} | {_fmt(e['ser'])} | {_fmt(e['cer'])} | {e['ins']} | "
                         f"{e['del']} | {e['sub']} | {e['errors']} / {e['total']} | `{e['path']}`{miss} |")
    return "\n".join(lines) + "\n"


def _merge(old: str, table: str) -> str:
    """Replace the marked block in ``old``; append one when there is none."""
    block = f"{BEGIN}\n{table}{END}\n"
    if BEGIN in old and END in old and old.index(BEGIN) < old.index(END):
        head, rest = old.split(BEGIN, 1)
        return head + block + rest.split(END, 1)[1].lstrip("\n")
    return (old.rstrip("\n") + "\n\n" if old.strip() else "") + block


def _cmd_results(args: argparse.Namespace) -> int:
    base, entries = collect(args.root)
    name = Path(args.root).resolve().name
    table = markdown(entries, title=f"Results: {name}")
    if args.out:
        out = Path(args.out)
        old = out.read_text(encoding="utf-8") if out.is_file() else ""
        write_text(out, _merge(old, table))
        best = min(entries, key=lambda e: e["wer"]) if entries else None
        print(f"{out}: {len(entries)} scored decodes" + (f", best %WER {best['wer']:.2f} {best['path']}"
                                                          if best else ""))
    else:
        print(table, end="")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("results", help="collect every exp/**/wer into a markdown table, best first",
                              description="Collect every wer file under exp/ into a markdown table per test set, "
                                          "best first (Kaldi's best_wer habit).")
    p.add_argument("root", metavar="EGS_DIR_or_EXP_ROOT", help="recipe dir (uses its exp/) or an exp root")
    p.add_argument("-o", "--out", metavar="RESULTS.md", help="write (merge) into this file instead of stdout")
    p.set_defaults(func=_cmd_results)
