"""TLG graphs (asr make-graph) and WFST decoding: which CTC strings a graph accepts, hand-computed
best paths, agreement with the prefix beam search + lexicon on synthetic posteriors, phone lexicons."""

from __future__ import annotations

import argparse
import itertools
import math
import re
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("kaldifst")
pytest.importorskip("kaldi_decoder")
pytest.importorskip("kaldilm")

import kaldifst  # noqa: E402

from asr.cli import main  # noqa: E402
from asr.decoders import DecodeConfig, make_decoder, words_from_tokens  # noqa: E402
from asr.errors import AsrError  # noqa: E402
from asr.graph import make_graph, read_symbols  # noqa: E402

SYMS = ["<blk>", "<unk>", "<space>", "A", "B", "C"]
BLK, UNK, SP, A, B, C = range(6)
SPELLING = {(A, B): "AB", (B, A): "BA", (C,): "C", (UNK,): "<unk>"}

# log10; the bigrams a test relies on beat their backoff paths (backoff -1 plus a unigram <= -1).
ARPA = """\\data\\
ngram 1=6
ngram 2=6

\\1-grams:
-1.0\t</s>
-99\t<s>\t-1.0
-1.5\tAB\t-1.0
-1.0\tBA\t-1.0
-1.0\tC\t-1.0
-2.0\t<unk>

\\2-grams:
-2.0\t<s>\tAB
-0.1\t<s>\tBA
-0.5\t<s>\tC
-0.2\tAB\t</s>
-0.2\tBA\t</s>
-0.3\tC\t</s>

\\end\\
"""


def write_lang(path, symbols: list[str], lexicon: str | None = None):
    path.mkdir(parents=True, exist_ok=True)
    (path / "tokens.txt").write_text("".join(f"{s} {i}\n" for i, s in enumerate(symbols)))
    if lexicon is not None:
        (path / "lexicon.txt").write_text(lexicon)
    return path


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """Char graphs over SYMS for words AB, BA, C (and <unk>): ``{space mode: graph dir}``."""
    root = tmp_path_factory.mktemp("wfst")
    (root / "lm.arpa").write_text(ARPA)
    lang = write_lang(root / "lang", SYMS)
    for mode in ("optional", "required"):
        make_graph(lang, root / "lm.arpa", root / mode, mode)
    return {mode: root / mode for mode in ("optional", "required")}


def load(graph_dir) -> tuple[kaldifst.StdVectorFst, list[str]]:
    return kaldifst.StdVectorFst.read(str(graph_dir / "TLG.fst")), read_symbols(graph_dir / "words.txt")


def accepted(graph: tuple[kaldifst.StdVectorFst, list[str]], frames: list[int]) -> list[str] | None:
    """The words TLG's best path gives the frame labels ``frames`` (token ids), or None if it rejects them."""
    tlg, words = graph
    acceptor = kaldifst.make_linear_acceptor([f + 1 for f in frames])
    both = kaldifst.compose(acceptor, tlg)
    if both.num_states == 0:
        return None
    ok, _, olabels, _ = kaldifst.get_linear_symbol_sequence(kaldifst.shortest_path(both))
    assert ok
    return [words[w] for w in olabels]


def reference(frames: list[int], required: bool) -> list[str] | None:
    """What the graph must do with ``frames``: CTC-collapse them, split at spaces, spell each piece."""
    tokens = [t for i, t in enumerate(frames) if t != BLK and (i == 0 or t != frames[i - 1])]
    chunks, cur = [], []
    for t in tokens + [SP]:
        if t == SP:
            if cur:
                chunks.append(tuple(cur))
            cur = []
        else:
            cur.append(t)
    words = []
    for chunk in chunks:
        # These spellings never overlap, so a chunk splits into words in at most one way.
        i = 0
        while i < len(chunk):
            for n in (1, 2):
                if chunk[i : i + n] in SPELLING and (not required or len(chunk) == n):
                    words.append(SPELLING[chunk[i : i + n]])
                    i += n
                    break
            else:
                return None
    return words


@pytest.mark.parametrize("mode", ["optional", "required"])
def test_tlg_accepts_exactly_the_ctc_strings_of_word_sequences(graphs, mode):
    g = load(graphs[mode])
    assert accepted(g, [BLK, A, A, BLK, B]) == ["AB"]
    assert accepted(g, [A, C]) is None
    assert accepted(g, [A, BLK, A]) is None  # two A's, no word
    assert accepted(g, [C, C, C]) == ["C"]  # repeats collapse
    assert accepted(g, [A, B, SP, B, A]) == ["AB", "BA"]
    assert accepted(g, [SP, C, SP, SP, BLK, SP, C, SP]) == ["C", "C"]
    # Words without <space> between them: only where it is optional.
    assert accepted(g, [C, BLK, C]) == (["C", "C"] if mode == "optional" else None)
    assert accepted(g, [A, B, BLK, B, A]) == (["AB", "BA"] if mode == "optional" else None)
    assert accepted(g, []) == []
    required = mode == "required"
    for n in range(1, 5):
        for frames in itertools.product(range(len(SYMS)), repeat=n):
            assert accepted(g, list(frames)) == reference(list(frames), required), frames


