"""Speed perturbation of stored features: ``asr perturb-feats-speed SRC DST --factor F``.

For data dirs that hold only features (AN4 here: Sphinx MFCCs, no audio), where ``perturb-speed`` has
nothing to resample. Each utterance's frames are stretched along time by linear interpolation to
``round(N / F)`` frames: the tempo change of speed perturbation. The spectral half of it (pitch and
formants scaled by F) is not reproduced; VTLP (:func:`asr.vtlp.freq_warp`) covers that for fbank.
Deltas must not be stored in the features: they would keep their old time scale (this toolkit adds
them at load time).

DST gets ``feats.ark``/``feats.scp`` (kaldiio), ``utt2num_frames``, ``text``, ``utt2spk``, ``spk2utt``
and SRC's ``feats.yaml`` as it is, with ids prefixed ``sp{F}-`` like ``perturb-speed``, so
``combine-data-dirs`` joins the copies. CMVN stats are not copied: they describe other frames.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import tempfile
from pathlib import Path

import kaldiio
import numpy as np
import torch
import torch.nn.functional as F
from kaldiio.matio import write_array
from tqdm import tqdm

from asr.atomic import fsync_file, write_text
from asr.datadir import KNOWN_FILES, DataDir, write_data_dir, write_kv
from asr.errors import AsrError
from asr.lock import hold
from asr.perturb_speed import speed_prefix

log = logging.getLogger(__name__)


def stretch_frames(x: np.ndarray | torch.Tensor, factor: float) -> np.ndarray:
    """``x`` (N, D) played ``factor`` times faster: ``(max(1, round(N / factor)), D)``, same dtype.

    Output frame i reads the input at ``(i + 0.5) * N / M - 0.5`` (frame centres map onto frame
    centres, the first and last frames are kept at the ends), linearly interpolated in float64.
    ``factor == 1`` returns an unchanged copy.
    """
    a = np.asarray(x)
    if a.ndim != 2:
        raise AsrError(f"expected features (N, D), got shape {a.shape}")
    n = a.shape[0]
    m = max(1, round(n / factor))
    if factor == 1.0 or n == 0:
        return a.copy()
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64)).T.unsqueeze(0)  # (1, D, N)
    out = F.interpolate(t, size=m, mode="linear", align_corners=False)[0].T
    return out.numpy().astype(a.dtype, copy=False)


def _clear_stale(dst: Path) -> None:
    # An earlier run into DST (or audio-derived files there) would describe other frames.
    for name in (*KNOWN_FILES, "feats.yaml", "cmvn.scp", "cmvn.ark", "cmvn_global.ark", "utt2snr"):
        with contextlib.suppress(FileNotFoundError):
            (dst / name).unlink()


def perturb_feats_speed(
    src: str | os.PathLike, dst: str | os.PathLike, factor: float, progress: bool = True
) -> tuple[Path, list[str]]:
    """Write the time-stretched copy of the features of ``src`` to ``dst``. Returns (dst, skipped utts).

    Utterances whose features cannot be read are skipped with one warning line each. The ark is
    written under a temp name and renamed, and ``feats.scp`` is written last, so an interrupted run
    never leaves a ``feats.scp`` pointing into a missing or partial ark.
    """
    if not 0.5 <= factor <= 2.0:
        raise AsrError(f"speed factor {factor}: expected a value in [0.5, 2.0], e.g. 0.9 or 1.1")
    data = DataDir.load(src)
    if data.feats_scp is None:
        raise AsrError(f"{data.path}/feats.scp: no such file (run 'asr make-feats {data.path}' first)")
    dst = Path(dst)
    if dst.resolve() == data.path.resolve():
        raise AsrError(f"{dst}: destination must differ from the source")
    dst.mkdir(parents=True, exist_ok=True)
    pre = speed_prefix(factor)
    with hold(dst, "asr perturb-feats-speed"):
        ark = (dst / "feats.ark").absolute()
        fd, name = tempfile.mkstemp(prefix=".feats.ark.", suffix=".tmp", dir=dst)
        os.close(fd)
        tmp = Path(name)
        scp: dict[str, str] = {}
        frames: dict[str, int] = {}
        bad: list[str] = []
        try:
            with open(tmp, "wb") as f:
                for utt in tqdm(data.utts, desc=f"perturb-feats-speed {factor}", unit="utt",
                                disable=None if progress else True, leave=False):
                    try:
                        if utt not in data.feats_scp:
                            raise AsrError("not in feats.scp")
                        mat = kaldiio.load_mat(data.feats_scp[utt])
                        out = stretch_frames(mat, factor)
                    except (AsrError, OSError, ValueError, KeyError, EOFError) as e:
                        log.warning("perturb-feats-speed: skipping %s: %s", utt, str(e).splitlines()[0] if str(e)
                                    else type(e).__name__)
                        bad.append(utt)
                        continue
                    f.write(f"{pre}{utt} ".encode())
                    scp[pre + utt] = f"{ark}:{f.tell()}"
                    write_array(f, out)
                    frames[pre + utt] = out.shape[0]
            if not scp:
                raise AsrError(f"{data.path}: no utterance's features could be read")
            fsync_file(tmp)
            _clear_stale(dst)  # feats.scp first: from here until it is rewritten, DST has no features
            os.replace(tmp, ark)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if (data.path / "feats.yaml").is_file():
            write_text(dst / "feats.yaml", (data.path / "feats.yaml").read_text(encoding="utf-8"))
        keep = {u[len(pre) :] for u in scp}
        write_data_dir(
            dst,
            text={pre + u: t for u, t in data.text.items() if u in keep} if data.text is not None else None,
            utt2spk={pre + u: pre + s for u, s in data.utt2spk.items() if u in keep},
            utt2num_frames=frames,
        )
        write_kv(dst / "feats.scp", scp)  # last: the file that says the features are there
    return dst, sorted(bad)


def _cmd(args: argparse.Namespace) -> int:
    dst, bad = perturb_feats_speed(args.src, args.dst, args.factor, not args.no_progress)
    n = len(DataDir.load(dst).utts)
    print(
        f"perturb-feats-speed {args.src} -> {dst}: factor {args.factor}, {n} utterances"
        + (f"; skipped {len(bad)}: {', '.join(bad[:10])}" if bad else "")
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "perturb-feats-speed",
        help="time-stretched copy of a data dir's stored features (ids prefixed sp{F}-; no audio needed)",
        description="Write a copy of data dir SRC's features to DST with each utterance's N frames stretched "
        "by linear interpolation along time to round(N / F) frames (tempo only: pitch and formants stay), ids "
        "prefixed sp{F}- as perturb-speed does. For dirs without audio; F = 1.0 copies the features exactly. "
        "feats.yaml is copied, CMVN stats are not (run compute-cmvn on DST or on the combined dir).",
    )
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--factor", type=float, required=True, help="speed factor, e.g. 0.9 or 1.1 (N frames -> N/F)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd)
