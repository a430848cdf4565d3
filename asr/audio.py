"""The one place that reads audio.

``wav.scp`` values are a file path or a Kaldi extended filename ``cmd args |`` whose stdout is an
audio file; ``segments`` cut recordings into utterances; :class:`AudioStream` reads spans of a long
file without holding it all, and :class:`AudioSource` is what ``asr transcribe`` reads from.
soundfile (libsndfile) decodes wav, flac, ogg and mp3; stereo is averaged to mono; any rate is
resampled to the requested one.
"""

from __future__ import annotations

import io
import logging
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from functools import lru_cache
from typing import BinaryIO

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from asr.datadir import DataDir
from asr.errors import AsrError

log = logging.getLogger(__name__)
PIPE_TIMEOUT_S = 600
# torchaudio's sinc resampler reaches 6 / 0.99 input periods of the lower rate either side of a
# sample; a span read with this much more around it resamples exactly as the whole file does.
_RESAMPLE_REACH = 8


def _decode(source: str | os.PathLike | BinaryIO, name: str) -> tuple[np.ndarray, int]:
    try:
        data, rate = sf.read(source, dtype="float32", always_2d=True)
    except FileNotFoundError:
        raise AsrError(f"{name}: no such file") from None
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise AsrError(f"{name}: cannot decode audio ({str(e).strip().splitlines()[0]})") from None
    return data, rate


def _to_mono_resampled(data: np.ndarray, rate: int, sample_rate: int, name: str) -> torch.Tensor:
    """``(T, C)`` samples at ``rate`` -> ``(T',)`` mono float32 at ``sample_rate``."""
    if data.shape[0] == 0:
        raise AsrError(f"{name}: empty audio (0 samples)")
    if not np.isfinite(data).all():
        raise AsrError(f"{name}: audio contains NaN or infinite samples")
    wave = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    if rate != sample_rate:
        wave = AF.resample(wave, rate, sample_rate)
    return wave


def read_audio(source: str | os.PathLike | BinaryIO, sample_rate: int, name: str | None = None) -> torch.Tensor:
    """Read a whole audio file (path or binary file object). Returns ``(T,)`` float32 mono at ``sample_rate``."""
    name = name or str(getattr(source, "name", source))
    if isinstance(source, (str, os.PathLike)) and os.path.isfile(source) and os.path.getsize(source) == 0:
        raise AsrError(f"{name}: empty file")
    data, rate = _decode(source, name)
    return _to_mono_resampled(data, rate, sample_rate, name)