def posteriors(rows: list[dict[int, float]], vocab: int = len(SYMS)) -> torch.Tensor:
    """(1, T, V) log-probs from per-frame probabilities; unnamed tokens share what is left equally."""
    out = np.zeros((len(rows), vocab))
    for t, row in enumerate(rows):
        rest = (1.0 - sum(row.values())) / (vocab - len(row))
        out[t] = [row.get(k, rest) for k in range(vocab)]
    return torch.from_numpy(np.log(out)).unsqueeze(0)


LN10 = math.log(10)


@pytest.mark.parametrize("scale, words", [(1.0, ["BA"]), (5.0, ["AB"])])
def test_wfst_finds_the_hand_computed_best_path(graphs, scale, words):
    # A B is acoustically best (.6 * .6), B A (.35 * .35) is what the LM prefers (-0.3 vs -2.2 log10
    # with </s>); the acoustic scale decides. Score: log P(path) + log P_lm / scale.
    lp = posteriors([{A: 0.6, B: 0.35}, {A: 0.35, B: 0.6}])
    cfg = DecodeConfig(decoder="wfst", graph=str(graphs["optional"]), acoustic_scale=scale)
    ((h,),) = make_decoder(SYMS, cfg).decode(lp, torch.tensor([2]))
    acoustic = {"AB": math.log(0.36), "BA": math.log(0.35 * 0.35)}
    lm = {"AB": -2.2 * LN10, "BA": -0.3 * LN10}
    assert h.words == words
    assert h.tokens == ([A, B] if words == ["AB"] else [B, A]) and h.timesteps == [0, 1]
    assert h.score == pytest.approx(acoustic[words[0]] + lm[words[0]] / scale, abs=1e-3)
    # No acoustic scale: 1 / alpha, the balance of the beam search's LM weight.
    ((h2,),) = make_decoder(SYMS, DecodeConfig(decoder="wfst", graph=cfg.graph, alpha=1 / scale)).decode(
        lp, torch.tensor([2])
    )
    assert h2.words == words


def test_blank_scale_and_timesteps(graphs):
    # "C" spikes on frame 2 but blank is likelier there; dividing blank by 4 lets C through.
    lp = posteriors([{BLK: 0.9}, {BLK: 0.9}, {BLK: 0.55, C: 0.4}, {BLK: 0.9}])
    cfg = DecodeConfig(decoder="wfst", graph=str(graphs["optional"]), acoustic_scale=100.0)
    ((h,),) = make_decoder(SYMS, cfg).decode(lp, torch.tensor([4]))
    assert h.words == [] and h.tokens == []
    cfg.blank_scale = 4.0
    ((h,),) = make_decoder(SYMS, cfg).decode(lp, torch.tensor([4]))
    assert h.words == ["C"] and h.tokens == [C] and h.timesteps == [2]


def test_batch_equals_single(graphs):
    torch.manual_seed(0)
    lp = torch.log_softmax(torch.randn(3, 12, len(SYMS)) * 3, -1)
    lens = torch.tensor([12, 7, 0])
    dec = make_decoder(SYMS, DecodeConfig(decoder="wfst", graph=str(graphs["required"])))
    batch = dec.decode(lp, lens)
    for i in range(3):
        (single,) = dec.decode(lp[i : i + 1, : int(lens[i])], lens[i : i + 1])
        assert batch[i][0] == single[0]
    assert batch[2][0].words == [] and batch[2][0].tokens == []


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """40 synthetic utterances ``(log_probs (40, 500, 29), refs)``, a 3-gram LM and its word list."""
    from asr.lm.arpa import write_arpa
    from asr.lm.kneser_ney import estimate
    from bench.reference_decoders import synthetic_corpus, synthetic_log_probs

    root = tmp_path_factory.mktemp("synthetic")
    corpus = synthetic_corpus(1540, seed=5)
    lp, refs = synthetic_log_probs(corpus[:40], seed=5, confusion=0.5)
    write_arpa(*estimate(corpus[40:], 3), root / "lm.arpa")
    (root / "words.txt").write_text("".join(f"{w}\n" for w in sorted({w for s in corpus[40:] for w in s})))
    return root, lp, refs


