"""TLG graph build time and size for every recipe's LM, against G (the LM alone as an FST).

Each recipe's training transcripts are rebuilt from ../shared/data with the recipe's own
``local/prepare.py`` (an4: its transcript reader; dev speakers held out as the recipes do), then
``asr make-tokens`` (char units) and ``asr build-lm`` (the recipe's ``LM_ORDER``) run on them and
``asr.graph.make_graph`` compiles the TLG (``<space>`` required, the default), all in a temp dir:

* yesno (2-gram), fsdd official split (2-gram), an4 (3-gram), speechocean762 (3-gram);
* speechocean762 ``UNIT=phone`` (the recipe whose default decoders include wfst): the same LM
  over the 39-phone lexicon without stress;
* the synthetic 3-gram of ``bench/decode.py`` (398 words, 29 char tokens), for reference.

Baseline: G, the ARPA file converted by kaldilm (Kaldi's arpa2fst), which is the first step of
every TLG build; the ratios say what the lexicon and the CTC topology add. Times are wall clock,
best of ``--repeats`` (the machine is shared); MB are the files OpenFst writes. egs/demo (speech
synthesised by espeak-ng) and egs/librispeech (not in ../shared/data) are not covered.

    python bench/graph.py                  # ~20 s
    python bench/graph.py --repeats 1
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for bench.* as a script
SHARED = Path(os.environ.get("ASR_SHARED_DATA", ROOT.parent / "shared" / "data"))
NEEDS = ("kaldifst", "kaldilm")


def have(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def recipe_module(recipe: str):
    """``egs/<recipe>/local/prepare.py`` as a module."""
    spec = importlib.util.spec_from_file_location(f"prepare_{recipe}", ROOT / "egs" / recipe / "local" / "prepare.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def asr(*argv: str) -> None:
    """An ``asr`` command in-process; its stdout goes to stderr so the tables stay clean."""
    from asr.cli import main

    with contextlib.redirect_stdout(sys.stderr):
        rc = main(list(argv))
    if rc != 0:
        raise RuntimeError(f"asr {' '.join(argv)}: exit status {rc}")


def prepare(recipe: str, corpus: Path, out: Path) -> Path:
    """The recipe's training text (a Kaldi text file) under ``out``."""
    if recipe == "an4":
        # prepare.py would also convert every MFCC file; its transcript reader and dev split suffice.
        text, utt2spk, _ = recipe_module("an4").read_set(corpus, "train")
        speakers = sorted(set(utt2spk.values()))
        dev = set(speakers[9::10])  # --dev-every 10
        lines = [f"{u} {t}\n" for u, t in sorted(text.items()) if utt2spk[u] not in dev]
        (out / "train").mkdir(parents=True)
        (out / "train" / "text").write_text("".join(lines))
    else:
        with contextlib.redirect_stdout(sys.stderr):
            recipe_module(recipe).main([str(corpus), str(out)])
    return out / "train" / "text"


def synthetic(out: Path) -> tuple[Path, Path]:
    """bench/decode.py's LM (3,000 synthetic sentences, 3-gram) and its 29-token char lang dir."""
    from asr.lm.arpa import write_arpa
    from asr.lm.kneser_ney import estimate
    from asr.tokens import TokenTable
    from bench.reference_decoders import SYMBOLS, synthetic_corpus

    out.mkdir(parents=True)
    write_arpa(*estimate(synthetic_corpus(3020)[20:], order=3), out / "lm.arpa")
    return out / "lm.arpa", TokenTable(SYMBOLS).save(out / "lang").parent


def ngrams(arpa: Path) -> str:
    counts = []
    with open(arpa, encoding="utf-8") as f:
        for line in f:
            if line.startswith("ngram "):
                counts.append(line.split("=")[1].strip())
            elif line.startswith("\\1-grams"):
                break
    return "/".join(counts)


