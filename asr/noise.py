"""Additive noise at a random SNR: ``asr add-noise SRC DST --snr LOW HIGH``.

A copy of a data dir in which each utterance has noise added at an SNR drawn uniformly from
``[LOW, HIGH]`` dB, written as 16-bit FLAC under ``DST/wav/`` (the realisation of ``perturb-speed``,
see :mod:`asr.perturb_speed`), with utterance and speaker ids prefixed ``noise-``. SNR is the ratio of the
utterance's mean power to the added noise's, over the whole utterance. Noise comes from:

* ``corpus`` (default; there is no MUSAN here): the corpus's own non-speech. The quietest 25 ms frames
  (bottom 10 % by energy) of each utterance, each utterance's share scaled to unit power, joined by
  overlap-add with a sine window (no clicks at the joins, constant expected power) into one pool.
  These frames are mostly channel and room noise, with some breath and faint speech tails.
* ``white``, ``pink``, ``brown``: synthetic Gaussian noise with a 1, 1/f or 1/f^2 power spectrum.
* a ``wav.scp`` file or a directory of audio files (wav/flac/ogg/mp3, searched recursively).

Every draw (the SNR, the noise span) comes from a generator seeded with ``--seed`` and the utterance id,
so the output does not depend on ``--nj`` or on the order of work (with ``corpus`` noise the pool is
made of the other utterances, so a subset of SRC gets other noise).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import math
import multiprocessing as mp
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from asr.audio import AudioStream, iter_utterances, load_utterance, load_wav_scp_entry
from asr.audio_copy import audio_copy_dirs, init_worker, write_flac
from asr.datadir import KNOWN_FILES, DataDir, Segment, read_kv, write_data_dir, write_kv
from asr.errors import AsrError
from asr.lock import hold

log = logging.getLogger(__name__)

COLOURS = ("white", "pink", "brown")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
# A frame quieter than one 16-bit step is digital silence, not noise: it would only dilute the pool.
_SILENCE_POWER = (1.0 / 32768) ** 2
_PEAK = 32767 / 32768  # the largest 16-bit sample


def utt_rng(seed: int, utt: str) -> np.random.Generator:
    """The generator of utterance ``utt``: a function of the seed and the id only (not of ``hash()``,
    which Python salts per process)."""
    key = int.from_bytes(hashlib.sha256(utt.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng([seed, key])


def coloured_noise(n: int, colour: str, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise ``(n,)`` float64 with power spectrum 1 (white), 1/f (pink) or 1/f^2 (brown)."""
    white = rng.standard_normal(n)
    if colour == "white" or n < 2:
        return white
    spec = np.fft.rfft(white)
    f = np.arange(spec.size, dtype=np.float64)
    f[0] = 1.0
    spec /= np.sqrt(f) if colour == "pink" else f
    spec[0] = 0.0  # no DC: it would count as noise power without being heard
    return np.fft.irfft(spec, n)


def quiet_frames(wave: np.ndarray, frame: int, share: float = 0.1) -> np.ndarray:
    """The quietest ``ceil(share * K)`` of the K non-overlapping frames of ``wave`` (T,), in time order,
    each with its mean removed; digital silence is never chosen. Returns ``(k, frame)``."""
    k = wave.size // frame
    if k == 0:
        return np.zeros((0, frame))
    frames = wave[: k * frame].reshape(k, frame).astype(np.float64)
    frames = frames - frames.mean(axis=1, keepdims=True)
    power = (frames**2).mean(axis=1)
    order = [i for i in np.argsort(power, kind="stable") if power[i] >= _SILENCE_POWER]
    return frames[np.sort(order[: math.ceil(share * k)]).astype(np.int64)]


def overlap_add(frames: np.ndarray) -> np.ndarray:
    """Join ``frames`` (K, L), L even, at hop L/2 under a sine window: ``(K + 1) * L / 2`` samples.

    Two unrelated frames overlap with weights sin and cos, whose squares sum to 1, so the expected
    power is the same everywhere and no join is a step.
    """
    k, length = frames.shape
    hop = length // 2
    win = np.sin(np.pi * (np.arange(length) + 0.5) / length)
    out = np.zeros((k + 1) * hop)
    even, odd = (frames[0::2] * win).ravel(), (frames[1::2] * win).ravel()
    out[: even.size] += even
    out[hop : hop + odd.size] += odd
    return out