@pytest.mark.parametrize("mode", ["optional", "required"])
def test_wfst_agrees_with_prefix_beam_and_lexicon(synthetic, mode, tmp_path):
    from bench.reference_decoders import SYMBOLS

    root, lp, refs = synthetic
    n, alpha = len(refs), 0.5
    info = make_graph(write_lang(tmp_path / "lang", SYMBOLS), root / "lm.arpa", tmp_path / "graph", mode)
    assert info["spelled"] == info["words"] - 4  # all but <eps>, #0, <s>, </s>
    lens = torch.full((n,), lp.shape[1])
    wfst = make_decoder(SYMBOLS, DecodeConfig(decoder="wfst", graph=str(tmp_path / "graph"), alpha=alpha))
    beam = make_decoder(SYMBOLS, DecodeConfig(beam=32, lm=str(root / "lm.arpa"), words=str(root / "words.txt"),
                                              alpha=alpha, beta=0.0))
    w, b = [h[0] for h in wfst.decode(lp, lens)], [h[0] for h in beam.decode(lp, lens)]
    agree = sum(x.words == y.words for x, y in zip(w, b, strict=True))
    right = sum(x.words == r for x, r in zip(w, refs, strict=True))
    print(f"\n{mode} <space>: wfst vs prefix beam + lexicon agree on {agree}/{n}, wfst right on {right}/{n}; {info}")
    assert agree >= 0.95 * n
    # Where <space> is optional the best single path may skip a weak one the beam search needs.
    sp = SYMBOLS.index("<space>") if mode == "optional" else -1
    for x, y in zip(w, b, strict=True):
        if x.words == y.words:
            assert [t for t in x.tokens if t != sp] == [t for t in y.tokens if t != sp]
        if mode == "required":  # then the tokens spell the words, as every other decoder's do
            assert words_from_tokens(x.tokens, SYMBOLS, SYMBOLS.index("<space>")) == x.words


PHONES = ["<blk>", "<unk>", "a", "b", "k", "t"]
LEXICON = "A a\nAT a t\nBAT b a t\nCAT k a t\nTACK t a k\nTAK t a k\n"
PHONE_ARPA = """\\data\\
ngram 1=9
ngram 2=2

\\1-grams:
-1.0\t</s>
-99\t<s>\t-0.5
-1.0\tA\t-0.5
-1.0\tAT\t-0.5
-1.0\tBAT\t-0.5
-1.0\tCAT\t-0.5
-2.0\tTACK\t-0.5
-1.0\tTAK\t-0.5
-3.0\t<unk>

\\2-grams:
-0.3\t<s>\tCAT
-0.3\tAT\t</s>

\\end\\
"""


def test_phone_lexicon_graph_gives_words(tmp_path):
    lang = write_lang(tmp_path / "lang", PHONES, LEXICON)
    (tmp_path / "lm.arpa").write_text(PHONE_ARPA)
    info = make_graph(lang, tmp_path / "lm.arpa", tmp_path / "graph")
    assert info["space"] is None and info["disambig"] == 3  # #0, and #1 #2 for A (a prefix) and TACK/TAK
    ids = {p: i for i, p in enumerate(PHONES)}
    seq = "k a t a t b a t a t a k".split()
    rows = []
    for p in seq:
        rows += [{ids[p]: 0.9}, {BLK: 0.9}]
    dec = make_decoder(PHONES, DecodeConfig(decoder="wfst", graph=str(tmp_path / "graph"), acoustic_scale=1.0))
    ((h,),) = dec.decode(posteriors(rows, len(PHONES)), torch.tensor([len(rows)]))
    assert h.words == ["CAT", "AT", "BAT", "A", "TAK"]  # TAK: the likelier of two homophones
    assert h.tokens == [ids[p] for p in seq] and h.timesteps == list(range(0, 2 * len(seq), 2))


