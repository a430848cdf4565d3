"""CTC forced alignment: ``asr align MODEL_DIR DATA_DIR -o OUT`` and exact word times for ``asr transcribe --align``.

Each utterance's reference (``text``) is aligned to the model's posteriors with
``torchaudio.functional.forced_align``: the best CTC path that spells exactly those tokens. A token
occupies the frames that path gives it (its emission and repeats, not the blanks around it); a word
runs from its first token's first frame to its last token's last frame. Char models split words at
``<space>`` tokens, which get frames of their own between words; phone models take each word's phones
from the lexicon. Output frame ``t`` covers ``[t, t + 1) * frame_s`` seconds, ``frame_s`` being frame
shift x subsampling x the model's time reduction, as in ``asr transcribe``.

``OUT`` receives ``ctm`` (words), ``tokens.ctm`` and ``textgrid/<utt>.TextGrid`` (Praat, tiers
``words`` and ``tokens``, silence as empty intervals), each written atomically. An utterance that
cannot be aligned (unreadable features, units outside the token table, a reference needing more
frames than the model gives) is logged with its id and skipped; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import NamedTuple

import torch

from asr.atomic import write_text
from asr.errors import AsrError
from asr.tokens import BLANK_ID, SPACE, WORD_START, TokenTable
from asr.word_times import join_paused

log = logging.getLogger(__name__)


class TokenSpan(NamedTuple):
    token: int
    start: int  # first output frame
    end: int  # one past the last output frame
    score: float  # geometric mean of the token's posterior over its frames


class WordSpan(NamedTuple):
    word: str
    start: int
    end: int
    score: float  # mean of its tokens' scores


@dataclass
class Alignment:
    tokens: list[TokenSpan]
    words: list[WordSpan]
    num_frames: int


def align_tokens(log_probs: torch.Tensor, token_ids: Sequence[int]) -> list[TokenSpan]:
    """Force-align ``token_ids`` (blank = 0 excluded) to ``log_probs (T, V)``; one span per token, in order.

    CTC needs a frame per token plus a blank between two equal neighbours, so ``T >= L + repeats``;
    a shorter ``T`` (or an id outside the vocabulary) raises one AsrError line.
    """
    import torchaudio.functional as AF

    if log_probs.dim() != 2:
        raise AsrError(f"align: log_probs must be (T, V), got shape {tuple(log_probs.shape)}")
    frames, vocab = log_probs.shape
    ids = [int(i) for i in token_ids]
    if not ids:
        return []
    bad = next((i for i in ids if not BLANK_ID < i < vocab), None)
    if bad is not None:
        raise AsrError(f"token id {bad} cannot be aligned by a model of {vocab} labels (blank is 0)")
    need = len(ids) + sum(a == b for a, b in pairwise(ids))
    if frames < need:
        raise AsrError(f"reference needs at least {need} output frames ({len(ids)} tokens + repeats), "
                       f"the model gives {frames}")
    labels, scores = AF.forced_align(log_probs.detach().float().cpu().unsqueeze(0).contiguous(),
                                     torch.tensor([ids], dtype=torch.long), blank=BLANK_ID)
    # Equal neighbours are always parted by a blank on a CTC path, so merging runs recovers every token.
    spans = AF.merge_tokens(labels[0], scores[0], blank=BLANK_ID)
    if [s.token for s in spans] != ids:  # a broken path (e.g. -inf posteriors) must not pass silently
        raise AsrError("forced alignment found no path through the reference")
    return [TokenSpan(s.token, s.start, s.end, math.exp(s.score)) for s in spans]


def reference_words(tokens: TokenTable, text: str) -> tuple[list[int], list[tuple[str, int, int]]]:
    """Token ids of ``text`` and each word as ``(word, first, end)`` indices into them.

    Unlike :meth:`TokenTable.encode` nothing becomes ``<unk>``: aligning a stand-in would time a
    word the model was never asked about, so an uncovered unit is an AsrError.
    """
    ids: list[int] = []
    words: list[tuple[str, int, int]] = []
    for k, word in enumerate(text.split()):
        if tokens.unit == "char":
            if k:
                ids.append(tokens.ids[SPACE])
            units = list(word)
        elif tokens.unit == "phone":
            if word not in tokens.lexicon:
                raise AsrError(f"word {word!r} is not in the lexicon")
            units = tokens.lexicon[word]
        else:
            # Word pieces never cross a space, so a word's own pieces are its share of the text's.
            word_ids, unknown = tokens.encode_counting(word)
            if unknown:
                raise AsrError(f"word {word!r} has pieces outside the token table")
            units = [tokens.symbols[i] for i in word_ids]
        missing = [u for u in units if tokens.ids.get(u, BLANK_ID) == BLANK_ID]
        if missing:
            raise AsrError(f"word {word!r}: {missing[0]!r} is not in the token table")
        words.append((word, len(ids), len(ids) + len(units)))
        ids.extend(tokens.ids[u] for u in units)
    return ids, words


def hypothesis_words(spans: list[TokenSpan], symbols: list[str], boundary: str, max_gap: int,
                     known: Callable[[str], bool] | None = None) -> list[tuple[str, int, int]]:
    """Words of aligned hypothesis tokens as ``(word, first, end)`` indices into ``spans``.

    The same grouping ``transcribe`` applies to its spike-run times (split at ``boundary`` tokens and
    where a token starts more than ``max_gap`` frames after the word's last one), so ``--align``
    changes the times of a transcript, not its words. Sentencepiece pieces have no boundary symbol
    but mark every word's start (the first one's too) with ``▁``: there that alone starts a word,
    and pauses split nothing, so the words are the decoder's. ``known`` undoes a pause's split inside
    a word as :func:`asr.word_times.join_paused` does.
    """
    pieces = boundary not in symbols and any(s.startswith(WORD_START) for s in symbols)
    words: list[tuple[str, tuple[int, int], bool]] = []
    first, paused, after_pause = None, False, False

    def flush(end: int) -> None:
        word = "".join(symbols[t.token] for t in spans[first:end]).replace(WORD_START, "")
        if word:  # a lone "▁" piece spells no word
            words.append((word, (first, end), after_pause))

    for i, s in enumerate(spans):
        is_boundary = symbols[s.token] == boundary
        if pieces:
            split = symbols[s.token].startswith(WORD_START)
        else:
            paused = first is not None and not is_boundary and s.start - (spans[i - 1].end - 1) > max_gap
            split = is_boundary or paused
        if first is not None and split:
            flush(i)
            first = None
        if first is None and not is_boundary:
            first, after_pause = i, paused
    if first is not None:
        flush(len(spans))
    return [(w, a, b) for w, (a, b) in join_paused(words, known, lambda x, y: (x[0], y[1]))]


def word_spans(spans: list[TokenSpan], groups: list[tuple[str, int, int]]) -> list[WordSpan]:
    """A word from its first token's start to its last token's end, scored by the mean of its tokens."""
    return [WordSpan(w, spans[a].start, spans[b - 1].end, sum(s.score for s in spans[a:b]) / (b - a))
            for w, a, b in groups]


def align_hypothesis(log_probs: torch.Tensor, token_ids: Sequence[int], symbols: list[str], boundary: str,
                     max_gap: int, known: Callable[[str], bool] | None = None) -> list[WordSpan]:
    """``transcribe --align``: a decoded hypothesis' own tokens aligned to its posteriors ``(T, V)``."""
    spans = align_tokens(log_probs, token_ids)
    return word_spans(spans, hypothesis_words(spans, symbols, boundary, max_gap, known))


