"""BPE (sentencepiece) tokens: make-tokens, exact round trips, words from pieces in greedy and beam search."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA

from asr.cli import main
from asr.decoders import DecodeConfig, make_decoder
from asr.decoders.beam import BeamSearchDecoder
from asr.decoders.greedy import GreedyDecoder
from asr.decoders.hypothesis import Hypothesis, words_from_tokens
from asr.decoders.pieces import PieceSpeller, PieceTrie
from asr.errors import AsrError
from asr.lm.backends import ArpaLM
from asr.tokens import TokenTable, check_coverage, make_tokens
from asr.word_times import words_with_times

spm = pytest.importorskip("sentencepiece")

EXACT = dict(beam=10_000, nbest=10_000, token_min_logp=-1e9, beam_threshold=1e9, blank_skip=1.0)


def _transcripts(shared: Path) -> dict[str, list[str]]:
    """Real transcripts by corpus: speechocean762 train/test, an4 train/test (its ``(utt-id)`` tails cut)."""
    out = {}
    so = shared / "speechocean762"
    if (so / "train" / "text").is_file():
        for part in ("train", "test"):
            lines = (so / part / "text").read_text(encoding="utf-8").splitlines()
            out[f"so762_{part}"] = [ln.split(maxsplit=1)[1] for ln in lines if len(ln.split()) > 1]
    etc = shared / "an4_mfc" / "etc"
    if (etc / "an4_train.transcription").is_file():
        for part in ("train", "test"):
            lines = (etc / f"an4_{part}.transcription").read_text(encoding="utf-8").splitlines()
            texts = [re.sub(r"\([^()]*\)\s*$", "", ln).replace("<s>", "").replace("</s>", "") for ln in lines]
            out[f"an4_{part}"] = [" ".join(t.split()) for t in texts if t.split()]
    if not out:
        pytest.skip(f"no speechocean762 or an4 transcripts under {shared}")
    return out


def _text_file(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(f"u{i:05d} {t}\n" for i, t in enumerate(texts)), encoding="utf-8")
    return path


@pytest.mark.parametrize("unit", ["bpe", "unigram"])
def test_round_trip_is_exact_on_real_transcripts(tmp_path: Path, unit: str) -> None:
    corpora = _transcripts(SHARED_DATA)
    for name in [c for c in corpora if c.endswith("_train")]:
        test = corpora[name.replace("_train", "_test")]
        lang = tmp_path / f"{name}_{unit}"
        table = make_tokens(_text_file(tmp_path / f"{name}.txt", corpora[name]), lang, unit=unit, vocab_size=100)
        loaded = TokenTable.load(lang / "tokens.txt")
        assert loaded == table and loaded.unit == "bpe"
        for text in corpora[name] + test:
            ids, unknown = loaded.encode_counting(text)
            if unknown:  # only a test transcript can hold a character the training text lacks
                assert text in test
                continue
            assert loaded.decode(ids) == " ".join(text.split()), text
            assert words_from_tokens(ids, loaded.symbols, None) == text.split()


def test_tokens_txt_layout_and_sentencepiece_encoding(tmp_path: Path) -> None:
    texts = ["HELLO WORLD", "HELLO THERE", "WORLD OF WORDS", "THE OTHER WORLD"]
    make_tokens(_text_file(tmp_path / "text", texts), tmp_path / "lang", unit="bpe", vocab_size=24)
    lines = (tmp_path / "lang" / "tokens.txt").read_text(encoding="utf-8").splitlines()
    syms = [ln.split()[0] for ln in lines]
    assert lines[:2] == ["<blk> 0", "<unk> 1"] and len(lines) == 25
    assert [ln.split()[1] for ln in lines] == [str(i) for i in range(25)]
    assert not {"<s>", "</s>", "<pad>"} & set(syms) and len(set(syms)) == len(syms)
    assert (tmp_path / "lang" / "bpe.vocab").read_text(encoding="utf-8").splitlines()[0].split("\t")[0] == "<unk>"

    # A table loaded from the lang dir alone encodes as sentencepiece does, shifted past the blank.
    table = TokenTable.load(tmp_path / "lang")
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "lang" / "bpe.model"))
    assert sp.bos_id() == sp.eos_id() == -1 and sp.unk_id() == 0
    assert syms[1:] == [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    for text in [*texts, "WORD HELL OTHER", "HELLO  \t THERE"]:
        assert table.encode(text) == [i + 1 for i in sp.encode(" ".join(text.split()))]
        assert table.units(text) == sp.encode(" ".join(text.split()), out_type=str)
    assert table.encode("HELLO") == table.encode("HELLO")  # no sampling
    assert table.decode([0, *table.encode("THE WORLD"), 0]) == "THE WORLD"
    ids, unknown = table.encode_counting("HELLO Q")
    assert unknown == 1 and 1 in ids  # a character no transcript had becomes <unk>
    with pytest.raises(AsrError, match="do not cover"):
        check_coverage(table, {"u": "QQQ ZZZ"}, "text")

    # The model must stay beside its table: without it, or with another one, loading fails in one line.
    other = tmp_path / "other"
    make_tokens(_text_file(tmp_path / "text2", ["ABC ABD", "ABE"]), other, unit="bpe", vocab_size=8)
    (tmp_path / "lang" / "bpe.model").write_bytes((other / "bpe.model").read_bytes())
    with pytest.raises(AsrError, match="does not match"):
        TokenTable.load(tmp_path / "lang")
    (tmp_path / "lang" / "bpe.model").unlink()
    with pytest.raises(AsrError, match="needs its bpe.model"):
        TokenTable.load(tmp_path / "lang")


def test_make_tokens_cli_bpe(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _text_file(tmp_path / "text", ["ONE TWO", "THREE", "TWO ONE THREE"])
    args = ["make-tokens", str(tmp_path / "text"), str(tmp_path / "lang"), "--unit", "bpe", "--vocab-size", "14"]
    assert main(args) == 0
    assert capsys.readouterr().out.strip().endswith("15 tokens (bpe)")
    t = TokenTable.load(tmp_path / "lang")
    assert t.decode(t.encode("TWO THREE")) == "TWO THREE"
    for extra in ([], ["--vocab-size", "5000"], ["--vocab-size", "3"]):
        assert main(["make-tokens", str(tmp_path / "text"), str(tmp_path / "l2"), "--unit", "bpe", *extra]) == 1
        assert capsys.readouterr().err.strip().count("\n") == 0


# ---- decoding: hand-built pieces --------------------------------------------------------------------
PIECES = ["<blk>", "<unk>", "▁", "▁THE", "▁C", "▁K", "AT", "▁SAT", "C", "A", "T"]
P = {s: i for i, s in enumerate(PIECES)}


def posteriors(frames: list[dict[str, float]], syms: list[str] = PIECES) -> torch.Tensor:
    """``(1, T, V)`` log-probs: each frame's listed pieces get their probabilities, blank the rest."""
    rows = []
    for f in frames:
        row = np.full(len(syms), 1e-4)
        for s, p in f.items():
            row[syms.index(s)] = p
        row[0] = max(1e-4, 1.0 - row[1:].sum())
        rows.append(row / row.sum())
    return torch.tensor(np.array(rows)).log().unsqueeze(0)