def test_errors(graphs, tmp_path, monkeypatch):
    with pytest.raises(AsrError, match="--graph"):
        make_decoder(SYMS, DecodeConfig(decoder="wfst"))
    with pytest.raises(AsrError, match="no TLG.fst"):
        make_decoder(SYMS, DecodeConfig(decoder="wfst", graph=str(tmp_path)))
    with pytest.raises(AsrError, match="does not match"):
        make_decoder(SYMS[:-1], DecodeConfig(decoder="wfst", graph=str(graphs["optional"])))
    junk = tmp_path / "junk"
    junk.mkdir()
    for name in ("words.txt", "tokens.txt"):
        (junk / name).write_bytes((graphs["optional"] / name).read_bytes())
    (junk / "TLG.fst").write_text("not an FST\n")
    with pytest.raises(AsrError, match="not an OpenFst file"):
        make_decoder(SYMS, DecodeConfig(decoder="wfst", graph=str(junk)))
    lang = write_lang(tmp_path / "lang", SYMS)
    (tmp_path / "bad.arpa").write_text(ARPA.replace("-0.2\tAB", "x\tAB"))
    with pytest.raises(AsrError, match="line 17.*invalid n-gram logprob"):
        make_graph(lang, tmp_path / "bad.arpa", tmp_path / "g")
    (tmp_path / "nums.arpa").write_text(ARPA.replace("AB", "12").replace("BA", "34").replace("\tC", "\t5"))
    with pytest.raises(AsrError, match="none of its words"):
        make_graph(lang, tmp_path / "nums.arpa", tmp_path / "g")
    (tmp_path / "lm.arpa").write_text(ARPA)
    with pytest.raises(AsrError, match="lexicon.txt"):
        make_graph(write_lang(tmp_path / "phones", PHONES), tmp_path / "lm.arpa", tmp_path / "g")
    monkeypatch.setitem(sys.modules, "kaldi_decoder", None)
    with pytest.raises(AsrError, match=r"pip install 'asr\[graph\]'"):
        make_decoder(SYMS, DecodeConfig(decoder="wfst", graph=str(graphs["optional"])))


def test_cli(tmp_path, capsys):
    from asr.decode import _config

    (tmp_path / "lm.arpa").write_text(ARPA)
    lang = write_lang(tmp_path / "lang", SYMS)
    assert main(["make-graph", str(lang), "--lm", str(tmp_path / "lm.arpa"), "-o", str(tmp_path / "g")]) == 0
    assert "TLG.fst" in capsys.readouterr().out
    assert {p.name for p in (tmp_path / "g").iterdir()} == {"TLG.fst", "words.txt", "tokens.txt", "info.yaml"}
    args = argparse.Namespace(conf=None, decoder=None, set=[], lm=None, nbest=None, graph=str(tmp_path / "g"))
    cfg = _config(args)
    assert cfg.decoder == "wfst" and cfg.graph == str(tmp_path / "g")
    args.lm = str(tmp_path / "lm.arpa")
    with pytest.raises(AsrError, match="compiled into its graph"):
        _config(args)
    args.lm, args.decoder = None, "beam"
    with pytest.raises(AsrError, match="--graph needs the wfst decoder"):
        _config(args)


def test_decode_and_transcribe_with_a_graph(tmp_path, capsys):
    """``asr decode --graph`` and ``asr transcribe --graph`` on a briefly trained yesno model: the plumbing."""
    from conftest import SHARED_DATA
    from trainutil import lang_dir, yesno_dir

    from asr.datadir import read_kv
    from asr.models import ModelConfig
    from asr.schedule import ScheduleConfig
    from asr.train import OptimConfig, TrainConfig, train

    if not SHARED_DATA.is_dir():
        pytest.skip(f"real corpora not found at {SHARED_DATA}")
    data = yesno_dir(SHARED_DATA, tmp_path / "data", 4, stack=3, subsample=3)
    lang = lang_dir(data, tmp_path / "lang")
    cfg = TrainConfig(model=ModelConfig(num_layers=1, hidden=16, dropout=0.0), optim=OptimConfig(lr=0.01),
                      schedule=ScheduleConfig(name="none"), max_epochs=1, frames_per_batch=3000)
    train(data, data, lang, tmp_path / "exp", cfg)
    arpa = ARPA.replace("\tAB", "\tYES").replace("\tBA", "\tNO")
    (tmp_path / "lm.arpa").write_text(arpa)
    graph = tmp_path / "graph"
    assert main(["make-graph", str(lang), "--lm", str(tmp_path / "lm.arpa"), "-o", str(graph)]) == 0
    assert main(["decode", str(tmp_path / "exp"), str(data), "--graph", str(graph)]) == 0
    hyps = read_kv(tmp_path / "exp" / f"decode_{data.name}_wfst" / "text")
    assert sorted(hyps) == sorted(read_kv(data / "text"))
    assert {w for h in hyps.values() for w in h.split()} <= {"YES", "NO", "<unk>"}
    wav = sorted((SHARED_DATA / "yesno" / "waves_yesno").glob("*.wav"))[0]
    capsys.readouterr()
    assert main(["transcribe", str(tmp_path / "exp"), str(wav), "--graph", str(graph)]) == 0
    key, *words = capsys.readouterr().out.split()
    # transcribe splits words at pauses too (words_with_times), which this barely trained model has inside words
    assert key == str(wav) and re.fullmatch("(YES|NO|<unk>)*", "".join(words))
