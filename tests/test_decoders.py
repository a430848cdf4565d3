"""Decoders: greedy by hand, beam search vs exhaustive search, LM fusion, lexicon, hotwords, timesteps."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from asr.config import load
from asr.decoders import DecodeConfig, make_decoder
from asr.decoders.beam import BeamSearchDecoder
from asr.decoders.greedy import GreedyDecoder
from asr.errors import AsrError
from asr.lm.backends import ArpaLM

EXACT = dict(beam=10_000, nbest=10_000, token_min_logp=-1e9, beam_threshold=1e9, blank_skip=1.0)
SYMS = ["<blk>", "<unk>", "<space>", "A", "B"]


def logp(rows: list[list[float]]) -> torch.Tensor:
    """Probability rows -> (1, T, V) log-probs."""
    return torch.tensor(rows, dtype=torch.float64).log().unsqueeze(0)


def collapse(path) -> tuple[int, ...]:
    out, prev = [], None
    for c in path:
        if c != 0 and c != prev:
            out.append(c)
        prev = c
    return tuple(out)


def exhaustive(lp: np.ndarray) -> dict[tuple[int, ...], float]:
    """log P(labels) summed over every alignment, for ``lp (T, V)``."""
    tot: dict[tuple[int, ...], list[float]] = {}
    T, V = lp.shape
    for path in itertools.product(range(V), repeat=T):
        tot.setdefault(collapse(path), []).append(sum(lp[t, c] for t, c in enumerate(path)))
    return {k: float(np.logaddexp.reduce(v)) for k, v in tot.items()}


def test_greedy_hand_built():
    lp = logp(
        [
            [0.6, 0.1, 0.1, 0.1, 0.1],  # blank
            [0.1, 0.1, 0.1, 0.6, 0.1],  # A
            [0.1, 0.1, 0.1, 0.6, 0.1],  # A (repeat, collapsed)
            [0.6, 0.1, 0.1, 0.1, 0.1],  # blank
            [0.1, 0.1, 0.1, 0.6, 0.1],  # A again after blank
            [0.1, 0.1, 0.6, 0.1, 0.1],  # space
            [0.1, 0.1, 0.1, 0.1, 0.6],  # B
            [0.1, 0.1, 0.1, 0.1, 0.6],  # beyond the length: ignored
        ]
    )
    ((h,),) = GreedyDecoder(SYMS).decode(lp, torch.tensor([7]))
    assert h.tokens == [3, 3, 2, 4]
    assert h.timesteps == [1, 4, 5, 6]
    assert h.words == ["AA", "B"]
    assert h.score == pytest.approx(7 * math.log(0.6))


def test_greedy_batch_equals_single():
    torch.manual_seed(0)
    lp = torch.log_softmax(torch.randn(3, 20, 5) * 3, -1)
    lens = torch.tensor([20, 11, 0])
    batch = GreedyDecoder(SYMS).decode(lp, lens)
    for i in range(3):
        single = GreedyDecoder(SYMS).decode(lp[i : i + 1, : max(int(lens[i]), 1)], lens[i : i + 1])
        assert batch[i][0].tokens == single[0][0].tokens and batch[i][0].timesteps == single[0][0].timesteps
        assert batch[i][0].score == pytest.approx(single[0][0].score)
    assert batch[2][0].tokens == []


@pytest.mark.parametrize("seed", range(4))
def test_beam_equals_exhaustive(seed):
    g = torch.Generator().manual_seed(seed)
    T, V = 5, 3
    lp = torch.log_softmax(torch.randn(1, T, V, generator=g, dtype=torch.float64) * 2, -1)
    ref = exhaustive(lp[0].numpy())
    hyps = BeamSearchDecoder(["<blk>", "A", "B"], DecodeConfig(**EXACT)).decode(lp, torch.tensor([T]))[0]
    assert len(hyps) == len(ref)
    for h in hyps:
        assert h.score == pytest.approx(ref[tuple(h.tokens)], abs=1e-9)
    assert tuple(hyps[0].tokens) == max(ref, key=ref.get)


def test_blank_runs_fold_exactly():
    """Frames with no token above the cut are folded in closed form; same result as frame by frame."""
    g = torch.Generator().manual_seed(3)
    T, V = 6, 3
    logits = torch.randn(T, V, generator=g, dtype=torch.float64)
    logits[[1, 2, 4, 5], 0] += 40.0  # blank-dominated frames: other tokens ~ e^-40
    lp = torch.log_softmax(logits, -1)[None]
    ref = exhaustive(lp[0].numpy())
    cfg = DecodeConfig(**{**EXACT, "token_min_logp": -20.0})
    hyps = BeamSearchDecoder(["<blk>", "A", "B"], cfg).decode(lp, torch.tensor([T]))[0]
    for h in hyps:
        assert h.score == pytest.approx(ref[tuple(h.tokens)], abs=1e-9)


def peaky(seed: int, T: int = 40, V: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (T,), generator=g)
    logits = torch.randn(T, V, generator=g) + 4.0 * torch.nn.functional.one_hot(ids, V)
    return torch.log_softmax(logits, -1)[None]


@pytest.mark.parametrize("seed", range(5))
def test_beam1_equals_greedy(seed):
    lp = peaky(seed)
    lens = torch.tensor([40])
    g = GreedyDecoder(SYMS).decode(lp, lens)[0][0]
    b = BeamSearchDecoder(SYMS, DecodeConfig(beam=1, blank_skip=1.0, token_min_logp=-1e9)).decode(lp, lens)[0][0]
    assert b.tokens == g.tokens
    assert b.timesteps == g.timesteps


def test_default_pruning_keeps_best_path_and_batch_equals_single():
    lp = torch.cat([peaky(s, T=60) for s in range(3)])
    lens = torch.tensor([60, 45, 30])
    dec = make_decoder(SYMS, DecodeConfig(beam=8, nbest=3))
    batch = dec.decode(lp, lens)
    exact = BeamSearchDecoder(SYMS, DecodeConfig(beam=64, token_min_logp=-1e9, blank_skip=1.0))
    for i in range(3):
        single = dec.decode(lp[i : i + 1, : lens[i]], lens[i : i + 1])[0]
        assert [h.tokens for h in batch[i]] == [h.tokens for h in single]
        assert batch[i][0].tokens == exact.decode(lp[i : i + 1], lens[i : i + 1])[0][0].tokens
        assert len(batch[i]) == 3 and batch[i][0].score >= batch[i][1].score >= batch[i][2].score


def test_timesteps_point_at_emitting_frames():
    T, V = 30, 5
    logits = torch.full((T, V), -8.0)
    logits[:, 0] = 0.0
    emit = {4: 3, 5: 3, 11: 2, 17: 4, 25: 3}  # frame -> token (5 repeats 4: one emission)
    for f, tok in emit.items():
        logits[f, tok], logits[f, 0] = 0.0, -8.0
    lp = torch.log_softmax(logits, -1)[None]
    h = make_decoder(SYMS, DecodeConfig(beam=4)).decode(lp, torch.tensor([T]))[0][0]
    assert h.tokens == [3, 2, 4, 3]
    assert h.timesteps == [4, 11, 17, 25]
    assert h.words == ["A", "BA"]


ARPA = """\\data\\
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


