"""Decoder speed and accuracy side by side: ms per utterance and WER on synthetic peaky log-probs.

Each utterance is 5 s (500 frames, 29 tokens: blank, <unk>, <space>, A-Z) from
``bench.reference_decoders.synthetic_log_probs``; the word 3-gram LM is estimated with ``asr build-lm``'s
Kneser-Ney on 3,000 other sentences of the same synthetic language. Competitors run on the very
same log-probs and ARPA file, each with its own default pruning, and are skipped when not
installed (``pip install 'asr[compare]'``). Our LM cache is cleared before every utterance so
repeated words across utterances do not flatter us.

The WFST decoder (``--decoder wfst``, Kaldi's FasterDecoder) runs over a TLG graph that
``asr.graph.make_graph`` compiles from the same ARPA file and a char lang dir of the 29 tokens
(``<space>`` required between words, the default), built in a temp dir and timed (its size is
printed too). It is compared with flashlight's lexicon decoder and our prefix beam search +
lexicon at the same WER: against the fastest 3-gram row of each whose WER is no worse. The graph
weighs the LM by ``alpha`` (acoustic scale ``1 / alpha``) but has no word bonus (``beta``); it is
skipped without ``pip install 'asr[graph]'``. Graph size and build time for every recipe's LM:
``bench/graph.py``.

The grid (``--grid``, on by default) runs the prefix beam search and flashlight at beam 8 over token
tables of 29 chars and 500 / (``--big``) 5,000 BPE-like units (letter n-grams of the words,
``unit_symbols``) x no LM / a small 3-gram / (``--big``) a >= 1 M n-gram 3-gram, all KenLM. Its utterances and LMs use a
real vocabulary: every transcript under ``../shared/data`` (see its README) plus the words of the
speechocean762 lexicon; no large public-domain English text ships with the installed packages, so
the big LM's text is those transcripts plus sentences of a seeded sparse word process over that
vocabulary (``seeded_text``), estimated with ``asr build-lm``'s Kneser-Ney (timed, cached under
``~/.cache/asr-bench``). Ours is timed one utterance per call and the whole batch in one call
(``decode`` searches all utterances of a batch together, frame step by frame step); memory is the
peak RSS growth while the decoder is built (LM included) and decodes the batch.

    python bench/decode.py                 # ~3 min on one core
    python bench/decode.py --utts 50 --beams 32 --wfst-beams 16
    python bench/decode.py --big           # + 5,000 units and the >= 1 M n-gram LM (~10 min more)
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for bench.* as a script

import jiwer  # noqa: E402
import torch  # noqa: E402

from asr.decoders import DecodeConfig, make_decoder  # noqa: E402
from asr.decoders.beam import BeamSearchDecoder  # noqa: E402
from asr.decoders.greedy import GreedyDecoder  # noqa: E402
from asr.lm.arpa import write_arpa  # noqa: E402
from asr.lm.kneser_ney import estimate  # noqa: E402
from bench.reference_decoders import (  # noqa: E402
    SYMBOLS,
    FastCTCDecode,
    Flashlight,
    PyCTCDecode,
    synthetic_corpus,
    synthetic_log_probs,
)


def have(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def lm_of(dec):
    """The word LM object of one of our decoders (its query cache is cleared between timings)."""
    return getattr(dec, "lm", None) or getattr(getattr(dec, "scorer", None), "lm", None)


def timed_batch(dec, lp: torch.Tensor, lens: torch.Tensor, repeats: int) -> float:
    """Best-of-``repeats`` ms per utterance when the whole batch is decoded in one call."""
    best = float("inf")
    lm = lm_of(dec)
    for _ in range(repeats):
        if lm is not None:
            lm._cache.clear()
        t0 = time.perf_counter()
        dec.decode(lp, lens)
        best = min(best, (time.perf_counter() - t0) / len(lp) * 1000)
    return best


def timed(dec, lp: torch.Tensor, lens: torch.Tensor, repeats: int) -> tuple[float, list[str]]:
    """Best-of-``repeats`` mean ms per utterance (one utterance per call) and the 1-best texts."""
    dec.decode(lp[:1], lens[:1])  # warm-up: imports, allocations
    lm = lm_of(dec)
    best, texts = float("inf"), []
    for _ in range(repeats):
        total, texts = 0.0, []
        for i in range(len(lp)):
            if lm is not None:
                lm._cache.clear()
            t0 = time.perf_counter()
            h = dec.decode(lp[i : i + 1], lens[i : i + 1])[0][0]
            total += time.perf_counter() - t0
            texts.append(" ".join(h.words))
        best = min(best, total / len(lp) * 1000)
    return best, texts


WFST = "ours (wfst, Kaldi FasterDecoder)"


def build_graph(tmp: Path, arpa: str) -> dict:
    """TLG for the bench's 29 char tokens and LM in ``tmp/graph``: make_graph's info + build_s, mb."""
    from asr.graph import make_graph
    from asr.tokens import TokenTable

    TokenTable(SYMBOLS).save(tmp / "lang")
    t0 = time.perf_counter()
    info = make_graph(tmp / "lang", arpa, tmp / "graph")
    info["build_s"] = time.perf_counter() - t0
    info["mb"] = (tmp / "graph" / "TLG.fst").stat().st_size / 1e6
    return info


def wfst_ratios(rows: list[tuple[str, str, float, float]], lm_name: str) -> list[str]:
    """WFST ms/utt over the fastest 3-gram row of flashlight + lexicon and ours + lexicon at a WER no worse."""
    wfst = {s: (m, w) for s, n, m, w in rows if n == WFST}
    if not wfst:
        return []
    default = f"wfst beam {DecodeConfig.wfst_beam:g}, 3-gram TLG"
    s_w = default if default in wfst else next(iter(wfst))
    m_w, w_w = wfst[s_w]
    out = []
    for name in ("flashlight + lexicon", f"ours + lexicon ({lm_name})"):
        cands = [(m, s, w) for s, n, m, w in rows if n == name and s.endswith(", 3-gram")]
        if not cands:
            continue
        same = [c for c in cands if c[2] <= w_w + 1e-9]
        m, s, w = min(same) if same else min(cands, key=lambda c: (c[2], c[0]))
        which = f"fastest 3-gram row at WER <= {w_w:.3f}" if same else f"no 3-gram row reaches WER {w_w:.3f}, best"
        out.append(f"{s_w} (WER {w_w:.3f}) / {name}, {which} ({s}, WER {w:.3f}): {m_w / m:.2f}")
    return out


# ---- the grid: vocabulary x LM size ----------------------------------------------------------------
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "asr-bench"


def peak_mb(fn):
    """``fn()`` and the growth of this process's peak RSS while it ran (MB; -1 where the kernel
    cannot reset the peak)."""
    def status(key: str) -> float:
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) / 1024
        return -1.0

    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        base = status("VmRSS")
    except OSError:
        return fn(), -1.0
    out = fn()
    return out, status("VmHWM") - base


def grid_lms(tmp: Path, big: bool) -> tuple[list[list[str]], dict[str, tuple[str | None, str]], list[str]]:
    """The grid's test sentences, its LMs ``{name: (arpa or None, description)}`` and its vocabulary."""
    from bench.reference_decoders import seeded_text, transcripts

    real, found = transcripts(str(SHARED))
    lex = SHARED / "speechocean762" / "resource" / "lexicon.txt"
    words = {w for s in real for w in s}
    if lex.exists():
        words |= {line.split()[0].replace("'", "") for line in open(lex, encoding="utf-8") if line.strip()}
    vocab = sorted(w for w in words if w.isalpha())
    if not vocab:
        raise SystemExit(f"no transcripts under {SHARED}: the grid needs the shared corpora")
    tests = seeded_text(vocab, 40, seed=1)
    small = str(tmp / "small.arpa")
    write_arpa(*estimate(seeded_text(vocab, 3000, seed=2), order=3), small)
    lms: dict[str, tuple[str | None, str]] = {"none": (None, "no LM"), "3-gram small": (small, "3,000 sentences")}
    if big:
        CACHE.mkdir(parents=True, exist_ok=True)
        path = CACHE / f"big_{len(vocab)}_{len(real)}_150k.arpa"
        note = "cached"
        if not path.exists():
            t0 = time.perf_counter()
            text = real + seeded_text(vocab, 150_000, seed=0)
            write_arpa(*estimate(text, order=3), path)
            note = f"built by asr build-lm's estimation in {time.perf_counter() - t0:.0f} s"
        from asr.lm.arpa import declared_counts

        n = sum(declared_counts(path).values())
        lms["3-gram big"] = (str(path), f"{n / 1e6:.2f} M n-grams, {note}")
    srcs = ", ".join(str(Path(f).relative_to(SHARED)) for f in found)
    print(f"grid text: {len(real):,} transcripts ({srcs}) + seeded_text over their {len(vocab):,} words")
    return tests, lms, vocab


