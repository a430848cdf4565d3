#!/usr/bin/env python3
"""Leave-one-speaker-out summary: each fold's test %WER (95 % CI), then the mean and the worst fold.

Reads ``exp/char_loso_<spk>[-<ablation>]/decode_test_loso_<spk>_<decoder>/scores.json`` (written by
``asr score``) and replaces the ``<!-- loso begin... -->`` section of RESULTS.md (atomically).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
from pathlib import Path

from asr.atomic import write_text
from asr.errors import AsrError, run_script


def fold_scores(root: Path, spk: str, decoder: str, ablation: str | None) -> dict:
    tag = f"char_loso_{spk}" + (f"-{ablation}" if ablation else "")
    path = root / "exp" / tag / f"decode_test_loso_{spk}_{decoder}" / "scores.json"
    if not path.is_file():
        raise AsrError(f"{path}: no such file (did fold {spk} finish?)")
    return json.loads(path.read_text())["wer"]


def train_seconds(root: Path, spk: str, ablation: str | None) -> int | None:
    variant = f"loso_{spk}" + (f"-{ablation}" if ablation else "")
    log = root / "exp" / "log" / f"stage7-train.{variant}.log"
    found = re.findall(r"done in (\d+)s", log.read_text()) if log.is_file() else []
    return int(found[-1]) if found else None


def summary(root: Path, speakers: list[str], decoders: list[str], ablation: str | None) -> str:
    head = "| held-out speaker | " + " | ".join(f"{d} %WER [95% CI]" for d in decoders) + " | train (s) |"
    lines = [head, "|---|" + "---:|" * len(decoders) + "---:|"]
    rates: dict[str, list[float]] = {d: [] for d in decoders}
    for spk in speakers:
        cells = []
        for d in decoders:
            w = fold_scores(root, spk, d, ablation)
            rates[d].append(w["rate"])
            cells.append(f"{w['rate']:.2f} [{w['ci95'][0]:.2f}, {w['ci95'][1]:.2f}]")
        secs = train_seconds(root, spk, ablation)
        lines.append(f"| {spk} | " + " | ".join(cells) + f" | {secs if secs is not None else '?'} |")
    mean = [sum(rates[d]) / len(rates[d]) for d in decoders]
    worst = [max(rates[d]) for d in decoders]
    lines.append("| **mean** | " + " | ".join(f"**{m:.2f}**" for m in mean) + " | |")
    lines.append("| **worst** | " + " | ".join(f"**{w:.2f}**" for w in worst) + " | |")
    try:
        code = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        code = "unknown"
    name = f" ({ablation})" if ablation else ""
    return (
        f"## Leave one speaker out{name}\n\n"
        f"Each of the {len(speakers)} speakers is the test set of one fold, trained on the other "
        f"{len(speakers) - 1} (their index 0-4 is dev). `make -C egs/fsdd SPLIT=loso"
        f"{f' ABLATION={ablation}' if ablation else ''} CORPUS_DIR=...`; code {code}.\n\n" + "\n".join(lines) + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path, help="the recipe's working dir (holding exp/)")
    p.add_argument("--speakers", nargs="+", required=True)
    p.add_argument("--decoders", nargs="+", default=["greedy", "beam"])
    p.add_argument("--ablation")
    p.add_argument("-o", "--output", type=Path, required=True, help="RESULTS.md to update")
    args = p.parse_args(argv)
    text = summary(args.root, args.speakers, args.decoders, args.ablation)
    sfx = f".{args.ablation}" if args.ablation else ""
    begin, end = f"<!-- loso begin{sfx} -->", f"<!-- loso end{sfx} -->"
    old = args.output.read_text() if args.output.is_file() else ""
    block = f"{begin}\n{text}{end}"
    new = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, old, flags=re.S) if begin in old \
        else old.rstrip("\n") + ("\n\n" if old else "") + block + "\n"
    write_text(args.output, new)
    print(text)
    return 0


if __name__ == "__main__":
    run_script(main, "loso.py")