def _span(wave: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` samples of ``wave`` from a random start, wrapping around when it is shorter."""
    start = int(rng.integers(0, wave.size))
    if start + n <= wave.size:
        return wave[start : start + n]
    return np.take(wave, np.arange(start, start + n) % wave.size)


@dataclass
class ColouredNoise:
    colour: str

    def draw(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
        return coloured_noise(n, self.colour, rng), self.colour


@dataclass
class NoisePool:
    """A 1-D noise signal; each draw is a random span of it."""

    wave: np.ndarray
    name: str = "corpus"

    def draw(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
        return _span(self.wave, n, rng), self.name


@dataclass
class NoiseFiles:
    """Noise recordings ``(id, wav.scp value, samples at rate)``; a draw picks one and a span of it."""

    entries: list[tuple[str, str, int]]
    rate: int

    def draw(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
        name, value, total = self.entries[int(rng.integers(0, len(self.entries)))]
        if value.strip().endswith("|") or total < n:
            return _span(_whole(value, self.rate), n, rng), name
        start = int(rng.integers(0, total - n + 1))
        # Span reads: a long noise recording is never decoded whole for one utterance.
        return AudioStream(value, self.rate, name).read(start, start + n).double().numpy(), name


@lru_cache(maxsize=4)
def _whole(value: str, rate: int) -> np.ndarray:
    return load_wav_scp_entry(value, rate).double().numpy()


Noise = ColouredNoise | NoisePool | NoiseFiles


def noise_files(spec: str | os.PathLike, rate: int) -> NoiseFiles:
    """The noise recordings of a ``wav.scp`` file or a directory; unreadable ones are logged and dropped."""
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
        listed = {str(p.relative_to(path)): str(p) for p in files}
    elif path.is_file():
        listed = read_kv(path)
    else:
        raise AsrError(f"--noise {spec}: no such file or directory (or use corpus, white, pink, brown)")
    entries = []
    for name, value in listed.items():
        try:
            pipe = value.strip().endswith("|")
            total = _whole(value, rate).size if pipe else AudioStream(value, rate).num_samples
        except AsrError as e:
            log.warning("add-noise: skipping noise %s: %s", name, e)
            continue
        entries.append((name, value, total))
    if not entries:
        raise AsrError(f"--noise {spec}: no readable audio in it")
    return NoiseFiles(entries, rate)


def corpus_noise_pool(
    data: DataDir, rate: int, seed: int = 0, max_seconds: float = 600.0, frame_ms: float = 25.0, share: float = 0.1
) -> NoisePool:
    """Noise from the quietest frames of ``data``'s utterances (see the module doc), at most ``max_seconds``.

    Utterances are visited in an order shuffled with ``seed`` until the pool is full, so a large corpus
    contributes a sample of its speakers rather than the first ones in sorted order.
    """
    frame = 2 * max(1, int(rate * frame_ms / 2000))  # even, for the half-frame hop
    order = [data.utts[i] for i in np.random.default_rng(seed).permutation(len(data.utts))]
    chosen: list[np.ndarray] = []
    total, limit = 0, int(max_seconds * rate)
    for _, wave in iter_utterances(data, rate, order):
        if isinstance(wave, AsrError):
            continue  # the mixing pass logs it
        frames = quiet_frames(wave.double().numpy(), frame, share)
        if frames.size == 0:
            continue
        # Equal level for every utterance's share: a loud channel must not drown the quiet ones' noise.
        chosen.append(frames / math.sqrt((frames**2).mean()))
        total += frames.size // 2
        if total >= limit:
            break
    if not chosen:
        raise AsrError(f"{data.path}: no non-silent frames to take noise from; use --noise white|pink|brown or a list")
    return NoisePool(overlap_add(np.concatenate(chosen))[:limit])


def mix_at_snr(signal: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``signal + g * noise`` (T,) with ``10 log10(P(signal) / P(g * noise)) = snr_db``, P the mean power.

    ``snr_db = inf`` returns ``signal`` itself. Raises AsrError when either power is 0 (SNR undefined).
    """
    if snr_db == math.inf:
        return signal
    ps, pn = float(np.mean(np.square(signal, dtype=np.float64))), float(np.mean(np.square(noise, dtype=np.float64)))
    if ps == 0.0:
        raise AsrError("silent audio: no SNR can be set")
    if pn == 0.0:
        raise AsrError("the noise drawn is silent")
    return signal + math.sqrt(ps / (pn * 10.0 ** (snr_db / 10.0))) * noise


def snr_db(signal: np.ndarray | torch.Tensor, noisy: np.ndarray | torch.Tensor) -> float:
    """Measured SNR in dB of ``noisy`` (T,) against the clean ``signal`` (T,): the noise is their difference."""
    s, y = np.asarray(signal, dtype=np.float64), np.asarray(noisy, dtype=np.float64)
    return 10.0 * math.log10(np.mean(s**2) / np.mean((y - s) ** 2))


# ---------------------------------------------------------------- the data-dir job


@dataclass
class AddNoiseResult:
    dst: Path
    snr: dict[str, float] = field(default_factory=dict)  # DST utterance -> SNR drawn (dB)
    skipped: list[str] = field(default_factory=list)  # source utterances


_JOB: tuple | None = None  # (data, rate, low, high, seed, noise, wav_dir, prefix): set before workers fork


def _init(job: tuple | None, worker: bool = True) -> None:
    global _JOB
    _JOB = job
    if worker:  # not in the caller's own process: its torch thread count is its business
        init_worker()


def _noise_one(utt: str) -> tuple[str, float, int, str | None]:
    """(utt, snr, samples written, error line or None)."""
    data, rate, low, high, seed, noise, wav_dir, prefix = _JOB
    rng = utt_rng(seed, utt)
    snr = float(rng.uniform(low, high))
    try:
        signal = load_utterance(data, utt, rate).double().numpy()
        drawn, source = noise.draw(signal.size, rng)
        try:
            mixed = mix_at_snr(signal, drawn, snr)
        except AsrError as e:
            raise AsrError(f"{utt}: {e} (noise {source})") from None
    except AsrError as e:
        msg = str(e)
        return utt, snr, 0, msg if msg.startswith(utt) else f"{utt}: {msg}"
    peak = float(np.abs(mixed).max())
    if peak > _PEAK:
        # Scaling signal and noise together keeps the SNR; clipping would add distortion on top.
        mixed = mixed * (_PEAK / peak)
    write_flac(wav_dir / f"{prefix}{utt}.flac", torch.from_numpy(mixed.astype(np.float32)), rate)
    return utt, snr, mixed.size, None


def _parse_noise(spec: str, data: DataDir, rate: int, seed: int) -> Noise:
    if spec in COLOURS:
        return ColouredNoise(spec)
    if spec == "corpus":
        return corpus_noise_pool(data, rate, seed)
    return noise_files(spec, rate)


def _clear_stale(dst: Path, keep: set[str]) -> None:
    # Files of an earlier run into DST would describe other audio (stale segments or feats.scp).
    for name in (*KNOWN_FILES, "utt2snr", "feats.yaml", "feats.ark", "cmvn.scp", "cmvn.ark", "cmvn_global.ark"):
        if name not in keep:
            with contextlib.suppress(FileNotFoundError):
                (dst / name).unlink()


def add_noise(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    snr: tuple[float, float],
    noise: str = "corpus",
    seed: int = 0,
    sample_rate: int = 16000,
    nj: int = 1,
    prefix: str = "noise-",
    progress: bool = True,
) -> AddNoiseResult:
    """Write the noisy copy of data dir ``src`` to ``dst`` (see the module doc). ``noise``: ``corpus``,
    a colour, or a wav.scp / directory of noise. ``snr = (inf, inf)`` reuses the source audio as it is.

    Utterances that cannot be read (or are silent) are skipped with one warning line each.
    Also writes ``DST/utt2snr`` (the SNR drawn per utterance) for per-SNR analysis.
    """
    low, high = float(snr[0]), float(snr[1])
    if math.isnan(low) or math.isnan(high) or not low <= high or low == -math.inf:
        raise AsrError(f"--snr {low} {high}: expected LOW <= HIGH in dB, e.g. --snr 5 20")
    if math.isinf(high) and not math.isinf(low):
        raise AsrError(f"--snr {low} {high}: an SNR cannot be drawn uniformly up to inf; use --snr inf inf")
    if not prefix or any(c.isspace() or c == "/" for c in prefix):
        raise AsrError(f"--prefix {prefix!r}: expected a non-empty id prefix without spaces or '/'")
    data, dst = audio_copy_dirs(src, dst, "adding noise")
    with hold(dst, "asr add-noise"):
        if math.isinf(low):
            return _write_clean_copy(data, dst, prefix)
        source = _parse_noise(noise, data, sample_rate, seed)
        wav_dir = (dst / "wav").absolute()
        wav_dir.mkdir(parents=True, exist_ok=True)
        job = (data, sample_rate, low, high, seed, source, wav_dir, prefix)
        result = AddNoiseResult(dst)
        lengths: dict[str, int] = {}
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        pool = ctx.Pool(nj, initializer=_init, initargs=(job,)) if nj > 1 else None
        if pool is None:
            _init(job, worker=False)
        results = pool.imap_unordered(_noise_one, data.utts, chunksize=4) if pool else map(_noise_one, data.utts)
        try:
            bar = tqdm(results, total=len(data.utts), desc="add-noise", unit="utt",
                       disable=None if progress else True, leave=False)
            for utt, drawn, n, err in bar:
                if err:
                    log.warning("add-noise: skipping %s", err)
                    result.skipped.append(utt)
                else:
                    result.snr[prefix + utt], lengths[prefix + utt] = drawn, n
        finally:
            if pool:
                pool.close()
                pool.join()
            _init(None, worker=False)  # drop the job (data, noise pool) held for the workers
        if not lengths:
            raise AsrError(f"{data.path}: no utterance could be processed")
        keep = {u[len(prefix) :] for u in lengths}
        _clear_stale(dst, {"wav.scp", "text", "utt2spk", "spk2utt", "segments", "reco2dur", "utt2snr"})
        # Each utterance is its own recording now; a segments file (whole files) only so that the copy
        # combines with a segmented source (combine-data-dirs keeps a file only when every source has it).
        segs = {u: Segment(u, 0.0, n / sample_rate) for u, n in lengths.items()} if data.segments else None
        write_data_dir(
            dst,
            wav_scp={u: str(wav_dir / f"{u}.flac") for u in lengths},
            segments=segs,
            text={prefix + u: t for u, t in data.text.items() if u in keep} if data.text is not None else None,
            utt2spk={prefix + u: prefix + s for u, s in data.utt2spk.items() if u in keep},
            reco2dur={u: n / sample_rate for u, n in lengths.items()},
        )
        write_kv(dst / "utt2snr", {u: f"{s:.4f}" for u, s in result.snr.items()})
        result.skipped.sort()
        return result


def _write_clean_copy(data: DataDir, dst: Path, prefix: str) -> AddNoiseResult:
    """SNR inf: the source's own audio entries under prefixed ids (like perturb-speed 1.0), no re-encoding."""
    _clear_stale(dst, {"wav.scp", "text", "utt2spk", "spk2utt", "segments", "reco2dur", "utt2snr"})
    segs = None
    if data.segments is not None:
        segs = {prefix + u: Segment(prefix + s.reco, s.start, s.end) for u, s in data.segments.items()}
    write_data_dir(
        dst,
        wav_scp={prefix + r: v for r, v in data.wav_scp.items()},
        segments=segs,
        text={prefix + u: t for u, t in data.text.items()} if data.text is not None else None,
        utt2spk={prefix + u: prefix + s for u, s in data.utt2spk.items()},
        reco2dur={prefix + r: d for r, d in data.reco2dur.items()} if data.reco2dur is not None else None,
    )
    result = AddNoiseResult(dst, snr={prefix + u: math.inf for u in data.utts})
    write_kv(dst / "utt2snr", {u: "inf" for u in result.snr})
    return result


def _cmd_add_noise(args: argparse.Namespace) -> int:
    r = add_noise(args.src, args.dst, tuple(args.snr), args.noise, args.seed, args.sample_rate, args.nj,
                  args.prefix, not args.no_progress)
    print(
        f"add-noise {args.src} -> {r.dst}: {len(r.snr)} utterances, SNR {args.snr[0]}..{args.snr[1]} dB, "
        f"noise {args.noise}" + (f"; skipped {len(r.skipped)}: {', '.join(r.skipped[:10])}" if r.skipped else "")
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "add-noise",
        help="noisy copy of a data dir at a random SNR per utterance (ids noise-...)",
        description="Write a copy of data dir SRC to DST in which every utterance has noise added at an SNR "
        "drawn uniformly from [LOW, HIGH] dB (mean power of the utterance over that of the noise), as 16-bit "
        "FLAC under DST/wav/, with utterance and speaker ids prefixed. The same --seed gives the same output "
        "whatever --nj. DST/utt2snr records each SNR.",
    )
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--snr", type=float, nargs=2, required=True, metavar=("LOW", "HIGH"),
                   help="SNR range in dB, drawn uniformly per utterance; 'inf inf' = the clean audio")
    p.add_argument("--noise", default="corpus",
                   help="corpus (quietest frames of SRC, default) | white | pink | brown | a wav.scp or directory")
    p.add_argument("--seed", type=int, default=0, help="seed of the SNR and noise draws")
    p.add_argument("--sample-rate", type=int, default=16000, help="rate of the written FLAC audio")
    p.add_argument("--prefix", default="noise-", help="prefix of the new utterance and speaker ids")
    p.add_argument("--nj", type=int, default=1, help="parallel processes")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_add_noise)