def align_utterance(log_probs: torch.Tensor, tokens: TokenTable, text: str) -> Alignment:
    """A reference ``text`` aligned to posteriors ``log_probs (T, V)``."""
    ids, groups = reference_words(tokens, text)
    spans = align_tokens(log_probs, ids)
    return Alignment(spans, word_spans(spans, groups), log_probs.shape[0])


def frame_time(frame: int, frame_s: float, offset: int = 0) -> float:
    """Seconds at the start of output frame ``frame + offset``, to the millisecond (as transcribe rounds)."""
    return round((frame + offset) * frame_s, 3)


def frame_seconds(md) -> float:
    """Seconds per model output frame; the samples-per-hop product of ``Transcriber`` when features come
    from audio, so both commands compute bit-identical times."""
    cfg = md.feature_config
    if cfg.kind == "precomputed":
        return cfg.frame_shift_ms / 1000 * cfg.subsample * md.model.time_reduction
    return cfg.shift_samples * cfg.subsample * md.model.time_reduction / cfg.sample_rate


# ---------------------------------------------------------------------- output formats
Timed = tuple[str, float, float, float]  # label, start s, end s, confidence


def timed(items: Sequence[TokenSpan | WordSpan], labels: list[str], frame_s: float, duration: float) -> list[Timed]:
    """Spans in frames -> ``(label, start, end, conf)`` in seconds, cut at ``duration``: the last output
    frame may reach past the audio by up to (subsample - 1) feature frames."""
    out = []
    for label, it in zip(labels, items, strict=True):
        start, end = frame_time(it.start, frame_s), min(frame_time(it.end, frame_s), duration)
        if end > start:
            out.append((label, start, end, round(it.score, 4)))
    return out


