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

    python bench/decode.py                 # ~1 min on one core
    python bench/decode.py --utts 50 --beams 32 --wfst-beams 16
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


def timed(dec, lp: torch.Tensor, lens: torch.Tensor, repeats: int) -> tuple[float, list[str]]:
    """Best-of-``repeats`` mean ms per utterance (one utterance per call) and the 1-best texts."""
    dec.decode(lp[:1], lens[:1])  # warm-up: imports, allocations
    lm = getattr(dec, "lm", None)
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
    args = ap.parse_args(argv)
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

    def run(setting: str, name: str, make) -> None:
        try:
            dec = make()
        except Exception as e:  # a competitor that fails to build is reported, not fatal
            print(f"  {name} ({setting}): skipped: {e}", file=sys.stderr)
            return
        ms, texts = timed(dec, lp, lens, args.repeats)
        rows.append((setting, name, ms, jiwer.wer(ref_text, texts)))
        print(f"  {setting:24s} {name:32s} {ms:9.2f} ms/utt  WER {rows[-1][3]:.3f}", file=sys.stderr)

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
    print("| setting | decoder | ms/utt | WER |\n|---|---|---:|---:|")
    for s, n, m, w in rows:
        print(f"| {s} | {n} | {m:.2f} | {w:.3f} |")
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
    goals += wfst_ratios(rows, lm_name)
    if goals:
        print("\n" + "\n".join(goals))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