@pytest.fixture
def arpa(tmp_path):
    p = tmp_path / "lm.arpa"
    p.write_text(ARPA)
    return p


def test_arpa_probabilities_with_backoff(arpa):
    lm = ArpaLM(arpa)
    ln = math.log(10)
    s = lm.begin()
    lp, s = lm.score(s, "A")
    assert lp == pytest.approx(-0.2 * ln) and s == ("A",)
    lp, s = lm.score(s, "B")
    assert lp == pytest.approx(-0.1 * ln)
    assert lm.end(s) == pytest.approx(-0.3 * ln)
    assert lm.score(("A",), "A")[0] == pytest.approx((-0.3 - 0.5) * ln)  # backoff(A) + P(A)
    assert lm.score(("<s>",), "B")[0] == pytest.approx((-0.5 - 1.0) * ln)
    assert lm.score(("AB",), "A")[0] == pytest.approx(-0.5 * ln)  # AB has no backoff weight
    assert lm.score(("A",), "ZZZ")[0] == pytest.approx((-0.3 - 2.0) * ln)  # OOV -> <unk>
    assert lm.sentence_logp(["A", "B"]) == pytest.approx((-0.2 - 0.1 - 0.3) * ln)
    assert "AB" in lm and "ZZZ" not in lm and lm.vocab == {"A", "B", "AB"}