def ctm_lines(utt: str, items: list[Timed]) -> str:
    """NIST CTM, as ``asr transcribe --format ctm`` writes it."""
    return "".join(f"{utt} 1 {a:.3f} {b - a:.3f} {label} {conf:.4f}\n" for label, a, b, conf in items)


def _quote(s: str) -> str:
    return '"' + s.replace('"', '""') + '"'


def textgrid(duration: float, tiers: dict[str, list[Timed]]) -> str:
    """Praat TextGrid (long text format): interval tiers covering ``[0, duration]``, gaps as empty intervals."""
    lines = ['File type = "ooTextFile"', 'Object class = "TextGrid"', "", "xmin = 0", f"xmax = {duration:.3f}",
             "tiers? <exists>", f"size = {len(tiers)}", "item []:"]
    for n, (name, items) in enumerate(tiers.items(), 1):
        intervals: list[tuple[float, float, str]] = []
        t = 0.0
        for label, a, b, _ in items:
            if a > t:
                intervals.append((t, a, ""))
            intervals.append((a, b, label))
            t = b
        if t < duration:
            intervals.append((t, duration, ""))
        lines += [f"    item [{n}]:", '        class = "IntervalTier"', f"        name = {_quote(name)}",
                  "        xmin = 0", f"        xmax = {duration:.3f}", f"        intervals: size = {len(intervals)}"]
        for k, (a, b, label) in enumerate(intervals, 1):
            lines += [f"        intervals [{k}]:", f"            xmin = {a:.3f}", f"            xmax = {b:.3f}",
                      f"            text = {_quote(label)}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- data dirs
def _durations(data) -> dict[str, float]:
    """Utterance durations the data dir states (utt2dur, segments); audio headers fill in lazily."""
    from asr.datadir import read_kv

    out: dict[str, float] = {}
    if data.segments is not None:
        out.update({u: s.end - s.start for u, s in data.segments.items() if s.end > s.start})
    if (data.path / "utt2dur").is_file():
        out.update({u: float(v) for u, v in read_kv(data.path / "utt2dur").items()})
    return out


def _duration(data, known: dict[str, float], utt: str) -> float | None:
    from asr.audio import audio_duration

    if utt in known:
        return known[utt]
    value = (data.wav_scp or {}).get(utt) if data.segments is None else None
    if value is None or value.strip().endswith("|"):  # running a pipe twice just for a length is not worth it
        return None
    try:
        return audio_duration(value)
    except AsrError:
        return None


def align_dir(exp_dir: Path, data_dir: Path, out_dir: Path, checkpoint: str = "final.pt",
              batch_size: int = 16) -> tuple[int, int]:
    """Align every utterance of ``data_dir`` into ``out_dir/{ctm,tokens.ctm,textgrid/}``; ``(done, failed)``."""
    from asr.datadir import DataDir
    from asr.model_inputs import log_probs_of
    from asr.modeldir import ModelDir

    md = ModelDir.load(exp_dir, checkpoint)
    data = DataDir.load(data_dir)
    if data.text is None:
        raise AsrError(f"{data_dir}/text: no such file (alignment needs the reference)")
    frame_s = frame_seconds(md)
    known = _durations(data)
    refs: dict[str, tuple[list[int], list[tuple[str, int, int]]]] = {}
    failed: list[str] = []
    for u in data.utts:
        try:
            if u not in data.text:
                raise AsrError("no transcript in text")
            refs[u] = reference_words(md.tokens, data.text[u])
        except AsrError as e:
            log.warning("%s: cannot align: %s", u, e)
            failed.append(u)
    words_ctm: dict[str, str] = {}
    tokens_ctm: dict[str, str] = {}
    n_unread = 0
    if refs:
        for names, lp, lens, nfail in log_probs_of(md, data_dir, list(refs), batch_size):
            n_unread += nfail  # log_probs_of has logged each one
            for i, u in enumerate(names):
                try:
                    spans = align_tokens(lp[i, : int(lens[i])], refs[u][0])
                except AsrError as e:
                    log.warning("%s: cannot align: %s", u, e)
                    failed.append(u)
                    continue
                num_frames = int(lens[i])
                # To the millisecond, as every time written: a sub-millisecond tail would print as an empty interval.
                known_s = _duration(data, known, u)
                duration = round(known_s, 3) if known_s else frame_time(num_frames, frame_s)
                words = timed(word_spans(spans, refs[u][1]), [w for w, _, _ in refs[u][1]], frame_s, duration)
                toks = timed(spans, [md.tokens.symbols[s.token] for s in spans], frame_s, duration)
                words_ctm[u], tokens_ctm[u] = ctm_lines(u, words), ctm_lines(u, toks)
                write_text(out_dir / "textgrid" / f"{u}.TextGrid", textgrid(duration, {"words": words, "tokens": toks}))
    for u in set(data.utts) - set(words_ctm):
        # An utterance that failed now must not keep the TextGrid of an earlier run.
        (out_dir / "textgrid" / f"{u}.TextGrid").unlink(missing_ok=True)
    if not words_ctm:
        raise AsrError(f"{data_dir}: none of its {len(data.utts)} utterances could be aligned (see warnings)")
    write_text(out_dir / "ctm", "".join(words_ctm[u] for u in data.utts if u in words_ctm))
    write_text(out_dir / "tokens.ctm", "".join(tokens_ctm[u] for u in data.utts if u in tokens_ctm))
    return len(words_ctm), len(failed) + n_unread


def _cmd_align(args: argparse.Namespace) -> int:
    exp_dir, data_dir = Path(args.exp_dir), Path(args.data_dir)
    out_dir = Path(args.out) if args.out else exp_dir / f"align_{data_dir.name}"
    t0 = time.time()
    done, failed = align_dir(exp_dir, data_dir, out_dir, args.checkpoint, args.batch_size)
    log.info("aligned %d utterance(s) into %s in %.1f s", done, out_dir, time.time() - t0)
    if failed:
        log.error("%d of %d utterance(s) could not be aligned (see warnings)", failed, done + failed)
    return 1 if failed else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("align", help="force-align each utterance's reference text: word/token CTM and TextGrids")
    p.add_argument("exp_dir", help="model dir written by 'asr train'")
    p.add_argument("data_dir", help="Kaldi data dir with text and feats.scp (or wav.scp)")
    p.add_argument("-o", "--out", help="output dir (default: EXP_DIR/align_<set>)")
    p.add_argument("--checkpoint", default="final.pt")
    p.add_argument("--batch-size", type=int, default=16, help="utterances per forward pass")
    p.set_defaults(func=_cmd_align)
