#!/usr/bin/env python3
"""Synthetic readers for speechocean762: the training sentences spoken by espeak-ng voices -> a Kaldi data dir.

1.1 h of 113 real training speakers is too little for a character CTC model to learn English
spelling from sound. This reads every training transcript (only the training set's: never dev or test
text) ``--copies`` times, each time in another of FSDD's 696 human-sounding espeak-ng voices
(``egs/fsdd/local/synth_digits.py``: every English accent times every voice variant), with its random
rate, pitch, intonation, spectral tilt, level and noise, at 16 kHz. Voices are dealt out round-robin
over a seeded shuffle, so every voice reads about as many sentences as every other.

Copies of the same 1,130 sentences may also teach the model those sentences' letter sequences, which
the test sentences (almost none of them in training) do not share. ``--mixed N`` adds N new sentences,
each read once: the training words in random order, drawn uniformly from the training vocabulary (so
rare words are heard as often as common ones), each as long as a randomly drawn training sentence.
Measured on speechocean762 it did no better than copies (RESULTS.md, ablation), so it is off by default.

Writes ``OUT/wav/<speaker>/<utt>.wav`` (16 kHz, 16-bit) and the data dir ``OUT`` (wav.scp with absolute
paths, text, utt2spk, spk2utt, utt2synth with each utterance's settings). Speakers are
``tts-<accent>_<variant>``, utterance ids ``<speaker>-<source utterance>`` (``<speaker>-mix<k>`` for
the mixed ones). The same command writes the same bytes: every utterance seeds espeak-ng's own noise
generator from its settings.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from asr.atomic import atomic_path
from asr.datadir import read_kv, write_data_dir, write_kv
from asr.errors import AsrError, run_script

# FSDD's voices and renderer (which import the demo's ctypes synthesiser).
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "fsdd" / "local"))
import synth_digits  # noqa: E402

SAMPLE_RATE = 16000


def mixed_sentences(sentences: list[tuple[str, str]], count: int, seed: int) -> list[tuple[str, str]]:
    """``count`` (id ``mix<k>``, text) pairs: words uniform over the sentences' vocabulary, each as many
    as a randomly drawn sentence has."""
    rng = random.Random(f"mixed-{seed}")
    vocab = sorted({w for _, words in sentences for w in words.split()})
    lengths = [len(words.split()) for _, words in sentences]
    width = len(str(max(count - 1, 0)))
    return [(f"mix{k:0{width}d}", " ".join(rng.choice(vocab) for _ in range(rng.choice(lengths))))
            for k in range(count)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", type=Path, help="training data dir whose text is read")
    p.add_argument("out", type=Path, help="data dir to write (audio goes under OUT/wav/)")
    p.add_argument("--copies", type=int, default=1, help="voices that read each sentence (0 = none)")
    p.add_argument("--mixed", type=int, default=0, help="new sentences of training words in random order")
    p.add_argument("--max-sentences", type=int, default=0, help="0 = every sentence; else the first N by utt id")
    p.add_argument("--snr", default="15:50", help="uniform SNR range in dB of added pink-ish noise, 'lo:hi'")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    if args.copies < 0 or args.mixed < 0 or args.copies + args.mixed == 0:
        raise AsrError(f"--copies {args.copies} --mixed {args.mixed}: need copies or mixed sentences (both >= 0)")
    if not (args.src / "text").is_file():
        raise AsrError(f"{args.src}/text: no such file (the training data dir to read)")
    sentences = sorted(read_kv(args.src / "text").items())
    if args.max_sentences > 0:
        sentences = sentences[:args.max_sentences]
    sentences = [(utt, words) for utt, words in sentences if words.strip()]
    jobs = [(src_utt, words) for src_utt, words in sentences for _ in range(args.copies)]
    jobs += mixed_sentences(sentences, args.mixed, args.seed)
    snr_range = tuple(map(float, args.snr.split(":")))
    voices = synth_digits.voices()
    random.Random(f"order-{args.seed}").shuffle(voices)
    torch.set_num_threads(1)
    tts = synth_digits.synth.Espeak()
    out = args.out.resolve()
    wav_scp, text, utt2spk, info = {}, {}, {}, {}
    for n, (src_utt, words) in enumerate(jobs):
        voice = voices[n % len(voices)]
        spk = "tts-" + synth_digits.synth.voice_id(voice)
        utt = f"{spk}-{src_utt}"
        rng = random.Random(f"{args.seed}-{utt}")
        nrng = np.random.default_rng(rng.getrandbits(64))
        wave, s = synth_digits.render(tts, words, voice, rng, nrng, snr_range, sample_rate=SAMPLE_RATE,
                                      tts_seed=random.Random(f"tts-{args.seed}-{utt}").getrandbits(31))
        wav = out / "wav" / spk / f"{utt}.wav"
        wav.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(wav) as tmp:
            sf.write(tmp, wave, SAMPLE_RATE, subtype="PCM_16", format="WAV")
        wav_scp[utt], text[utt], utt2spk[utt] = str(wav), words, spk
        info[utt] = " ".join(f"{key}={val if val != '' else 'none'}" for key, val in s.items())
    write_data_dir(out, wav_scp=wav_scp, text=text, utt2spk=utt2spk)
    write_kv(out / "utt2synth", info)
    print(f"synth_sentences.py: {args.out}: {len(utt2spk)} utterances of {len(sentences)} sentences "
          f"({args.copies} copies each) and {args.mixed} mixed ones, "
          f"{len(set(utt2spk.values()))} voices, 16 kHz")
    return 0


if __name__ == "__main__":
    run_script(main, "synth_sentences.py")
