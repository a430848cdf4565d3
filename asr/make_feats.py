"""The ``make-feats`` batch job: audio of a data dir -> ``feats.ark``/``feats.scp``, ``utt2num_frames``,
``feats.yaml``.

With ``nj > 1`` the data dir is split by speaker (``asr.datadir_ops.split_data_dir``, Kaldi's split_data.sh)
and each part is computed in its own process (one torch thread each); the parts' arks are concatenated
into one ``feats.ark`` with shifted offsets, so the result is byte-identical to ``nj = 1``.

Nothing half-written is ever visible: arks are written under temp names in the data dir; at commit the
old ``feats.scp`` is removed first, then ``feats.ark`` is renamed into place, ``feats.yaml`` and
``utt2num_frames`` are written, and ``feats.scp`` last. A crash at any point leaves either the old
consistent set, no ``feats.scp`` (stage reruns), or the new set. The ark is fsynced before its rename
and every small file is written atomically, so the same holds after a power cut.

Only one make-feats runs per data dir (:func:`asr.lock.hold`); a second one is refused with one line.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing as mp
import os
import queue as queue_mod
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from kaldiio.matio import write_array
from tqdm import tqdm

from asr.atomic import fsync_file
from asr.audio import iter_utterances
from asr.config import dump, from_dict, to_dict
from asr.datadir import DataDir, check_audio_dir, write_kv
from asr.datadir_ops import split_data_dir
from asr.errors import AsrError
from asr.features import FeatureConfig, compute_features, load_feature_config
from asr.lock import hold

log = logging.getLogger(__name__)

# (utt, byte offset of the matrix in its ark, frames, dim)
Entry = tuple[str, int, int, int]


@dataclass
class MakeFeatsResult:
    data_dir: Path
    written: int = 0
    frames: int = 0
    dim: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (utt, reason)
    precomputed: bool = False
    seconds: float = 0.0

    def summary(self) -> str:
        if self.precomputed:
            return (
                f"make-feats {self.data_dir}: precomputed features ({self.written} utterances in feats.scp, "
                "no wav.scp); left as they are"
            )
        line = (
            f"make-feats {self.data_dir}: wrote {self.written} utterances ({self.frames} frames, "
            f"{self.dim} dims) in {self.seconds:.1f}s; skipped {len(self.skipped)}"
        )
        if self.skipped:
            names = ", ".join(u for u, _ in self.skipped[:10]) + (", ..." if len(self.skipped) > 10 else "")
            line += f" ({names}); 'asr fix-data-dir {self.data_dir}' drops them from the other files"
        return line


def _warn_skip(msg: str) -> None:
    log.warning("make-feats: skipping %s", msg)


def _extract(
    data: DataDir, cfg: FeatureConfig, ark: Path, report, warn=_warn_skip
) -> tuple[list[Entry], list[tuple[str, str]]]:
    """Features of every utterance of ``data`` appended to ``ark``; bad ones are passed to ``warn`` and listed.

    ``report(1)`` is called per utterance (progress).
    """
    entries: list[Entry] = []
    bad: list[tuple[str, str]] = []
    with open(ark, "wb") as f:
        for utt, wave in iter_utterances(data, cfg.sample_rate):
            try:
                if isinstance(wave, AsrError):
                    raise wave
                feats = compute_features(wave, cfg, name=utt)
            except (AsrError, RuntimeError, ValueError) as e:
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                msg = msg if msg.startswith(utt) else f"{utt}: {msg}"
                warn(msg)
                bad.append((utt, msg))
            else:
                f.write(f"{utt} ".encode())
                offset = f.tell()
                write_array(f, feats.numpy())
                entries.append((utt, offset, feats.shape[0], feats.shape[1]))
            report(1)
    return entries, bad


_QUEUE = None


def _init_worker(q) -> None:
    global _QUEUE
    _QUEUE = q
    torch.set_num_threads(1)  # one core per job; --nj is the parallelism


def _extract_part(part: str, cfg_dict: dict, ark: str) -> tuple[list[Entry], list[tuple[str, str]]]:
    cfg = from_dict(FeatureConfig, cfg_dict)
    # Progress (int) and skip messages (str) go to the parent, which logs them: its logging setup (and
    # pytest's caplog) is the one that counts, and lines do not interleave with the progress bar.
    return _extract(DataDir.load(part), cfg, Path(ark), _QUEUE.put, _QUEUE.put)


def _tmp(d: Path, tag: str) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".feats.ark.{tag}", suffix=".tmp", dir=d)
    os.close(fd)
    return Path(name)


def _run_parallel(data: DataDir, cfg: FeatureConfig, nj: int, out_ark: Path, pbar: tqdm) -> tuple[list[Entry], list]:
    parts = split_data_dir(data.path, nj)
    part_arks = [_tmp(data.path, f"job{i + 1}.") for i in range(nj)]
    # fork starts workers in milliseconds (spawn would re-import torch in each, ~1-2 s); the parent runs
    # no torch thread pools before forking, the same situation as a DataLoader's workers.
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    q = ctx.Queue()
    entries: list[Entry] = []
    bad: list[tuple[str, str]] = []
    try:
        with ProcessPoolExecutor(nj, mp_context=ctx, initializer=_init_worker, initargs=(q,)) as ex:
            jobs = zip(parts, part_arks, strict=True)
            futures = [ex.submit(_extract_part, str(p), to_dict(cfg), str(a)) for p, a in jobs]

            # Each worker sends an utterance's skip message before its progress tick, so once every
            # utterance has ticked every message is in; the grace period only matters if a worker died.
            done, total, idle_since = 0, len(data.utts), None
            while done < total:
                try:
                    item = q.get(timeout=0.2)
                except queue_mod.Empty:
                    if all(f.done() for f in futures):
                        idle_since = idle_since or time.monotonic()
                        if time.monotonic() - idle_since > 2.0:
                            break
                    continue
                if isinstance(item, int):
                    done += item
                    pbar.update(item)
                else:
                    _warn_skip(item)
            results = [f.result() for f in futures]
        # Concatenate the parts' arks in job order, shifting each part's offsets by the bytes before it.
        with open(out_ark, "wb") as out:
            for (part_entries, part_bad), ark in zip(results, part_arks, strict=True):
                base = out.tell()
                with open(ark, "rb") as f:
                    _append(f, out)
                entries += [(u, base + o, n, d) for u, o, n, d in part_entries]
                bad += part_bad
    finally:
        for ark in part_arks:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(ark)
        q.close()
    return entries, bad


def _append(src, dst) -> None:
    """Append file ``src`` to ``dst`` (both open, binary), in the kernel where it can (no user-space copy)."""
    size = os.fstat(src.fileno()).st_size
    dst.flush()
    base = dst.seek(0, os.SEEK_END)
    if hasattr(os, "copy_file_range"):
        try:
            done = 0
            while done < size:
                n = os.copy_file_range(src.fileno(), dst.fileno(), size - done)
                if n == 0:
                    break
                done += n
            if done == size:
                dst.seek(0, os.SEEK_END)
                return
        except OSError:
            pass  # e.g. not supported by this file system: plain copy below
        dst.truncate(base)
        dst.seek(base)
        src.seek(0)
    shutil.copyfileobj(src, dst, 1 << 20)


def _commit(d: Path, tmp_ark: Path, entries: list[Entry], cfg: FeatureConfig) -> None:
    ark = (d / "feats.ark").absolute()
    fsync_file(tmp_ark)
    for name in ("feats.scp", "utt2num_frames"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(d / name)
    os.replace(tmp_ark, ark)
    dump(cfg, d / "feats.yaml")
    write_kv(d / "utt2num_frames", {u: str(n) for u, _, n, _ in entries})
    write_kv(d / "feats.scp", {u: f"{ark}:{o}" for u, o, _, _ in entries})


def make_feats(data_dir: str | os.PathLike, cfg: FeatureConfig, nj: int = 1, progress: bool = True) -> MakeFeatsResult:
    """Extract features for every utterance of ``data_dir`` (see module doc). Returns counts.

    Bad utterances (unreadable audio, shorter than one window) are skipped with one warning line each.
    Raises AsrError when no utterance could be processed; existing outputs are then left untouched.
    """
    t0 = time.perf_counter()
    data = DataDir.load(data_dir)
    d = data.path
    result = MakeFeatsResult(data_dir=d)
    if data.wav_scp is None:
        if data.feats_scp is not None:
            result.precomputed, result.written = True, len(data.feats_scp)
            return result
        raise AsrError(f"{d}/wav.scp: no such file (and no precomputed feats.scp)")
    with hold(d, "asr make-feats"):
        check_audio_dir(d)
        if cfg.kind == "precomputed":
            raise AsrError(f"{d}: feature kind 'precomputed' cannot be computed from wav.scp; use fbank or mfcc")
        nj = max(1, min(nj, len(data.spk2utt)))
        tmp_ark = _tmp(d, "")
        try:
            with tqdm(
                total=len(data.utts),
                desc=f"make-feats {d.name}",
                unit="utt",
                disable=None if progress else True,
                leave=False,
            ) as pbar:
                if nj == 1:
                    entries, bad = _extract(data, cfg, tmp_ark, pbar.update)
                else:
                    entries, bad = _run_parallel(data, cfg, nj, tmp_ark, pbar)
            result.skipped = sorted(bad)
            if not entries:
                first = f" (first: {bad[0][1]})" if bad else ""
                raise AsrError(f"{d}: no utterance could be processed{first}")
            _commit(d, tmp_ark, entries, cfg)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_ark)
    result.written = len(entries)
    result.frames = sum(n for _, _, n, _ in entries)
    result.dim = entries[0][3]
    result.seconds = time.perf_counter() - t0
    stale = [n for n in ("cmvn_global.ark", "cmvn.scp") if (d / n).exists()]
    if stale:
        log.warning("%s/%s: computed from the previous features; rerun 'asr compute-cmvn %s'", d, "+".join(stale), d)
    return result


# ---------------------------------------------------------------- CLI


def _cmd_make_feats(args: argparse.Namespace) -> int:
    cfg = load_feature_config(args.conf, args.set)
    result = make_feats(args.data_dir, cfg, nj=args.nj, progress=not args.no_progress)
    print(result.summary())
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "make-feats", help="compute fbank/MFCC features: DATA/feats.scp, feats.ark, utt2num_frames, feats.yaml"
    )
    p.add_argument("data_dir")
    p.add_argument("--conf", help="feature config YAML (default: built-in 80-dim Kaldi fbank)")
    p.add_argument("--set", action="append", default=[], metavar="K=V", help="override a config key")
    p.add_argument("--nj", type=int, default=1, help="parallel jobs (data dir split by speaker)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_make_feats)
