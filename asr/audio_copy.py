"""The frame shared by the jobs that write a modified copy of a data dir's audio (``asr perturb-speed``,
``asr add-noise``): checking source and destination, worker set-up, and writing the new audio.

New audio is written as 16-bit FLAC under ``DST/wav/`` and ``DST/wav.scp`` points at those files. Kaldi
writes ``sox ... |`` pipes into wav.scp instead, but sox is not installed everywhere, and a pipe into
Python would start an interpreter (and torch) for every read of every utterance. FLAC is lossless at 16
bits, about half the size of WAV, and libsndfile decodes it quickly; the data dir stays a plain
path-based wav.scp that any tool can read.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from asr.atomic import atomic_path
from asr.datadir import DataDir, check_audio_dir
from asr.errors import AsrError


def write_flac(path: str | os.PathLike, wave: torch.Tensor, rate: int) -> None:
    """Write ``wave`` (T,) in [-1, 1] atomically as 16-bit FLAC."""
    with atomic_path(path) as tmp:
        sf.write(tmp, np.clip(wave.numpy(), -1.0, 1.0), rate, format="FLAC", subtype="PCM_16")


def init_worker() -> None:
    """Pool initializer of the data-dir jobs: one torch thread per process, ``--nj`` is the parallelism."""
    torch.set_num_threads(1)


def audio_copy_dirs(src: str | Path, dst: str | Path, what: str) -> tuple[DataDir, Path]:
    """Checks shared by the jobs that write a modified copy of a data dir's audio: the loaded source
    (which must have readable audio) and the created destination, which must be another dir."""
    data = DataDir.load(src)
    if data.wav_scp is None:
        raise AsrError(f"{data.path}/wav.scp: no such file ({what} needs audio)")
    check_audio_dir(data.path)
    dst = Path(dst)
    if dst.resolve() == data.path.resolve():
        raise AsrError(f"{dst}: destination must differ from the source")
    dst.mkdir(parents=True, exist_ok=True)
    return data, dst