def best_of(repeats: int, fn):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def measure(arpa: Path, lang: Path, work: Path, repeats: int) -> dict:
    from asr.graph import lm_fst, make_graph, num_arcs

    def g():
        with tempfile.TemporaryDirectory(dir=work) as d:
            fst, _ = lm_fst(arpa, Path(d))
            return fst

    g_s, G = best_of(repeats, g)
    G.write(str(work / "G.fst"))
    tlg_s, info = best_of(repeats, lambda: make_graph(lang, arpa, work / "graph"))
    return {
        "arpa_mb": arpa.stat().st_size / 1e6,
        "g": (G.num_states, num_arcs(G), (work / "G.fst").stat().st_size / 1e6, g_s),
        "tlg": (info["states"], info["arcs"], (work / "graph" / "TLG.fst").stat().st_size / 1e6, tlg_s),
        "words": f"{info['spelled']}/{info['words'] - 4}",
    }


# (row name, recipe, corpus dir under SHARED, LM order, unit)
RECIPES = [
    ("yesno", "yesno", "yesno/waves_yesno", 2, "char"),
    ("fsdd (official split)", "fsdd", "fsdd", 2, "char"),
    ("an4", "an4", "an4_mfc", 3, "char"),
    ("speechocean762", "speechocean762", "speechocean762", 3, "char"),
    ("speechocean762 UNIT=phone", "speechocean762", "speechocean762", 3, "phone"),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="builds per graph; the fastest counts")
    args = ap.parse_args(argv)
    missing = [m for m in NEEDS if not have(m)]
    if missing:
        print(f"skipped: {', '.join(missing)} not installed (pip install 'asr[graph]')")
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_graph_") as tmp:
        tmp = Path(tmp)
        texts: dict[str, Path] = {}
        for name, recipe, sub, order, unit in RECIPES:
            corpus = SHARED / sub
            if not corpus.is_dir():
                print(f"  {name}: skipped: {corpus} not found (set ASR_SHARED_DATA)", file=sys.stderr)
                continue
            work = tmp / name.replace(" ", "_").replace("=", "_")
            work.mkdir()
            if recipe not in texts:
                texts[recipe] = prepare(recipe, corpus, tmp / f"data_{recipe}")
            text = texts[recipe]
            arpa = text.parent.parent / f"lm{order}.arpa"
            if not arpa.is_file():
                asr("build-lm", str(text), "--order", str(order), "-o", str(arpa))
            lexicon = ["--lexicon", str(text.parent.parent / "local" / "lexicon.txt")] if unit == "phone" else []
            asr("make-tokens", str(text), str(work / "lang"), "--unit", unit, *lexicon)
            n_utts = sum(1 for _ in open(text, encoding="utf-8"))
            m = measure(arpa, work / "lang", work, args.repeats)
            rows.append((name, f"{order}-gram ({ngrams(arpa)}), {n_utts} utts", unit, m))
            print(f"  {name}: G {m['g'][3]:.2f} s, TLG {m['tlg'][3]:.2f} s", file=sys.stderr)
        arpa, lang = synthetic(tmp / "synthetic")
        m = measure(arpa, lang, tmp / "synthetic", args.repeats)
        rows.append(("bench/decode.py synthetic", f"3-gram ({ngrams(arpa)}), 3000 sents", "char", m))

    print(
        f"\nTLG = T o det(L o G) by asr.graph.make_graph (<space> required for chars), 1 thread, "
        f"best of {args.repeats}; baseline: G alone (kaldilm arpa2fst in a child process, as make_graph "
        f"runs it first); words: LM words the units spell / LM words\n"
    )
    print(
        "| recipe | LM (n-grams) | units | words | ARPA MB | G states | G arcs | G MB | G s "
        "| TLG states | TLG arcs | TLG MB | TLG build s | TLG/G arcs | TLG/G build time |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, lm, unit, m in rows:
        gs, ga, gmb, gt = m["g"]
        ts, ta, tmb, tt = m["tlg"]
        print(
            f"| {name} | {lm} | {unit} | {m['words']} | {m['arpa_mb']:.3f} | {gs:,} | {ga:,} | {gmb:.3f} | {gt:.2f} "
            f"| {ts:,} | {ta:,} | {tmb:.3f} | {tt:.2f} | {ta / ga:.1f} | {tt / gt:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
