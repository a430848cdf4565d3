"""Word-span sub-utterances from a forced alignment: ``asr subsegment DATA_DIR CTM OUT``.

Kaldi's ``utils/data/subsegment_data_dir.sh``, with the cut points taken from ``asr align``'s word
CTM. A model hears each word only in the contexts its training utterances give it: where every
training utterance opens with the same word (Kaldi's yesno split: all 31 open with NO), a BiLSTM
learns that utterances open with that word and drops the onset of any other. So an utterance of n
words yields n - 1 sub-utterances, the k-th opening at word k (k = 1 .. n-1) and running to a random
later word (seeded per utterance; at most ``--max-words`` words): every word opens an utterance
once, and utterances end at other words than their last. A sub-utterance keeps the whole pause on
either side (from the end of the word before it to the start of the word after it), as a recording
keeps its leading and trailing silence: a CTC model often emits a word's first token in the pause
before the word, and cut halfway through that pause yesno's recording-initial YES still lost its Y.

OUT is a data dir over DATA_DIR's recordings with a ``segments`` file (offsets added to DATA_DIR's
own segments where it has them): combine it with DATA_DIR (``asr combine-data-dirs``) to train on
both. Utterances that the CTM lacks, or whose CTM words differ from their text, are logged and skipped.
"""

from __future__ import annotations

import argparse
import logging
import random
from pathlib import Path

from asr.datadir import KNOWN_FILES, DataDir, Segment, write_data_dir
from asr.errors import AsrError

log = logging.getLogger(__name__)

WordTime = tuple[str, float, float]  # word, start s, end s (relative to the utterance)


def read_ctm(path: str | Path) -> dict[str, list[WordTime]]:
    """``utt channel start dur word [conf]`` lines -> each utterance's words in time order."""
    out: dict[str, list[WordTime]] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) not in (5, 6):
                raise AsrError(f"{path}:{n}: expected 'utt channel start dur word [conf]', got {line.strip()!r}")
            try:
                start, dur = float(parts[2]), float(parts[3])
            except ValueError:
                raise AsrError(f"{path}:{n}: start/duration are not numbers") from None
            out.setdefault(parts[0], []).append((parts[4], start, start + dur))
    for words in out.values():
        words.sort(key=lambda w: w[1])
    return out


def span_extent(words: list[WordTime], first: int, end: int, duration: float) -> tuple[float, float]:
    """Start and end (s) of the sub-utterance of words ``first .. end-1``: from the end of the word before
    (0 for the first word) to the start of the word after (``duration`` after the last)."""
    return (words[first - 1][2] if first > 0 else 0.0), (words[end][1] if end < len(words) else duration)


def word_spans(n: int, rng: random.Random, max_words: int | None = None) -> list[tuple[int, int]]:
    """``(first, end)`` word ranges (end exclusive): one opening at each word 1 .. n-1."""
    longest = n if max_words is None else max_words
    return [(i, rng.randint(i + 1, min(n, i + longest))) for i in range(1, n)]


def _utterance_extent(data: DataDir, utt: str) -> tuple[str, float, float]:
    """``(recording, start, end)`` of an utterance in its recording, reading the audio header if needed."""
    from asr.audio import audio_duration

    if data.segments is not None:
        if utt not in data.segments:
            raise AsrError(f"{data.path}/segments: {utt}: no segment")
        seg = data.segments[utt]
        end = seg.end
        if end < 0:  # Kaldi's "to the end of the recording"
            end = audio_duration(data.wav_scp[seg.reco])
        return seg.reco, seg.start, end
    if utt not in data.wav_scp:
        raise AsrError(f"{data.path}/wav.scp: {utt}: no audio")
    return utt, 0.0, audio_duration(data.wav_scp[utt])


def subsegment_data_dir(src: str | Path, ctm: str | Path, dst: str | Path, max_words: int | None = None,
                        seed: int = 0) -> tuple[int, int]:
    """Write the word-span sub-utterances of ``src`` into ``dst``; ``(sub-utterances made, utterances skipped)``."""
    data = DataDir.load(src)
    if data.wav_scp is None:
        raise AsrError(f"{src}/wav.scp: no such file (sub-segments cut audio; a features-only dir cannot be cut)")
    if data.text is None:
        raise AsrError(f"{src}/text: no such file")
    times = read_ctm(ctm)
    segments: dict[str, Segment] = {}
    text: dict[str, str] = {}
    utt2spk: dict[str, str] = {}
    skipped = 0
    for utt in data.utts:
        words = data.text.get(utt, "").split()
        timed = times.get(utt)
        if timed is None or [w for w, _, _ in timed] != words:
            log.warning("%s: %s, skipped", utt, "not in the CTM" if timed is None else "CTM words differ from its text")
            skipped += 1
            continue
        try:
            reco, start, end = _utterance_extent(data, utt)
        except AsrError as e:
            log.warning("%s: %s, skipped", utt, e)
            skipped += 1
            continue
        rng = random.Random(f"{seed}:{utt}")
        for i, j in word_spans(len(words), rng, max_words):
            sub = f"{utt}-w{i:03d}-{j:03d}"
            a, b = span_extent(timed, i, j, end - start)
            segments[sub] = Segment(reco, round(start + a, 3), round(start + b, 3))
            text[sub] = " ".join(words[i:j])
            utt2spk[sub] = data.utt2spk[utt]
    if not segments:
        raise AsrError(f"{src}: no sub-utterances made ({skipped} utterance(s) skipped, see warnings)")
    recos = {s.reco for s in segments.values()}
    for name in (*KNOWN_FILES, "feats.yaml"):  # an earlier run's features would describe other utterances
        Path(dst, name).unlink(missing_ok=True)
    write_data_dir(dst, wav_scp={r: v for r, v in data.wav_scp.items() if r in recos}, text=text,
                   utt2spk=utt2spk, segments=segments)
    return len(segments), skipped


def _cmd_subsegment(args: argparse.Namespace) -> int:
    made, skipped = subsegment_data_dir(args.data_dir, args.ctm, args.out, args.max_words, args.seed)
    log.info("%s: %d sub-utterance(s) from %s", args.out, made, args.data_dir)
    return 1 if skipped else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("subsegment", help="word-span sub-utterances, with the pauses around them, from a word CTM")
    p.add_argument("data_dir", help="Kaldi data dir with wav.scp and text")
    p.add_argument("ctm", help="word CTM of that dir's utterances, as 'asr align' writes it")
    p.add_argument("out", help="output data dir (wav.scp, segments, text, utt2spk, spk2utt)")
    p.add_argument("--max-words", type=int, help="longest sub-utterance in words (default: to any later word)")
    p.add_argument("--seed", type=int, default=0, help="seeds where each sub-utterance ends")
    p.set_defaults(func=_cmd_subsegment)
