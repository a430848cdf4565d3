#!/usr/bin/env python3
"""Synthesise the demo corpus: English commands spoken by espeak-ng voices, with noise.

The corpus needs no network: ``espeakng-loader`` (PyPI) bundles libespeak-ng and its voice data,
driven here through ctypes. A voice is an accent (en-us, en-gb-scotland, ...) plus a variant
(+m1 .. +f5); whole voices are held out for dev and test because formant speech is easy to
overfit, while every accent and every variant still occurs in training. Sentences come from a
small grammar, so an n-gram LM trained on the training transcripts helps the beam decoder.

Writes ``OUT/wav/<voice>/<utt>.wav`` (16 kHz, 16-bit) and ``OUT/prompts.tsv``
(``utt<TAB>voice<TAB>set<TAB>rate<TAB>pitch<TAB>snr<TAB>text``), which ``local/prepare.py`` turns into
Kaldi data dirs.
"""

from __future__ import annotations

import argparse
import ctypes
import random
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from asr.atomic import atomic_open, atomic_path

ACCENTS = ["en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan",
           "en-gb-x-gbcwmd", "en-us-nyc"]
VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5"]
SAMPLE_RATE = 16000

# espeak-ng's speak_lib.h constants.
AUDIO_OUTPUT_SYNCHRONOUS = 2
POS_CHARACTER = 1
ESPEAK_CHARS_UTF8 = 1
ESPEAK_RATE, ESPEAK_PITCH = 1, 3

ROOMS = ["kitchen", "bedroom", "living room", "garage", "bathroom", "office", "hall", "garden"]
DEVICES = ["lights", "fan", "heater", "radio", "television", "lamp", "speaker"]
NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
           "twelve"]
TEMPS = ["sixteen", "seventeen", "eighteen", "nineteen", "twenty", "twenty one", "twenty two"]
MINUTES = ["sharp", "fifteen", "thirty", "forty five"]
GENRES = ["jazz", "rock", "classical", "pop", "folk"]
CITIES = ["london", "paris", "boston", "tokyo", "berlin", "madrid", "dublin"]
PEOPLE = ["alice", "bob", "mum", "dad", "grandma", "peter", "sarah"]
DOORS = ["front door", "back door", "garage door", "window", "curtains", "blinds"]
FOOD = ["milk", "eggs", "bread", "apples", "coffee", "butter", "rice", "cheese"]


def sentence(rng: random.Random) -> str:
    """One sentence of the demo grammar (about 90 words, a handful of templates)."""
    c = rng.choice
    templates = [
        lambda: f"turn {c(['on', 'off'])} the {c(ROOMS)} {c(DEVICES)}",
        lambda: f"set the {c(ROOMS)} temperature to {c(TEMPS)} degrees",
        lambda: f"set an alarm for {c(NUMBERS)} {c(MINUTES)}" + c(["", " in the morning", " in the evening"]),
        lambda: f"play some {c(GENRES)} music in the {c(ROOMS)}",
        lambda: f"what is the weather {c(['today', 'tomorrow'])} in {c(CITIES)}",
        lambda: f"call {c(PEOPLE)} {c(['now', 'at home', 'on the mobile'])}",
        lambda: f"{c(['open', 'close'])} the {c(DOORS)}",
        lambda: f"add {c(FOOD)} and {c(FOOD)} to the shopping list",
        lambda: f"remind me to call {c(PEOPLE)} at {c(NUMBERS)} {c(MINUTES)}",
    ]
    return c(templates)()


class Espeak:
    """Synchronous espeak-ng synthesis through ctypes; ``say`` returns int16 samples at ``rate``."""

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError:
            sys.exit("synth.py: espeakng-loader is missing: run .venv/bin/pip install espeakng-loader "
                     "(or pip install -e '.[demo]')")
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        self.rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0,
                                          espeakng_loader.get_data_path().encode(), 0)
        if self.rate <= 0:
            sys.exit("synth.py: espeak_Initialize failed")
        self._chunks: list[np.ndarray] = []

        def on_audio(wav, n, _events):  # noqa: ANN001 - ctypes callback
            if n > 0:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0

        # Keep a reference: ctypes callbacks are freed with their Python object.
        self._callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                          ctypes.c_void_p)(on_audio)
        lib.espeak_SetSynthCallback(self._callback)
        self.lib = lib

    def say(self, text: str, voice: str, rate: int, pitch: int, seed: int | None = None) -> np.ndarray:
        """``seed`` seeds espeak-ng's own generator (breathy variants such as f3 draw noise from it), so
        the samples no longer depend on what was said before; None leaves it running on."""
        if seed is not None:
            self.lib.espeak_ng_SetRandSeed(ctypes.c_long(seed))
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise RuntimeError(f"espeak-ng has no voice {voice}")
        self.lib.espeak_SetParameter(ESPEAK_RATE, rate, 0)
        self.lib.espeak_SetParameter(ESPEAK_PITCH, pitch, 0)
        self._chunks = []
        data = text.encode()
        if self.lib.espeak_Synth(data, len(data) + 1, 0, POS_CHARACTER, 0, ESPEAK_CHARS_UTF8, None, None):
            raise RuntimeError(f"espeak_Synth failed for {text!r}")
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.int16)