def test_greedy_words_from_pieces() -> None:
    frames = [{"▁THE": 0.9}, {"▁THE": 0.9}, {}, {"▁": 0.8}, {"C": 0.9}, {"AT": 0.9}, {"▁SAT": 0.9}, {"<unk>": 0.9}]
    lp = posteriors(frames)
    ((h,),) = GreedyDecoder(PIECES).decode(lp, torch.tensor([8]))
    assert h.tokens == [P["▁THE"], P["▁"], P["C"], P["AT"], P["▁SAT"], P["<unk>"]]
    assert h.words == ["THE", "CAT", "SAT<unk>"]
    ((h,),) = GreedyDecoder(PIECES).decode(lp, torch.tensor([7]))
    assert h.words == ["THE", "CAT", "SAT"]
    # Word times: a "▁" piece starts a word (pauses split nothing), and the bare "▁" belongs to "CAT".
    words = words_with_times(h, lp[0], PIECES, "<space>", 0.03, max_gap=1)
    assert [(w.word, w.start, w.end) for w in words] == [("THE", 0.0, 0.06), ("CAT", 0.09, 0.18), ("SAT", 0.18, 0.21)]
    empty = Hypothesis([P["▁"], P["▁K"]], [], 0.0, [0, 1])
    assert [w.word for w in words_with_times(empty, lp[0, :2], PIECES, "<space>", 0.03, 1)] == ["K"]


ARPA = """\\data\\
ngram 1=6
ngram 2=4

\\1-grams:
-1.0\t</s>
-99\t<s>\t-0.5
-0.7\tTHE\t-0.3
-1.0\tCAT\t-0.2
-1.0\tSAT\t-0.2
-2.0\t<unk>

\\2-grams:
-0.2\t<s> THE
-0.1\tTHE CAT
-0.1\tCAT SAT
-0.3\tSAT </s>

\\end\\
"""


@pytest.fixture
def arpa(tmp_path: Path) -> Path:
    p = tmp_path / "lm.arpa"
    p.write_text(ARPA)
    return p


