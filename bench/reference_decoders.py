"""Run the same log-probs through other CTC decoders, and make synthetic inputs to compare on.

For parity tests and ``bench/decode.py`` only, so it lives outside the library: nothing here is
needed at runtime. The decoders (pyctcdecode, torchaudio's ``ctc_decoder`` on flashlight-text,
fast-ctc-decode) are imported when an adapter is built and fail with an install hint. Every adapter has the shared
``decode(log_probs (B, T, V), lengths (B,)) -> list[list[Hypothesis]]``; only ``words`` (and for
flashlight ``tokens``) are filled in, scores are each decoder's own.
"""

from __future__ import annotations

import importlib
import math
import os
import string

import numpy as np
import torch

from asr.decoders.hypothesis import WORD_BOUNDARY, Hypothesis, check_inputs
from asr.errors import AsrError

HINT = "pip install 'asr[compare]' (pyctcdecode pins numpy<2: pip install --no-deps pyctcdecode pygtrie)"


def _require(module: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise AsrError(f"{module} is not installed ({e}); {HINT}") from None


def _words(text: str) -> list[str]:
    return text.split()


class PyCTCDecode:
    """pyctcdecode's ``BeamSearchDecoderCTC`` (KenLM for the LM), with its default pruning."""

    def __init__(
        self,
        symbols: list[str],
        beam: int = 32,
        lm: str | None = None,
        alpha: float = 0.5,
        beta: float = 1.0,
        unk_penalty: float = -10.0,
        token_min_logp: float = -5.0,
        beam_prune_logp: float = -10.0,
    ):
        pyctcdecode = _require("pyctcdecode")
        labels = ["" if i == 0 else " " if s == WORD_BOUNDARY else s for i, s in enumerate(symbols)]
        labels = [("⁇" if s == "<unk>" else s) for s in labels]
        self.decoder = pyctcdecode.build_ctcdecoder(
            labels, kenlm_model_path=lm, alpha=alpha, beta=beta, unk_score_offset=unk_penalty
        )
        self.kw = dict(beam_width=beam, token_min_logp=token_min_logp, beam_prune_logp=beam_prune_logp)

    def decode(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[list[Hypothesis]]:
        lp, lens = check_inputs(log_probs, lengths, log_probs.shape[-1])
        out = []
        for i in range(len(lp)):
            text = self.decoder.decode(lp[i, : lens[i]].astype(np.float32), **self.kw)
            out.append([Hypothesis([], _words(text), math.nan, [])])
        return out


class Flashlight:
    """torchaudio's ``ctc_decoder`` (flashlight-text): lexicon-free, or lexicon + KenLM word LM.

    Flashlight adds ``lm_weight`` times KenLM's log10 score, so ``alpha`` (ours, natural log) is
    passed as ``alpha * ln 10``; ``beta`` is its ``word_score``.
    """

    def __init__(
        self,
        symbols: list[str],
        beam: int = 32,
        lm: str | None = None,
        lexicon: list[str] | None = None,
        alpha: float = 0.5,
        beta: float = 1.0,
        beam_threshold: float = 25.0,
        beam_size_token: int | None = None,
        tmpdir: str | None = None,
    ):
        _require("flashlight.lib.text")
        from torchaudio.models.decoder import ctc_decoder

        self.symbols = symbols
        lex_path = None
        if lexicon is not None:
            import tempfile

            from asr.decoders.word_trie import spell

            fd, lex_path = tempfile.mkstemp(suffix=".lex", dir=tmpdir)
            with open(fd, "w", encoding="utf-8") as f:
                for w in lexicon:
                    ids = spell(w, symbols, {0, symbols.index(WORD_BOUNDARY)})
                    if ids:
                        f.write(f"{w} {' '.join(symbols[t] for t in ids)} {WORD_BOUNDARY}\n")
        self.decoder = ctc_decoder(
            lexicon=lex_path,
            tokens=list(symbols),
            lm=lm if lexicon is not None else None,
            beam_size=beam,
            beam_size_token=beam_size_token,
            beam_threshold=beam_threshold,
            lm_weight=alpha * math.log(10),
            word_score=beta,
            blank_token=symbols[0],
            sil_token=WORD_BOUNDARY,
            unk_word="<unk>",
        )
        if lex_path is not None:
            os.unlink(lex_path)  # flashlight has read it into its trie

    def decode(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[list[Hypothesis]]:
        lp, lens = check_inputs(log_probs, lengths, len(self.symbols))
        res = self.decoder(torch.from_numpy(lp).float(), torch.from_numpy(lens).int())
        out = []
        for r in res:
            h = r[0]
            toks = h.tokens.tolist()
            text = "".join(" " if self.symbols[t] == WORD_BOUNDARY else self.symbols[t] for t in toks if t != 0)
            out.append([Hypothesis(toks, h.words if h.words else _words(text), float(h.score), h.timesteps.tolist())])
        return out


class FastCTCDecode:
    """fast-ctc-decode's ``beam_search`` (Rust, no LM), with its probability cut."""

    def __init__(self, symbols: list[str], beam: int = 32, cut: float = 0.001):
        self.mod = _require("fast_ctc_decode")
        self.alphabet = ["N"] + [" " if s == WORD_BOUNDARY else s for s in symbols[1:]]
        self.alphabet = [("?" if s == "<unk>" else s) for s in self.alphabet]
        self.beam, self.cut = beam, cut

    def decode(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[list[Hypothesis]]:
        lp, lens = check_inputs(log_probs, lengths, len(self.alphabet))
        out = []
        for i in range(len(lp)):
            probs = np.exp(lp[i, : lens[i]]).astype(np.float32)
            text, _ = self.mod.beam_search(probs, self.alphabet, beam_size=self.beam, beam_cut_threshold=self.cut)
            out.append([Hypothesis([], _words(text), math.nan, [])])
        return out


# ---- synthetic data ----------------------------------------------------------------------------
SYMBOLS = ["<blk>", "<unk>", WORD_BOUNDARY, *string.ascii_uppercase]  # 29 tokens


def synthetic_corpus(n_sentences: int, n_words: int = 400, seed: int = 0) -> list[list[str]]:
    """Sentences from a random sparse bigram process over made-up words (so a 3-gram LM helps)."""
    rng = np.random.default_rng(seed)
    letters = np.array(list(string.ascii_uppercase))
    vocab = sorted({"".join(rng.choice(letters, rng.integers(2, 8))) for _ in range(n_words)})
    zipf = 1.0 / np.arange(1, len(vocab) + 1)
    succ = [rng.choice(len(vocab), 8, replace=False) for _ in vocab]
    succ_p = zipf[:8] / zipf[:8].sum()
    start_p = zipf / zipf.sum()
    rng2 = np.random.default_rng(seed + 1)
    out = []
    for _ in range(n_sentences):
        w = rng2.choice(len(vocab), p=start_p)
        sent = [vocab[w]]
        for _ in range(rng2.integers(3, 14)):
            w = succ[w][rng2.choice(8, p=succ_p)]
            sent.append(vocab[w])
        out.append(sent)
    return out


def synthetic_log_probs(
    sentences: list[list[str]], frames: int = 500, seed: int = 0, confusion: float = 0.15, max_chars: int = 65,
    symbols: list[str] | None = None,
) -> tuple[torch.Tensor, list[list[str]]]:
    """Peaky CTC log-probs ``(B, frames, V)`` for the sentences (cut to ``max_chars``) + references.

    Like a trained model: blank dominates (about -10 log-prob for other tokens) except at 1-2
    frame peaks of each token; 15 % of the peak frames have a competing token that sometimes wins.
    ``symbols``: the token table (default ``SYMBOLS``: blank, <unk>, <space>, A-Z); words are spelled
    in it by greedy longest match (:func:`unit_symbols` tables), competitors are its non-special tokens.
    """
    from asr.decoders.word_trie import spell

    symbols = symbols or SYMBOLS
    rng = np.random.default_rng(seed)
    space = symbols.index(WORD_BOUNDARY)
    V = len(symbols)
    out, refs = np.zeros((len(sentences), frames, V)), []
    for b, sent in enumerate(sentences):
        words: list[str] = []
        for w in sent:
            if words and len(" ".join(words + [w])) > max_chars:
                break
            words.append(w)
        refs.append(words)
        toks = []
        for w in words:
            toks += ([space] if toks else []) + (spell(w, symbols, {0, 1, space}) or [1])
        logits = rng.normal(0.0, 1.0, (frames, V))
        logits[:, 0] += 10 + rng.normal(0.0, 1.5, frames)
        centers = np.linspace(15, frames - 15, len(toks)) + rng.integers(-2, 3, len(toks))
        for c, tok in zip(centers.astype(int), toks, strict=True):
            width = 1 if rng.random() < 0.7 else 2
            strength = rng.uniform(4, 9)
            for f in range(c, min(c + width, frames)):
                logits[f, 0] -= 10 - rng.uniform(0, 3)
                logits[f, tok] += strength
                if rng.random() < confusion:
                    logits[f, 3 + rng.integers(V - 3)] += strength - rng.uniform(-0.5, 3.0)
        out[b] = logits
    return torch.log_softmax(torch.from_numpy(out).float(), -1), refs


def unit_symbols(words: list[str], size: int) -> list[str]:
    """A BPE-like table of ``size`` tokens: blank, <unk>, <space>, A-Z, then the most frequent letter
    2- to 6-grams of ``words`` (ties by string), so words spell in multi-letter units."""
    from collections import Counter

    grams: Counter = Counter()
    for w in words:
        for n in range(2, 7):
            grams.update(w[i : i + n] for i in range(len(w) - n + 1))
    extra = [g for g, _ in sorted(grams.items(), key=lambda kv: (-kv[1], kv[0]))][: max(0, size - len(SYMBOLS))]
    return SYMBOLS + extra


def transcripts(root: str) -> tuple[list[list[str]], list[str]]:
    """Every transcript under the shared corpora dir ``root`` (speechocean762 ``text``, AN4 and
    pocketsphinx ``*.transcription``, FSDD file names' digits), upper-cased and cut to A-Z words, and
    the sources found."""
    import glob
    import re

    digits = "ZERO ONE TWO THREE FOUR FIVE SIX SEVEN EIGHT NINE".split()
    out, found = [], []

    def add(text: str) -> None:
        words = re.sub(r"[^A-Z ]", " ", text.upper().replace("'", "")).split()
        if words:
            out.append(words)

    for path in sorted(glob.glob(os.path.join(root, "speechocean762", "*", "text"))):
        found.append(path)
        for line in open(path, encoding="utf-8"):
            add(line.split(maxsplit=1)[1] if " " in line.strip() else "")
    pattern = os.path.join(root, "**", "*transcription")
    for path in sorted(glob.glob(pattern, recursive=True)):
        if "combined" in path:  # AN4's train + test again
            continue
        found.append(path)
        for line in open(path, encoding="utf-8"):
            add(re.sub(r"\(.*?\)\s*$|</?s>", " ", line))
    wavs = glob.glob(os.path.join(root, "fsdd", "recordings", "*.wav"))
    if wavs:
        found.append(os.path.join(root, "fsdd", "recordings"))
        out += [[digits[int(os.path.basename(p)[0])]] for p in sorted(wavs)]
    return out, found


def seeded_text(vocab: list[str], n_sentences: int, seed: int = 0, fanout: int = 64) -> list[list[str]]:
    """Sentences from a seeded sparse word trigram-like process over ``vocab``: each word has
    ``fanout`` Zipf-weighted successors, shuffled by the word before it, so word 3-grams are many."""
    rng = np.random.default_rng(seed)
    V = len(vocab)
    succ = rng.integers(0, V, (V, fanout))
    zipf = 1.0 / np.arange(1, fanout + 1)
    cdf = np.cumsum(zipf / zipf.sum())
    out = []
    lens = rng.integers(4, 16, n_sentences)
    for L in lens.tolist():
        prev, w = 0, int(rng.integers(V))
        sent = [w]
        draws = np.searchsorted(cdf, rng.random(L))
        for d in draws.tolist():
            prev, w = w, int(succ[w, (d + prev) % fanout])
            sent.append(w)
        out.append([vocab[i] for i in sent])
    return out