def split_voices(seed: int, n_dev: int, n_test: int) -> dict[str, str]:
    """voice -> train|dev|test. Held-out voices are accent/variant pairs on distinct diagonals of the
    accent x variant grid, so each held-out accent and variant still occurs in training."""
    rng = random.Random(seed)
    offsets = rng.sample(range(len(VARIANTS)), 2)
    split = {f"{acc}+{var}": "train" for acc in ACCENTS for var in VARIANTS}
    for name, off, n in (("dev", offsets[0], n_dev), ("test", offsets[1], n_test)):
        for i in range(min(n, len(ACCENTS))):
            split[f"{ACCENTS[i]}+{VARIANTS[(i + off) % len(VARIANTS)]}"] = name
    return split


def voice_id(voice: str) -> str:
    return voice.replace("+", "_")


def add_noise(x: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """``(T,)`` float -> same plus pink-ish noise at ``snr_db`` (white noise, one-pole low-passed)."""
    white = rng.standard_normal(x.shape[0] + 1).astype(np.float32)
    noise = (white[1:] + 0.7 * white[:-1]).astype(np.float32)
    p_sig = float(np.mean(x ** 2)) + 1e-12
    p_noise = float(np.mean(noise ** 2)) + 1e-12
    return x + noise * np.sqrt(p_sig / (p_noise * 10 ** (snr_db / 10)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="corpus directory to write")
    p.add_argument("--train-utts", type=int, default=16, help="utterances per training voice")
    p.add_argument("--dev-utts", type=int, default=12, help="utterances per dev voice")
    p.add_argument("--test-utts", type=int, default=25, help="utterances per test voice")
    p.add_argument("--dev-voices", type=int, default=4)
    p.add_argument("--test-voices", type=int, default=8)
    p.add_argument("--max-train-voices", type=int, default=0, help="0 = all (debug runs use a few)")
    p.add_argument("--snr", default="10:35", help="uniform SNR range in dB, 'lo:hi'; 'inf' = no noise")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)

    # Per-utterance resampling is tiny work: extra threads only contend with the rest of the machine.
    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    nrng = np.random.default_rng(args.seed)
    split = split_voices(args.seed, args.dev_voices, args.test_voices)
    train_voices = [v for v in split if split[v] == "train"]
    if args.max_train_voices:
        train_voices = sorted(rng.sample(train_voices, args.max_train_voices))
    per_set = {"train": args.train_utts, "dev": args.dev_utts, "test": args.test_utts}
    voices = [v for v in split if split[v] != "train"] + train_voices
    tts = Espeak()
    lines = []
    for voice in sorted(voices):
        vid = voice_id(voice)
        wav_dir = args.out / "wav" / vid
        wav_dir.mkdir(parents=True, exist_ok=True)
        for k in range(per_set[split[voice]]):
            text = sentence(rng)
            rate, pitch = rng.randint(140, 200), rng.randint(30, 70)
            snr = float("inf") if args.snr == "inf" else rng.uniform(*map(float, args.snr.split(":")))
            samples = tts.say(text, voice, rate, pitch).astype(np.float32) / 32768.0
            wave = AF.resample(torch.from_numpy(samples), tts.rate, SAMPLE_RATE).numpy()
            if np.isfinite(snr):
                wave = add_noise(wave, snr, nrng)
            peak = float(np.abs(wave).max()) or 1.0
            wave = wave * min(1.0, 0.9 / peak)
            utt = f"{vid}-{k:03d}"
            with atomic_path(wav_dir / f"{utt}.wav") as tmp:
                sf.write(tmp, wave, SAMPLE_RATE, subtype="PCM_16", format="WAV")
            lines.append(f"{utt}\t{vid}\t{split[voice]}\t{rate}\t{pitch}\t{snr:.1f}\t{text}\n")
    with atomic_open(args.out / "prompts.tsv", "w") as f:
        f.writelines(lines)
    counts = {s: sum(1 for ln in lines if ln.split("\t")[2] == s) for s in per_set}
    print(f"synth.py: {args.out}: {len(voices)} voices, utterances {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
