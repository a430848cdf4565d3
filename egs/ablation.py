#!/usr/bin/env python3
"""Run a recipe's ablation rows and write their table into its RESULTS.md.

    python egs/ablation.py egs/fsdd --rows egs/fsdd/conf/ablation.tsv --run -- SPLIT=spk CORPUS_DIR=...

``rows.tsv``: one row per line, ``name<TAB>what it adds<TAB>make arguments`` (``#`` comments). Each row
is a whole recipe run up to ``score`` with ``ABLATION=name`` (its own model dir, stamps and logs;
finished rows are skipped by the stamps) that also decodes the dev set. The table gives dev and test
%WER for greedy and beam + LM, the test 95 % bootstrap interval, and train and total wall time. Where a
row's interval overlaps the baseline's (the first row) the row is marked as not separated from it.
A row with no results here (say, run in another clone) keeps its line from the old table, so running
one row with ``--only`` never wipes the others' figures.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

from asr.atomic import write_text
from asr.errors import AsrError, run_script

ROW_NAME = r"[A-Za-z0-9_.+]+"


def read_rows(path: Path) -> list[tuple[str, str, list[str]]]:
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) not in (2, 3) or not re.fullmatch(ROW_NAME, parts[0]):
            raise AsrError(f"{path}:{n}: expected 'name<TAB>description<TAB>make args', name in [A-Za-z0-9_.+]")
        rows.append((parts[0], parts[1], shlex.split(parts[2]) if len(parts) == 3 else []))
    if not rows:
        raise AsrError(f"{path}: no rows")
    return rows


def make_vars(recipe: Path, args: list[str], names: list[str]) -> dict[str, str]:
    """The values make gives ``names`` for these arguments (the recipe's own logic decides EXP etc.)."""
    out = subprocess.run(["make", "-s", "-C", str(recipe), *args, *[f"print-{n}" for n in names]],
                         capture_output=True, text=True)
    if out.returncode:
        raise AsrError(f"make -C {recipe} {' '.join(args)}: {out.stderr.strip().splitlines()[-1:]}")
    return dict(zip(names, out.stdout.splitlines(), strict=True))


def wer(recipe: Path, exp: str, dset: str, decoder: str) -> dict | None:
    path = recipe / exp / f"decode_{dset}_{decoder}" / "scores.json"
    return json.loads(path.read_text())["wer"] if path.is_file() else None


def seconds(recipe: Path, stage_logs: str, stages: list[str]) -> int:
    """Wall seconds of ``stages`` from the recipe's ``STAGE_LOGS`` (``stage=log`` pairs). The data stages'
    logs are the variant's, shared by its rows: a row that found them up to date shows their last run."""
    logs = dict(p.split("=", 1) for p in stage_logs.split())
    total = 0
    for stage in stages:
        log = recipe / logs[stage]
        found = re.findall(r"done in (\d+)s", log.read_text()) if log.is_file() else []
        total += int(found[-1]) if found else 0
    return total


def old_lines(text: str) -> dict[str, str]:
    """Row name -> its line in an existing ablation table."""
    return {m.group(1): m.group(0) for m in re.finditer(rf"^\| ({ROW_NAME}) \|.*$", text, flags=re.M)
            if m.group(1) != "row"}


def table(recipe: Path, rows: list[tuple[str, str, list[str]]], common: list[str],
          old: dict[str, str] | None = None) -> str:
    old = old or {}
    lines = [
        "| row | adds | dev greedy | dev beam | test greedy [95% CI] | test beam [95% CI] | train s | total s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    base: dict[str, list[float]] = {}
    for name, what, args in rows:
        v = make_vars(recipe, [*common, *args, f"ABLATION={name}"], ["EXP", "DEV_SET", "TEST_SETS", "STAGE_LOGS"])
        test = v["TEST_SETS"].split()[0]
        cells = []
        for dset in (v["DEV_SET"], test):
            for dec in ("greedy", "beam"):
                w = wer(recipe, v["EXP"], dset, dec)
                if w is None:
                    cells.append("–")
                    continue
                cell = f"{w['rate']:.2f}"
                if dset == test:
                    lo, hi = w["ci95"]
                    cell += f" [{lo:.1f}, {hi:.1f}]"
                    if not base.get(dec):
                        base[dec] = [lo, hi]
                    elif lo <= base[dec][1] and hi >= base[dec][0]:
                        cell += " ≈"
                cells.append(cell)
        if all(c == "–" for c in cells) and name in old:
            # The baseline's intervals still mark the other rows when only its old line is left.
            tests = old[name].split(" | ")[4:6]
            for dec, cell in zip(("greedy", "beam"), tests, strict=True):
                found = re.search(r"\[([\d.]+), ([\d.]+)\]", cell)
                if found and not base.get(dec):
                    base[dec] = [float(found.group(1)), float(found.group(2))]
            lines.append(old[name])
            continue
        train = seconds(recipe, v["STAGE_LOGS"], ["7-train"])
        total = seconds(recipe, v["STAGE_LOGS"], ["3-augment", "4-feats", "7-train", "8-tune", "9-decode", "10-score"])
        lines.append(f"| {name} | {what} | " + " | ".join(cells) + f" | {train} | {total} |")
    cmd = "python egs/ablation.py " + f"egs/{recipe.name} --rows egs/{recipe.name}/conf/ablation.tsv --run -- " + \
        " ".join(shlex.quote(a) for a in common)
    return (
        "## Ablation\n\n"
        f"Each row is one full run (`{cmd}`); the first is the baseline. %WER on the dev set (which `tune` "
        "also uses to pick the LM weights, so its beam column is optimistic) and on the test set with its "
        "95 % bootstrap interval; ≈ marks a test interval that overlaps the baseline's, i.e. a difference "
        "this test set does not separate. Total = augment + feats + train + tune + decode + score.\n\n"
        + "\n".join(lines) + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipe", type=Path, help="egs/<corpus>")
    p.add_argument("--rows", type=Path, required=True)
    p.add_argument("--run", action="store_true", help="run the rows first (finished stages are skipped)")
    p.add_argument("--only", nargs="+", help="run only these rows (the table still lists all)")
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    args = p.parse_args(argv[:split])
    args.make_args = argv[split + 1 :]  # make arguments common to every row
    rows = read_rows(args.rows)
    if args.run:
        for name, _, row_args in rows:
            if args.only and name not in args.only:
                continue
            v = make_vars(args.recipe, [*args.make_args, *row_args, f"ABLATION={name}"], ["DEV_SET", "TEST_SETS"])
            cmd = ["make", "-C", str(args.recipe), *args.make_args, *row_args, f"ABLATION={name}",
                   f"DECODE_SETS={v['DEV_SET']} {v['TEST_SETS']}", "score"]
            print("+", shlex.join(cmd), flush=True)
            if subprocess.run(cmd).returncode:
                print(f"ablation row {name} failed; the table shows what finished", file=sys.stderr)
    out = args.recipe / "RESULTS.md"
    begin, end = "<!-- ablation begin -->", "<!-- ablation end -->"
    old = out.read_text() if out.is_file() else ""
    section = re.search(re.escape(begin) + "(.*?)" + re.escape(end), old, flags=re.S)
    text = table(args.recipe, rows, args.make_args, old_lines(section.group(1)) if section else None)
    block = f"{begin}\n{text}{end}"
    new = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, old, flags=re.S) if begin in old \
        else old.rstrip("\n") + ("\n\n" if old else "") + block + "\n"
    write_text(out, new)
    print(text)
    return 0


if __name__ == "__main__":
    run_script(main, "ablation.py")