@pytest.mark.parametrize("last", [False, True])
def test_beam_lm_prefers_in_vocabulary_word(arpa: Path, tmp_path: Path, last: bool) -> None:
    # Acoustics prefer "KAT" a little; the LM knows only "CAT". With ``last`` the word ends the
    # utterance, so only the end of the utterance can complete (and score) it.
    frames = [{"▁THE": 0.9}, {}, {"▁K": 0.5, "▁C": 0.4}, {"AT": 0.9}, {}]
    frames += [] if last else [{"▁SAT": 0.9}, {}]
    lp = posteriors(frames)
    n = torch.tensor([len(frames)])
    tail = [] if last else ["SAT"]
    plain = make_decoder(PIECES, DecodeConfig(beam=8)).decode(lp, n)[0][0]
    assert plain.words == ["THE", "KAT", *tail]
    fused = make_decoder(PIECES, DecodeConfig(beam=8, lm=str(arpa), alpha=1.0, beta=0.0)).decode(lp, n)[0][0]
    assert fused.words == ["THE", "CAT", *tail]
    assert fused.tokens == [P["▁THE"], P["▁C"], P["AT"], *([P["▁SAT"]] if tail else [])]
    lex = tmp_path / "lexicon.txt"
    lex.write_text("THE\nCAT\nSAT\n")
    hard = make_decoder(PIECES, DecodeConfig(beam=8, words=str(lex))).decode(lp, n)[0][0]
    assert hard.words == ["THE", "CAT", *tail]
    hot = make_decoder(PIECES, DecodeConfig(beam=8, hotwords=["CAT"], hotword_bonus=1.0)).decode(lp, n)[0][0]
    assert hot.words == ["THE", "CAT", *tail]


def test_piece_trie_reaches_words_by_every_spelling() -> None:
    starts = np.array([s.startswith("▁") for s in PIECES])
    trie = PieceTrie(["CAT", "THE", "QAT"], PIECES, starts, {0})
    assert trie.missing == ["QAT"]
    for spelling in (
        ["▁C", "AT"],
        ["▁", "C", "A", "T"],
        ["▁C", "A", "T"],
        ["▁K", "▁C", "AT"],
        ["▁THE", "▁", "C", "AT"],
    ):
        node = 0
        for s in spelling:
            node = trie.next[node, P[s]]
        assert trie.final[node] and trie.words[trie.word_of[node]] == "CAT", spelling
    assert trie.next[trie.next[0, P["▁K"]], P["AT"]] == trie.outside
    speller = PieceSpeller(PIECES, starts, {0})
    assert speller("CAT") == [P["▁C"], P["AT"]] and speller("TAT") == [P["▁"], P["T"], P["AT"]]
    assert speller("Q") is None


# Tiny piece table for exhaustive search: "A", "B" and "AB" are LM words, spelled several ways.
SMALL = ["<blk>", "<unk>", "▁A", "▁B", "A", "B", "▁"]
SMALL_ARPA = """\\data\\
ngram 1=6
ngram 2=3

\\1-grams:
-1.0\t</s>
-99\t<s>\t-0.5
-0.5\tA\t-0.3
-1.0\tB\t-0.2
-1.5\tAB
-2.0\t<unk>

\\2-grams:
-0.2\t<s> A
-0.1\tA B
-0.3\tB </s>

\\end\\
"""


def _exhaustive(lp: np.ndarray) -> dict[tuple[int, ...], float]:
    tot: dict[tuple[int, ...], list[float]] = {}
    T, V = lp.shape
    for path in itertools.product(range(V), repeat=T):
        labels = tuple(c for i, c in enumerate(path) if c and (i == 0 or c != path[i - 1]))
        tot.setdefault(labels, []).append(sum(lp[t, c] for t, c in enumerate(path)))
    return {k: float(np.logaddexp.reduce(v)) for k, v in tot.items()}


@pytest.mark.parametrize("hotwords", [[], ["B"]])
def test_lm_fusion_over_pieces_equals_exhaustive_scoring(tmp_path: Path, hotwords: list[str]) -> None:
    (tmp_path / "lm.arpa").write_text(SMALL_ARPA)
    lm = ArpaLM(tmp_path / "lm.arpa")
    g = torch.Generator().manual_seed(11)
    lp = torch.log_softmax(torch.randn(1, 4, len(SMALL), generator=g, dtype=torch.float64) * 2, -1)
    cfg = DecodeConfig(**EXACT, alpha=0.7, beta=0.3, unk_penalty=-2.0, hotwords=hotwords, hotword_bonus=1.5)
    hyps = BeamSearchDecoder(SMALL, cfg, lm=lm).decode(lp, torch.tensor([4]))[0]
    ref = {}
    for toks, ctc in _exhaustive(lp[0].numpy()).items():
        words = "".join(SMALL[t] for t in toks).replace("▁", " ").split()
        bonus = 1.5 * sum(w in hotwords for w in words)
        ref[toks] = ctc + 0.7 * lm.sentence_logp(words) + 0.3 * len(words) - 2.0 * sum(w not in lm for w in words)
        ref[toks] += bonus
    assert len(hyps) == len(ref)
    for h in hyps:
        assert h.score == pytest.approx(ref[tuple(h.tokens)], abs=1e-6)
        assert h.words == "".join(SMALL[t] for t in h.tokens).replace("▁", " ").split()