def grid_cell(symbols, lp, lens, refs, arpa, vocab, beam, repeats) -> list[tuple[str, float, float, float, float]]:
    """``(decoder, ms/utt one per call, ms/utt batched, peak MB, WER)`` of ours and flashlight."""
    from asr.lm.backends import load_lm

    out = []
    cfg = DecodeConfig(beam=beam)
    makers = [("ours", lambda: BeamSearchDecoder(symbols, cfg, lm=load_lm(arpa) if arpa else None))]
    if have("flashlight"):
        lex = vocab if arpa else None
        makers.append(("flashlight", lambda: Flashlight(symbols, beam, lm=arpa, lexicon=lex)))
    for name, make in makers:
        try:
            (dec, hyps), mb = peak_mb(lambda make=make: (d := make(), d.decode(lp, lens)))
        except Exception as e:  # a competitor that fails to build is reported, not fatal
            print(f"  {name}: skipped: {e}", file=sys.stderr)
            continue
        one, texts = timed(dec, lp, lens, repeats)
        batch = timed_batch(dec, lp, lens, repeats)
        out.append((name, one, batch, mb, jiwer.wer([" ".join(r) for r in refs], texts)))
    return out


def grid(args, tmp: Path) -> None:
    """Vocabulary x LM size at beam ``args.grid_beam``: ours vs flashlight (+KenLM), ms/utt, memory, WER."""
    from bench.reference_decoders import unit_symbols

    tests, lms, vocab = grid_lms(tmp, args.big)
    rows = []
    for size in args.vocabs:
        symbols = SYMBOLS if size <= len(SYMBOLS) else unit_symbols(vocab, size)
        lp, refs = synthetic_log_probs(tests[: args.grid_utts], symbols=symbols, seed=3)
        lens = torch.full((len(lp),), lp.shape[1])
        for lm_name, (arpa, _) in lms.items():
            for name, one, batch, mb, wer in grid_cell(symbols, lp, lens, refs, arpa, vocab, args.grid_beam,
                                                         args.repeats):
                rows.append((len(symbols), lm_name, name, one, batch, mb, wer))
                print(f"  V={len(symbols)} {lm_name:13s} {name:10s} {one:8.2f} {batch:8.2f} ms/utt "
                      f"{mb:7.0f} MB WER {wer:.3f}", file=sys.stderr)
    print(f"\nGrid: beam {args.grid_beam}, {args.grid_utts} utterances of 500 frames; LMs (KenLM for both): "
          + "; ".join(f"{k}: {d}" for k, (_, d) in lms.items()))
    print("| V | LM | decoder | ms/utt (1 per call) | ms/utt (batch) | utt/s (batch) | peak RSS MB | WER |")
    print("|---:|---|---|---:|---:|---:|---:|---:|")
    for V, lm_name, name, one, batch, mb, wer in rows:
        print(f"| {V} | {lm_name} | {name} | {one:.2f} | {batch:.2f} | {1000 / batch:.0f} | {mb:.0f} | {wer:.3f} |")
    fl = {(V, n): (o, b) for V, n, d, o, b, _, _ in rows if d == "flashlight"}
    print(f"\nbeam {args.grid_beam} ratio ours / flashlight (1 per call; batched: ours batch / flashlight batch):")
    for V, lm_name, name, one, batch, _, _ in rows:
        if name == "ours" and (V, lm_name) in fl:
            f1, fb = fl[(V, lm_name)]
            print(f"  V={V}, {lm_name}: {one / f1:.2f}; batched {batch / fb:.2f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--utts", type=int, default=20)
    ap.add_argument("--beams", type=int, nargs="+", default=[8, 32, 100])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--beta", type=float, default=1.0)
    ap.add_argument("--lm-backend", choices=["auto", "arpa", "kenlm"], default="auto")
    ap.add_argument("--wfst-beams", type=float, nargs="+", default=[8.0, 16.0],
                    help="Kaldi --beam values for the WFST decoder (16 is DecodeConfig's default)")
    ap.add_argument("--no-grid", dest="grid", action="store_false", help="skip the vocabulary x LM grid")
    ap.add_argument("--big", action="store_true", help="add the >= 1 M n-gram LM and 5,000 units to the grid")
    ap.add_argument("--vocabs", type=int, nargs="+", help="token table sizes (default 29 500, --big: + 5000)")
    ap.add_argument("--grid-utts", type=int, default=10)
    ap.add_argument("--grid-beam", type=int, default=8)
    args = ap.parse_args(argv)
    args.vocabs = args.vocabs or ([29, 500, 5000] if args.big else [29, 500])
    torch.set_num_threads(1)

    corpus = synthetic_corpus(3000 + args.utts)
    lp, refs = synthetic_log_probs(corpus[: args.utts])
    lens = torch.full((args.utts,), lp.shape[1])
    ref_text = [" ".join(r) for r in refs]
    train = corpus[args.utts :]
    vocab = sorted({w for s in train for w in s})
    tmp = Path(tempfile.mkdtemp(prefix="bench_decode_"))
    arpa = str(tmp / "lm.arpa")
    write_arpa(*estimate(train, order=3), arpa)
    from asr.lm.backends import ArpaLM, load_lm

    lm = ArpaLM(arpa) if args.lm_backend == "arpa" else load_lm(arpa, args.lm_backend)
    (tmp / "words.txt").write_text("\n".join(vocab) + "\n")

    a, b = args.alpha, args.beta
    rows: list[tuple[str, str, float, float]] = []  # (setting, decoder, ms, wer)
    batched: dict[tuple[str, str], float] = {}  # ms/utt with the whole batch in one call

    def run(setting: str, name: str, make) -> None:
        try:
            dec = make()
        except Exception as e:  # a competitor that fails to build is reported, not fatal
            print(f"  {name} ({setting}): skipped: {e}", file=sys.stderr)
            return
        ms, texts = timed(dec, lp, lens, args.repeats)
        rows.append((setting, name, ms, jiwer.wer(ref_text, texts)))
        batched[(setting, name)] = mb = timed_batch(dec, lp, lens, args.repeats)
        print(f"  {setting:24s} {name:32s} {ms:9.2f} {mb:9.2f} ms/utt  WER {rows[-1][3]:.3f}", file=sys.stderr)

    pyctc, fl, fast = have("pyctcdecode") and have("kenlm"), have("flashlight"), have("fast_ctc_decode")
    run("greedy", "ours", partial(GreedyDecoder, SYMBOLS))
    for beam in args.beams:
        s = f"beam {beam}, no LM"
        run(s, "ours", partial(BeamSearchDecoder, SYMBOLS, DecodeConfig(beam=beam)))
        if pyctc:
            run(s, "pyctcdecode", partial(PyCTCDecode, SYMBOLS, beam))
        if fl:
            run(s, "flashlight (lexicon-free)", partial(Flashlight, SYMBOLS, beam))
        if fast:
            run(s, "fast-ctc-decode (cut 0.001)", partial(FastCTCDecode, SYMBOLS, beam))
    lm_name = type(lm).__name__
    for beam in args.beams:
        s = f"beam {beam}, 3-gram"
        cfg = DecodeConfig(beam=beam, alpha=a, beta=b)
        run(s, f"ours ({lm_name})", partial(BeamSearchDecoder, SYMBOLS, cfg, lm=lm))
        lex = DecodeConfig(beam=beam, alpha=a, beta=b, words=str(tmp / "words.txt"))
        run(s, f"ours + lexicon ({lm_name})", partial(BeamSearchDecoder, SYMBOLS, lex, lm=lm))
        if pyctc:
            run(s, "pyctcdecode", partial(PyCTCDecode, SYMBOLS, beam, lm=arpa, alpha=a, beta=b))
        if fl:
            run(s, "flashlight + lexicon", partial(Flashlight, SYMBOLS, beam, lm=arpa, lexicon=vocab, alpha=a, beta=b))
    graph = None
    if not all(map(have, ("kaldifst", "kaldi_decoder", "kaldilm"))):
        print("  wfst: skipped: kaldifst, kaldi-decoder and kaldilm are needed (pip install 'asr[graph]')",
              file=sys.stderr)
    else:
        try:
            graph = build_graph(tmp, arpa)
        except Exception as e:  # reported like a competitor that fails to build
            print(f"  wfst: skipped: make_graph failed: {e}", file=sys.stderr)
    for wb in args.wfst_beams if graph else []:
        cfg = DecodeConfig(decoder="wfst", graph=str(tmp / "graph"), alpha=a, wfst_beam=wb)
        run(f"wfst beam {wb:g}, 3-gram TLG", WFST, partial(make_decoder, SYMBOLS, cfg))

    ms = {(s, n): m for s, n, m, _ in rows}
    print(
        f"\n{args.utts} utterances of 500 frames x 29 tokens, best of {args.repeats}, 1 thread; "
        f"LM: 3-gram, {len(vocab)} words, alpha {a} beta {b}"
    )
    if graph:
        print(
            f"TLG (asr.graph.make_graph, <space> required): built in {graph['build_s']:.2f} s, "
            f"{graph['states']:,} states, {graph['arcs']:,} arcs, {graph['mb']:.1f} MB; "
            f"acoustic scale 1/alpha = {1 / a:g}, no word bonus; max_active {DecodeConfig.max_active}"
        )
    print()
    print("| setting | decoder | ms/utt | ms/utt (batch) | utt/s (batch) | WER |\n|---|---|---:|---:|---:|---:|")
    for s, n, m, w in rows:
        mb = batched[(s, n)]
        print(f"| {s} | {n} | {m:.2f} | {mb:.2f} | {1000 / mb:.0f} | {w:.3f} |")
    goals = []
    o32 = ms.get(("beam 32, no LM", "ours"))
    if o32 and ("beam 32, no LM", "pyctcdecode") in ms:
        goals.append(
            f"ours / pyctcdecode, beam 32 no LM: {o32 / ms[('beam 32, no LM', 'pyctcdecode')]:.3f} (goal <= 0.1)"
        )
    if o32 and ("beam 32, no LM", "fast-ctc-decode (cut 0.001)") in ms:
        goals.append(
            f"ours / fast-ctc-decode, beam 32 no LM: "
            f"{o32 / ms[('beam 32, no LM', 'fast-ctc-decode (cut 0.001)')]:.2f} (goal <= 2.5)"
        )
    flm = ms.get(("beam 32, 3-gram", "flashlight + lexicon"))
    if flm:
        for n in (f"ours ({lm_name})", f"ours + lexicon ({lm_name})"):
            if ("beam 32, 3-gram", n) in ms:
                goals.append(
                    f"{n} / flashlight + lexicon, beam 32 3-gram: {ms[('beam 32, 3-gram', n)] / flm:.2f} (goal <= 1.0)"
                )
    for beam in args.beams:
        s, f = f"beam {beam}, 3-gram", "flashlight + lexicon"
        for n in (f"ours ({lm_name})", f"ours + lexicon ({lm_name})"):
            if (s, n) in ms and (s, f) in ms:
                goals.append(
                    f"{n} / {f}, {s}: {ms[(s, n)] / ms[(s, f)]:.2f} one utterance per call, "
                    f"{batched[(s, n)] / batched[(s, f)]:.2f} batched (goal <= 1.0)"
                )
    goals += wfst_ratios(rows, lm_name)
    if goals:
        print("\n" + "\n".join(goals))
    if args.grid:
        grid(args, tmp)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