def test_arpa_matches_kenlm(arpa):
    pytest.importorskip("kenlm")
    from asr.lm.backends import KenLM

    a, k = ArpaLM(arpa), KenLM(arpa)
    for words in (["A", "B"], ["B", "A", "AB"], ["ZZZ", "A"], []):
        assert a.sentence_logp(words) == pytest.approx(k.sentence_logp(words), abs=1e-5)


@pytest.mark.parametrize(
    "text, needle",
    [
        (ARPA.replace("-0.1\tA B", "-0.1\tA"), ":15:"),
        (ARPA.replace("-1.0\tB\t-0.2", "x\tB"), ":9:"),
        (ARPA.replace("ngram 2=3", "ngram 2=4"), "declares 4 2-grams"),
        ("hello\n", "no \\data\\"),
        (ARPA.replace("\\end\\", ""), "truncated"),
        (ARPA.replace("-0.5\tA\t-0.3", "nan\tA"), ":8:"),
    ],
)
def test_malformed_arpa(tmp_path, text, needle):
    p = tmp_path / "bad.arpa"
    p.write_text(text)
    with pytest.raises(AsrError, match=None) as e:
        ArpaLM(p)
    assert needle in str(e.value) and str(p) in str(e.value)


def lm_exhaustive(lp: np.ndarray, lm: ArpaLM, alpha: float, beta: float, unk: float) -> dict:
    out = {}
    for toks, ctc in exhaustive(lp).items():
        words = "".join(SYMS[t] if t != 2 else " " for t in toks).split()
        oov = sum(w not in lm for w in words)
        out[toks] = ctc + alpha * lm.sentence_logp(words) + beta * len(words) + unk * oov
    return out


def test_lm_fusion_equals_exhaustive_scoring(arpa):
    g = torch.Generator().manual_seed(7)
    lp = torch.log_softmax(torch.randn(1, 4, 5, generator=g, dtype=torch.float64) * 2, -1)
    lm = ArpaLM(arpa)
    cfg = DecodeConfig(**EXACT, alpha=0.7, beta=0.3, unk_penalty=-2.0)
    hyps = BeamSearchDecoder(SYMS, cfg, lm=lm).decode(lp, torch.tensor([4]))[0]
    ref = lm_exhaustive(lp[0].numpy(), lm, 0.7, 0.3, -2.0)
    assert len(hyps) == len(ref)
    for h in hyps:
        assert h.score == pytest.approx(ref[tuple(h.tokens)], abs=1e-6)


def test_lm_changes_the_best_path(arpa):
    # Acoustics slightly prefer "B A"; the LM strongly prefers "A B".
    rows = [
        [0.1, 0.02, 0.02, 0.41, 0.45],
        [0.9, 0.02, 0.04, 0.02, 0.02],
        [0.1, 0.02, 0.78, 0.05, 0.05],
        [0.1, 0.02, 0.02, 0.45, 0.41],
    ]
    lp = logp(rows)
    no_lm = make_decoder(SYMS, DecodeConfig(beam=8)).decode(lp, torch.tensor([4]))[0][0]
    with_lm = make_decoder(SYMS, DecodeConfig(beam=8, lm=str(arpa), alpha=1.0, beta=0.0)).decode(lp, torch.tensor([4]))[
        0
    ][0]
    assert no_lm.words == ["B", "A"]
    assert with_lm.words == ["A", "B"]