def test_piece_word_classes_score_like_word_strings(tmp_path: Path) -> None:
    (tmp_path / "lm.arpa").write_text(SMALL_ARPA)
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(3, 40, len(SMALL), generator=g, dtype=torch.float64) * 2
    logits[..., 1] += 1.0  # some "<unk>" pieces, which the LM knows as a word
    lp = torch.log_softmax(logits, -1)
    lens = torch.tensor([40, 29, 13])
    cfg = DecodeConfig(beam=16, nbest=8, alpha=0.8, beta=0.4, unk_penalty=-3.0)
    fast = BeamSearchDecoder(SMALL, cfg, lm=ArpaLM(tmp_path / "lm.arpa"))
    slow = BeamSearchDecoder(SMALL, cfg, lm=ArpaLM(tmp_path / "lm.arpa"))
    assert fast.scorer.by_class
    slow.scorer.by_class = False
    a, b = fast.decode(lp, lens), slow.decode(lp, lens)
    assert [[(h.tokens, h.score) for h in hs] for hs in a] == [[(h.tokens, h.score) for h in hs] for hs in b]


def test_lm_needs_a_word_boundary_or_pieces(arpa: Path) -> None:
    with pytest.raises(AsrError, match="word boundary"):
        BeamSearchDecoder(["<blk>", "<unk>", "AH", "B"], DecodeConfig(lm=str(arpa)))
    BeamSearchDecoder(PIECES, DecodeConfig(lm=str(arpa)))


# ---- a tiny training run -----------------------------------------------------------------------
def test_train_and_decode_with_bpe_lang_dir(tmp_path: Path) -> None:
    if not (SHARED_DATA / "fsdd").is_dir():
        pytest.skip(f"FSDD not found under {SHARED_DATA}")
    from trainutil import fsdd_dir

    from asr.config import apply_overrides, from_dict
    from asr.dataset import FeatsDataset
    from asr.modeldir import ModelDir
    from asr.train import TrainConfig, train

    data = fsdd_dir(SHARED_DATA, tmp_path / "data", ["george"], [5], stack=3, subsample=3)
    lang = tmp_path / "lang"
    tokens = make_tokens(data / "text", lang, unit="bpe", vocab_size=24)
    overrides = ["model.num_layers=1", "model.hidden=16", "max_epochs=1", "schedule.name=none", "average=last"]
    cfg = from_dict(TrainConfig, apply_overrides({}, overrides + ["average_n=1", "frames_per_batch=400", "seed=1"]))
    train(data, data, lang, tmp_path / "exp", cfg)

    md = ModelDir.load(tmp_path / "exp")  # the model dir carries bpe.model: it needs nothing from lang
    assert md.tokens == tokens and md.tokens.unit == "bpe"
    ds = FeatsDataset(data, md.tokens, md.pipeline)
    lp, lens = md.log_probs([ds[i][1] for i in range(len(ds))])
    digits = sorted(set(refs_text := [md.tokens.decode(ds[i][2].tolist()) for i in range(len(ds))]))
    assert digits == sorted(["ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE"])
    unigrams = "".join(f"-1.0\t{w}\t-0.1\n" for w in digits)
    bigrams = "".join(f"-0.5\t<s> {w}\n" for w in digits)
    (tmp_path / "lm.arpa").write_text(
        f"\\data\\\nngram 1={len(digits) + 3}\nngram 2={len(digits)}\n\n\\1-grams:\n-1.0\t</s>\n-99\t<s>\t-0.3\n"
        f"-2.0\t<unk>\n{unigrams}\n\\2-grams:\n{bigrams}\n\\end\\\n"
    )
    for cfg in (DecodeConfig(decoder="greedy"), DecodeConfig(beam=4, lm=str(tmp_path / "lm.arpa"))):
        for (h,) in (hs[:1] for hs in make_decoder(md.tokens.symbols, cfg).decode(lp, lens)):
            assert h.words == md.tokens.decode(h.tokens).split() and not any("▁" in w for w in h.words)
    refs = [words_from_tokens(ds[i][2].tolist(), md.tokens.symbols, None) for i in range(len(ds))]
    assert [" ".join(r) for r in refs] == refs_text
