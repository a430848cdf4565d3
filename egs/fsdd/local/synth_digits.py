#!/usr/bin/env python3
"""Synthetic speakers for FSDD: isolated digits ZERO..NINE spoken by espeak-ng voices -> a Kaldi data dir.

FSDD has 5 speakers, so a model trained on 4 of them learns the speakers rather than the digits.
This writes many more voices: every English accent of the demo corpus (``egs/demo/local/synth.py``,
whose ctypes synthesiser is imported, not copied) times every human-sounding espeak-ng voice variant
(robots, whisper and effect voices left out), each saying ``--utts-per-voice`` digits with a random
rate, pitch, end punctuation (intonation), spectral tilt, level and noise, trimmed of silence like
FSDD's recordings and resampled to FSDD's 8 kHz. Digits are dealt out round-robin over all
utterances, so every digit occurs equally often (to within one) and each voice says different ones.

Writes ``OUT/wav/<speaker>/<utt>.wav`` (8 kHz, 16-bit) and the data dir ``OUT`` (wav.scp with
absolute paths, text, utt2spk, spk2utt, utt2synth with each utterance's settings). Speakers are
``tts-<accent>_<variant>``, utterance ids ``<speaker>-<k>``. Deterministic: the same command (and
espeakng-loader version) writes the same bytes. Every voice draws its settings from its own generator,
seeded by ``--seed`` and the voice, and every utterance seeds espeak-ng's own noise generator, which the
breathy variants (f2, f3, Alicia, ...) draw from; before, those voices differed from run to run.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from asr.atomic import atomic_path
from asr.datadir import write_data_dir, write_kv
from asr.errors import AsrError, run_script

# The demo's synthesiser and accents (egs/demo/local/synth.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "demo" / "local"))
import synth  # noqa: E402

WORDS = ["ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE"]
SAMPLE_RATE = 8000
# espeak-ng 1.5x voice variants (espeak-ng-data/voices/!v) that sound like a person: the demo's
# m1-m7/f1-f5 plus the named ones. Left out: robosoft*, UniRobot, anikaRobot, Demonic, croak, Tweaky,
# whisper, whisperf, fast (a test voice) and "Mr serious" (a space in its name).
VARIANTS = synth.VARIANTS + [
    "m8", "Alex", "Alicia", "Andrea", "Andy", "Annie", "AnxiousAndy", "Denis", "Diogo", "Gene", "Gene2",
    "Henrique", "Hugo", "Jacky", "Lee", "Marco", "Mario", "Michael", "Mike", "Nguyen", "Reed",
    "RicishayMax", "RicishayMax2", "RicishayMax3", "Storm", "adam", "anika", "announcer", "antonio",
    "aunty", "belinda", "benjamin", "boris", "caleb", "david", "ed", "edward", "edward2", "grandma",
    "grandpa", "gustave", "ian", "iven", "iven2", "iven3", "iven4", "john", "kaukovalta", "klatt",
    "klatt2", "klatt3", "klatt4", "klatt5", "klatt6", "linda", "marcelo", "max", "michel", "miguel",
    "mike2", "norbert", "pablo", "paul", "pedro", "quincy", "rob", "robert", "sandro", "shelby",
    "steph", "steph2", "steph3", "travis", "victor", "zac",
]


def voices(max_voices: int = 0, seed: int = 1) -> list[str]:
    """``accent+variant`` for every accent and variant, sorted; ``max_voices`` > 0 keeps a seeded sample."""
    out = sorted(f"{a}+{v}" for a in synth.ACCENTS for v in VARIANTS)
    if 0 < max_voices < len(out):
        out = sorted(random.Random(f"voices-{seed}").sample(out, max_voices))
    return out


def trim(x: np.ndarray, rel_db: float = -35.0, margin: int = 0) -> np.ndarray:
    """Cut leading and trailing samples quieter than ``rel_db`` below the peak, keeping ``margin`` of them."""
    loud = np.nonzero(np.abs(x) > np.abs(x).max() * 10 ** (rel_db / 20))[0]
    if loud.size == 0:
        return x
    return x[max(0, loud[0] - margin):loud[-1] + 1 + margin]


def channel_settings(rng: random.Random, snr_range: tuple[float, float]) -> dict:
    """Random recording settings of one utterance: spectral tilt, peak level, SNR and kept silence."""
    return {"tilt": round(rng.uniform(-0.5, 0.7), 2), "peak": round(10 ** rng.uniform(-1.5, -0.05), 3),
            "snr": round(rng.uniform(*snr_range), 1), "margin_ms": rng.randint(0, 60)}


def apply_channel(x: np.ndarray, rate: int, s: dict, nrng: np.random.Generator,
                  sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A synthesiser's float samples ``(n,)`` at ``rate`` -> FSDD-like samples at ``sample_rate``: resampled,
    trimmed of silence like FSDD (keeping ``margin_ms``), tilted, noised and scaled as ``s`` says."""
    x = AF.resample(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), rate, sample_rate).numpy()
    x = trim(x, margin=s["margin_ms"] * sample_rate // 1000)
    x = np.append(x[:1], x[1:] - s["tilt"] * x[:-1])  # first-order pre-/de-emphasis: a different channel
    if np.isfinite(s["snr"]):
        x = synth.add_noise(x, s["snr"], nrng)
    return (x * (s["peak"] / (float(np.abs(x).max()) or 1.0))).astype(np.float32)


def render(tts: synth.Espeak, word: str, voice: str, rng: random.Random, nrng: np.random.Generator,
           snr_range: tuple[float, float], sample_rate: int = SAMPLE_RATE,
           tts_seed: int | None = None) -> tuple[np.ndarray, dict]:
    """One digit (or any text) in one voice with random settings -> (float samples at ``sample_rate``, the
    settings); ``tts_seed`` seeds espeak-ng's own noise (``synth.Espeak.say``)."""
    s = {"rate": rng.randint(120, 260), "pitch": rng.randint(15, 85), "punct": rng.choice(["", ".", "!", "?", ","])}
    s.update(channel_settings(rng, snr_range))
    x = tts.say(word.lower() + s["punct"], voice, s["rate"], s["pitch"], seed=tts_seed).astype(np.float32) / 32768.0
    if x.size == 0 or not np.any(x):
        raise AsrError(f"espeak-ng gave no audio for {word!r} in voice {voice}")
    return apply_channel(x, tts.rate, s, nrng, sample_rate), s


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="data dir to write (audio goes under OUT/wav/)")
    p.add_argument("--utts-per-voice", type=int, default=3, help="digits each voice says")
    p.add_argument("--max-voices", type=int, default=0, help="0 = every accent x variant; else a seeded sample")
    p.add_argument("--snr", default="15:50", help="uniform SNR range in dB of added pink-ish noise, 'lo:hi'")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    if args.utts_per_voice < 1:
        raise AsrError(f"--utts-per-voice {args.utts_per_voice}: must be at least 1")
    snr_range = tuple(map(float, args.snr.split(":")))
    torch.set_num_threads(1)
    tts = synth.Espeak()
    out = args.out.resolve()
    wav_scp, text, utt2spk, info = {}, {}, {}, {}
    n = 0
    for voice in voices(args.max_voices, args.seed):
        spk = "tts-" + synth.voice_id(voice)
        rng = random.Random(f"{args.seed}-{voice}")
        nrng = np.random.default_rng(rng.getrandbits(64))
        (out / "wav" / spk).mkdir(parents=True, exist_ok=True)
        for k in range(args.utts_per_voice):
            word = WORDS[n % len(WORDS)]
            n += 1
            utt = f"{spk}-{k:02d}"
            wave, s = render(tts, word, voice, rng, nrng, snr_range,
                             tts_seed=random.Random(f"tts-{args.seed}-{utt}").getrandbits(31))
            wav = out / "wav" / spk / f"{utt}.wav"
            with atomic_path(wav) as tmp:
                sf.write(tmp, wave, SAMPLE_RATE, subtype="PCM_16", format="WAV")
            wav_scp[utt], text[utt], utt2spk[utt] = str(wav), word, spk
            info[utt] = " ".join(f"{key}={val if val != '' else 'none'}" for key, val in s.items())
    write_data_dir(out, wav_scp=wav_scp, text=text, utt2spk=utt2spk)
    write_kv(out / "utt2synth", info)
    print(f"synth_digits.py: {args.out}: {len(utt2spk)} utterances, {len(set(utt2spk.values()))} voices, 8 kHz")
    return 0


if __name__ == "__main__":
    run_script(main, "synth_digits.py")