def test_word_list_prunes_non_words(tmp_path):
    lex = tmp_path / "lexicon.txt"  # a lexicon works as a word list: its first fields
    lex.write_text("AB A B\nBA B A\n")
    rows = [
        [0.1, 0.02, 0.02, 0.8, 0.06],
        [0.8, 0.02, 0.02, 0.08, 0.08],
        [0.1, 0.02, 0.02, 0.8, 0.06],
        [0.1, 0.02, 0.02, 0.26, 0.6],
    ]
    lp = logp(rows)
    free = make_decoder(SYMS, DecodeConfig(beam=16)).decode(lp, torch.tensor([4]))[0][0]
    lexd = make_decoder(SYMS, DecodeConfig(beam=16, words=str(lex))).decode(lp, torch.tensor([4]))[0][0]
    assert free.words == ["AAB"]
    assert lexd.words == ["AB"]


def test_hotwords_boost_listed_words():
    rows = [[0.1, 0.02, 0.02, 0.45, 0.41], [0.9, 0.02, 0.04, 0.02, 0.02], [0.1, 0.02, 0.02, 0.45, 0.41]]
    lp = logp(rows)
    plain = make_decoder(SYMS, DecodeConfig(beam=16)).decode(lp, torch.tensor([3]))[0][0]
    hot = make_decoder(SYMS, DecodeConfig(beam=16, hotwords=["BB"], hotword_bonus=2.0)).decode(lp, torch.tensor([3]))[
        0
    ][0]
    other = make_decoder(SYMS, DecodeConfig(beam=16, hotwords=["AB"], hotword_bonus=2.0)).decode(lp, torch.tensor([3]))[
        0
    ][0]
    assert plain.words == ["AA"] and hot.words == ["BB"] and other.words == ["AB"]


def test_bad_inputs():
    dec = make_decoder(SYMS, DecodeConfig())
    lp = peaky(0, T=10)
    with pytest.raises(AsrError, match="length 11"):
        dec.decode(lp, torch.tensor([11]))
    bad = lp.clone()
    bad[0, 3, 1] = float("nan")
    with pytest.raises(AsrError, match="NaN"):
        dec.decode(bad, torch.tensor([10]))
    with pytest.raises(AsrError, match="classes"):
        dec.decode(lp[..., :4], torch.tensor([10]))
    assert dec.decode(bad, torch.tensor([3]))[0][0].tokens is not None  # NaN beyond the length is padding


def test_lm_vocabulary_must_match_tokens(tmp_path):
    p = tmp_path / "lower.arpa"
    p.write_text(
        ARPA.replace("\tA", "\ta").replace("\tB", "\tb").replace(" A", " a").replace(" B", " b").replace("AB", "ab")
    )
    with pytest.raises(AsrError, match="can be spelled"):
        BeamSearchDecoder(SYMS, DecodeConfig(), lm=ArpaLM(p))


def test_confs_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "conf"
    assert load(DecodeConfig, root / "decode_beam.yaml").decoder == "beam"
    assert load(DecodeConfig, root / "decode_greedy.yaml", ["beam=4"]).decoder == "greedy"


def test_old_lexicon_key_names_words(tmp_path):
    # "lexicon" is make-tokens' pronunciation dictionary; the decode key for a word list is "words".
    conf = tmp_path / "decode.yaml"
    conf.write_text("decoder: beam\nlexicon: words.txt\n")
    for path, overrides in ((conf, None), (None, ["lexicon=words.txt"])):
        with pytest.raises(AsrError) as e:
            load(DecodeConfig, path, overrides)
        msg = str(e.value)
        assert "'lexicon' was renamed to 'words'" in msg and "\n" not in msg
    assert load(DecodeConfig, None, ["words=words.txt"]).words == "words.txt"


def test_prefix_free_symbols_and_trie_words():
    from asr.decoders.word_trie import WordTrie, prefix_free

    assert prefix_free(SYMS, {0, 2})
    assert not prefix_free(SYMS + ["AB"], {0, 2})  # "A" + "B" and "AB" spell the same string
    assert not prefix_free(SYMS + [""], {0, 2})
    trie = WordTrie(["AB", "B", "ZZ"], SYMS, {0, 2})
    finals = np.flatnonzero(trie.final)
    assert sorted(trie.words[trie.word_of[n]] for n in finals) == ["AB", "B"] and trie.missing == ["ZZ"]
    assert (trie.word_of[~trie.final] == -1).all()