def run_pipe(command: str, name: str) -> bytes:
    """Run a wav.scp pipe command (``cmd args``) through the shell and return its stdout."""
    try:
        proc = subprocess.run(command, shell=True, capture_output=True, timeout=PIPE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise AsrError(f"{name}: pipe command timed out after {PIPE_TIMEOUT_S}s: {command}") from None
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise AsrError(f"{name}: pipe command failed (exit {proc.returncode}): {command}"
                       + (f": {err[-1]}" if err else ""))
    if not proc.stdout:
        raise AsrError(f"{name}: pipe command printed nothing: {command}")
    return proc.stdout


def load_wav_scp_entry(value: str, sample_rate: int, start: float | None = None, end: float | None = None,
                       name: str | None = None) -> torch.Tensor:
    """Audio of one wav.scp value (path or ``cmd |``), optionally cut to ``[start, end)`` seconds.

    Returns ``(T,)`` float32 mono at ``sample_rate``.
    """
    name = name or value
    value = value.strip()
    if value.endswith("|"):
        source: str | BinaryIO = io.BytesIO(run_pipe(value[:-1].strip(), name))
        label = f"{name} (pipe)"
    else:
        source, label = value, name
        if not os.path.exists(value):
            raise AsrError(f"{name}: no such file: {value}")
        if os.path.getsize(value) == 0:
            raise AsrError(f"{name}: empty file: {value}")
    if start is None:
        data, rate = _decode(source, label)
    else:
        data, rate = _read_segment(source, label, start, end)
    return _to_mono_resampled(data, rate, sample_rate, label)


def _read_segment(source: str | BinaryIO, name: str, start: float, end: float | None) -> tuple[np.ndarray, int]:
    """Read only ``[start, end)`` seconds: seeking keeps segmented long recordings cheap."""
    try:
        with sf.SoundFile(source) as f:
            rate, total = f.samplerate, f.frames
            first = int(round(start * rate))
            last = total if end is None or end < 0 else min(int(round(end * rate)), total)
            if first >= total:
                raise AsrError(f"{name}: segment starts at {start}s, after the end of the audio "
                               f"({total / rate:.2f}s)")
            f.seek(first)
            data = f.read(last - first, dtype="float32", always_2d=True)
    except sf.LibsndfileError as e:
        raise AsrError(f"{name}: cannot decode audio ({str(e).strip()})") from None
    return data, rate


def audio_duration(value: str) -> float:
    """Duration in seconds of a wav.scp value without decoding samples (pipes are run)."""
    value = value.strip()
    source: str | BinaryIO = io.BytesIO(run_pipe(value[:-1], value)) if value.endswith("|") else value
    try:
        info = sf.info(source)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AsrError(f"{value}: cannot read audio header ({str(e).strip()})") from None
    return info.frames / info.samplerate


def load_utterance(data: DataDir, utt: str, sample_rate: int) -> torch.Tensor:
    """Audio of utterance ``utt`` of a data dir (via segments when present). Returns ``(T,)``."""
    if data.wav_scp is None:
        raise AsrError(f"{data.path}/wav.scp: no such file")
    if data.segments is not None:
        seg = data.segments.get(utt)
        if seg is None:
            raise AsrError(f"{utt}: not in {data.path}/segments")
        if seg.reco not in data.wav_scp:
            raise AsrError(f"{utt}: recording {seg.reco} not in {data.path}/wav.scp")
        value = data.wav_scp[seg.reco]
        if value.strip().endswith("|"):
            # A pipe cannot seek: decode the recording once per call and cut in memory.
            wave = _cached_pipe(value, sample_rate)
            a, b = int(seg.start * sample_rate), int(seg.end * sample_rate)
            if a >= wave.numel():
                raise AsrError(f"{utt}: segment starts after the end of recording {seg.reco}")
            return wave[a:b]
        return load_wav_scp_entry(value, sample_rate, seg.start, seg.end, name=utt)
    if utt not in data.wav_scp:
        raise AsrError(f"{utt}: not in {data.path}/wav.scp")
    return load_wav_scp_entry(data.wav_scp[utt], sample_rate, name=utt)


@lru_cache(maxsize=2)
def _cached_pipe(value: str, sample_rate: int) -> torch.Tensor:
    return load_wav_scp_entry(value, sample_rate)


def iter_utterances(data: DataDir, sample_rate: int,
                    utts: list[str] | None = None) -> Iterator[tuple[str, torch.Tensor | AsrError]]:
    """Yield ``(utt, wave (T,))`` for each utterance, or ``(utt, AsrError)`` for one that cannot be read.

    Errors are yielded, not raised, so a batch job can log the utterance and go on.
    """
    for utt in utts if utts is not None else data.utts:
        try:
            yield utt, load_utterance(data, utt, sample_rate)
        except AsrError as e:
            msg = str(e)
            yield utt, AsrError(msg if msg.startswith(utt) else f"{utt}: {msg}")


class AudioStream:
    """A file read span by span, mono at ``rate``: long recordings without holding all of them.

    ``read(a, b)`` equals ``read_audio(path, rate)[a:b]``: the native span read is widened by the
    resampler's reach and starts on a sample where the two rates' sample grids meet, so each output
    sample sees the same input as when the whole file is resampled.
    """

    def __init__(self, path: str | os.PathLike, rate: int, name: str | None = None):
        self.path, self.rate, self.name = str(path), rate, name or str(path)
        if not os.path.isfile(self.path):
            raise AsrError(f"{self.name}: no such file")
        if os.path.getsize(self.path) == 0:
            raise AsrError(f"{self.name}: empty file")
        try:
            info = sf.info(self.path)
        except (sf.LibsndfileError, RuntimeError) as e:
            raise AsrError(f"{self.name}: cannot decode audio ({str(e).strip().splitlines()[0]})") from None
        if info.frames <= 0:
            raise AsrError(f"{self.name}: empty audio (0 samples)")
        self.native, self.frames = info.samplerate, info.frames
        g = math.gcd(self.native, rate)
        # One block is the shortest stretch holding a whole number of samples at both rates.
        self._block_in, self._block_out = self.native // g, rate // g
        self.num_samples = -(-self.frames * self._block_out // self._block_in)  # as resample's ceil
        reach = _RESAMPLE_REACH * self.native // min(self.native, rate) + 1
        self._pad_blocks = -(-reach // self._block_in) if self.native != rate else 0

    @property
    def duration(self) -> float:
        return self.frames / self.native

    def read(self, a: int, b: int) -> torch.Tensor:
        """Samples ``[a, b)`` at ``rate``, mono ``(b - a,)``; zeros past the end of the file."""
        a, b = max(0, a), max(a, b)
        first = max(0, a // self._block_out - self._pad_blocks)
        last = min(-(-self.frames // self._block_in), -(-b // self._block_out) + self._pad_blocks)
        try:
            with sf.SoundFile(self.path) as f:
                f.seek(first * self._block_in)
                data = f.read(max(0, last - first) * self._block_in, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as e:
            raise AsrError(f"{self.name}: cannot decode audio ({str(e).strip().splitlines()[0]})") from None
        if data.shape[0] == 0:
            return torch.zeros(b - a)
        wave = _to_mono_resampled(data, self.native, self.rate, self.name)
        out = wave[a - first * self._block_out : b - first * self._block_out]
        return torch.nn.functional.pad(out, (0, (b - a) - out.numel()))


class AudioSource:
    """A recording read piece by piece at ``rate`` (files are streamed; pipes/stdin are held in memory)."""

    def __init__(self, name: str, rate: int, num_samples: int, reader):
        self.name, self.rate, self.num_samples, self._reader = name, rate, num_samples, reader

    def read(self, a: int, b: int) -> torch.Tensor:
        """Samples ``[a, b)`` at ``rate``, mono ``(b - a,)``."""
        return self._reader(max(0, a), min(b, self.num_samples))

    @classmethod
    def from_tensor(cls, name: str, wave: torch.Tensor, rate: int) -> AudioSource:
        return cls(name, rate, wave.numel(), lambda a, b: wave[a:b])

    @classmethod
    def open(cls, path: str, rate: int, name: str | None = None) -> AudioSource:
        name = name or path
        if path == "-":
            data = sys.stdin.buffer.read()
            if not data:
                raise AsrError("-: nothing on standard input")
            return cls.from_tensor("-", read_audio(io.BytesIO(data), rate, name="-"), rate)
        stream = AudioStream(path, rate, name)
        if stream.duration < 120:  # short files: one read, no streaming bookkeeping
            return cls.from_tensor(name, stream.read(0, stream.num_samples), rate)
        return cls(name, rate, stream.num_samples, stream.read)