@pytest.mark.parametrize("word_list", [False, True])
def test_word_classes_score_like_word_strings(arpa, tmp_path, word_list):
    # Completions keyed by trie node, with all non-words sharing one class, must give exactly what
    # spelling out every word gives; "<unk>" is a token here, so the LM's own "<unk>" is a word too.
    lex = tmp_path / "lex.txt"
    lex.write_text("A\nAB\nBA\n<unk>\n")
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 40, 5, generator=g, dtype=torch.float64) * 2
    logits[..., 1:3] += 1.5  # short words, some of them "<unk>"
    lp = torch.log_softmax(logits, -1)
    lens = torch.tensor([40, 31, 17])
    cfg = DecodeConfig(beam=16, nbest=8, alpha=0.8, beta=0.4, unk_penalty=-3.0, words=str(lex) if word_list else None)
    fast = BeamSearchDecoder(SYMS, cfg, lm=ArpaLM(arpa))
    slow = BeamSearchDecoder(SYMS, cfg, lm=ArpaLM(arpa))
    assert fast.scorer.by_class
    slow.scorer.by_class = False  # the word-string path
    a, b = fast.decode(lp, lens), slow.decode(lp, lens)
    assert [[(h.tokens, h.score, h.timesteps) for h in hs] for hs in a] == [
        [(h.tokens, h.score, h.timesteps) for h in hs] for hs in b
    ]
    words = {w for hs in a for h in hs for w in h.words}
    assert "<unk>" in words and (word_list or "<unk>" in fast.scorer.trie.words)
    assert word_list or words - fast.scorer.lm.vocab - {"<unk>"}  # out-of-vocabulary words were scored too


@pytest.mark.parametrize("V", [30, 5000])
def test_child_table_dict_equals_dense(V):
    """The dict child table (large vocabularies) finds the same prefixes as the dense one."""
    from asr.decoders.prefix_tree import PrefixTree

    g = torch.Generator().manual_seed(V)
    syms = ["<blk>", *(f"t{i}" for i in range(1, V))]
    logits = torch.randn(3, 30, V, generator=g, dtype=torch.float64)
    logits[:, :, 1:9] += 6.0  # a few competitive tokens per frame, the rest far below
    lp, lens = torch.log_softmax(logits, -1), torch.tensor([30, 22, 9])
    out = []
    for dense in (True, False):
        dec = BeamSearchDecoder(syms, DecodeConfig(beam=16, nbest=4))
        dec.tree = PrefixTree(V, capacity=64, dense=dense)
        hyps = dec.decode(lp, lens)
        out.append([[(h.tokens, h.timesteps, h.score) for h in hs] for hs in hyps])
        assert dec.tree.dense == dense and dec.tree.n > 64  # the tables grew
    assert out[0] == out[1]


@pytest.mark.parametrize("words", [False, True, None])
def test_batch_equals_one_by_one_with_lm(arpa, tmp_path, words):
    """Utterances searched together give exactly what each gives alone (hypotheses, scores, frames):
    one utterance per call takes asr.decoders.beam_one's 1-D path (``words`` None: plain search)."""
    g = torch.Generator().manual_seed(11)
    lp = torch.cat([peaky(s, T=50) for s in range(5)])
    lp[3, :, 0] += 8.0  # blank-dominated: few active frames, it retires early
    lp = torch.log_softmax(lp + 0.3 * torch.randn(lp.shape, generator=g), -1)
    lens = torch.tensor([50, 41, 0, 50, 17])
    wl = tmp_path / "w.txt"
    wl.write_text("A\nB\nAB\n")
    cfg = DecodeConfig(beam=6, nbest=3, alpha=0.8, beta=0.5, words=str(wl) if words else None)
    dec = BeamSearchDecoder(SYMS, cfg, lm=None if words is None else ArpaLM(arpa))
    batch = dec.decode(lp, lens)
    for i in range(5):
        single = dec.decode(lp[i : i + 1, : max(int(lens[i]), 1)], lens[i : i + 1])[0]
        key = [(h.tokens, h.timesteps, h.score) for h in single]
        assert [(h.tokens, h.timesteps, h.score) for h in batch[i]] == key
    assert batch[2][0].tokens == []  # the empty utterance
