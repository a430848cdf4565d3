"""Fetch a corpus archive: resumable, checksum-verified, extracted all-or-nothing.

``asr download URL DEST`` downloads into ``DEST.part`` (resumed with an HTTP ``Range`` request
after a cut), verifies ``--sha256``/``--md5`` before renaming it to ``DEST``, and with
``--extract DIR`` unpacks into a temp dir beside ``DIR`` and renames the finished tree into place,
so a killed job never leaves half an archive behind. ``file://`` URLs and ``--from DIR`` (an
existing copy of the archive) make it usable, and testable, without a network.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import logging
import os
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from asr.errors import AsrError

log = logging.getLogger(__name__)
CHUNK = 1 << 16
TIMEOUT_S = 60


def file_digest(path: str | Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(path: Path, sha256: str | None = None, md5: str | None = None) -> None:
    """Raise AsrError naming the file when a given checksum does not match."""
    for algo, want in (("sha256", sha256), ("md5", md5)):
        if want:
            got = file_digest(path, algo)
            if got.lower() != want.lower():
                raise AsrError(f"{path}: {algo} mismatch: expected {want.lower()}, got {got}")


def _open(url: str, offset: int) -> tuple[BinaryIO, int | None, bool]:
    """Open ``url`` from byte ``offset``: ``(stream, bytes remaining or None, resumed?)``.

    ``resumed`` is False when the server ignored the Range request and sends the whole file.
    """
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme in ("", "file"):
        path = urllib.request.url2pathname(parsed.path) if parsed.scheme else url
        f = open(path, "rb")  # noqa: SIM115 - closed by the caller
        size = os.fstat(f.fileno()).st_size
        f.seek(min(offset, size))
        return f, size - min(offset, size), True
    req = urllib.request.Request(url, headers={"User-Agent": "asr-download/1"})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    try:
        resp = urllib.request.urlopen(req, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:
            return _Empty(), 0, True  # the part file already holds everything
        raise AsrError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise AsrError(f"{url}: cannot connect ({getattr(e, 'reason', e)})") from None
    length = resp.headers.get("Content-Length")
    resumed = offset > 0 and resp.status == 206
    return resp, int(length) if length is not None else None, resumed


class _Empty:
    def read(self, n: int = -1) -> bytes:
        return b""

    def close(self) -> None:
        pass


def _fetch_once(url: str, part: Path, quiet: bool) -> None:
    offset = part.stat().st_size if part.exists() else 0
    stream, remaining, resumed = _open(url, offset)
    if not resumed:
        offset = 0
    total = offset + remaining if remaining is not None else None
    if offset:
        log.info("%s: resuming at byte %d", part, offset)
    try:
        with (
            open(part, "ab" if offset else "wb") as out,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=part.name.removesuffix(".part"),
                disable=quiet,
                leave=False,
            ) as bar,
        ):
            for chunk in iter(lambda: stream.read(CHUNK), b""):
                out.write(chunk)
                bar.update(len(chunk))
    finally:
        stream.close()
    got = part.stat().st_size
    if total is not None and got < total:
        raise OSError(f"connection closed at byte {got} of {total}")


def fetch(
    url: str, dest: str | Path, sha256: str | None = None, md5: str | None = None, retries: int = 3, quiet: bool = False
) -> Path:
    """Download ``url`` to ``dest`` via ``dest.part`` (resumed across cuts and calls); verify; rename.

    An existing ``dest`` that passes the checksums is kept as is.
    """
    dest = Path(dest)
    if dest.exists():
        verify(dest, sha256, md5)
        log.info("%s: already downloaded", dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            _fetch_once(url, part, quiet)
            break
        except (OSError, http.client.HTTPException) as e:  # a cut shows up as either
            have = part.stat().st_size if part.exists() else 0
            if attempt == retries:
                raise AsrError(
                    f"{url}: download interrupted at byte {have} ({e}); rerun to resume from {part}"
                ) from None
            log.warning("%s: interrupted at byte %d (%s); resuming", url, have, e)
            time.sleep(min(2**attempt, 10))
    try:
        verify(part, sha256, md5)
    except AsrError as e:
        # Resuming a corrupt file can never fix it: drop it so the next run starts clean.
        part.unlink()
        raise AsrError(f"{e} (deleted {part.name}; rerun to download again)") from None
    os.replace(part, dest)
    return dest


def copy_from(src_dir: str | Path, dest: str | Path, sha256: str | None = None, md5: str | None = None) -> Path:
    """Use an existing copy ``src_dir/<name of dest>``: verify it, then link (or copy) it to ``dest``."""
    dest = Path(dest)
    src = Path(src_dir) / dest.name
    if not src.is_file():
        raise AsrError(f"{src}: no such file (--from {src_dir})")
    verify(src, sha256, md5)
    if dest.exists() and dest.resolve() == src.resolve():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    with contextlib.suppress(FileNotFoundError):
        part.unlink()
    try:
        os.link(src, part)
    except OSError:
        shutil.copyfile(src, part)
    os.replace(part, dest)
    return dest


def extract(archive: str | Path, dest_dir: str | Path) -> Path:
    """Unpack a tar (any compression) or zip archive into ``dest_dir``, all or nothing.

    Unpacks into a temp dir beside ``dest_dir``, then moves each top-level entry into place, so
    several archives sharing a top-level folder (LibriSpeech subsets) merge. A stamp
    ``dest_dir/.extracted.<archive name>`` marks completion and makes a rerun a no-op.
    """
    archive, dest_dir = Path(archive), Path(dest_dir)
    stamp = dest_dir / f".extracted.{archive.name}"
    if stamp.exists():
        log.info("%s: already extracted into %s", archive, dest_dir)
        return dest_dir
    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest_dir.name}.extract.", dir=dest_dir.parent))
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                for name in z.namelist():
                    if name.startswith("/") or ".." in Path(name).parts:
                        raise AsrError(f"{archive}: unsafe member path {name}")
                z.extractall(tmp)
        else:
            try:
                with tarfile.open(archive) as t:
                    t.extractall(tmp, filter="data")
            except (tarfile.TarError, EOFError, OSError) as e:
                raise AsrError(f"{archive}: cannot extract ({e})") from None
        dest_dir.mkdir(parents=True, exist_ok=True)
        _merge(tmp, dest_dir)
        stamp.touch()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest_dir


def _merge(src: Path, dst: Path) -> None:
    """Move ``src``'s entries into ``dst``: whole subtrees where absent, recursing where both exist."""
    for entry in sorted(src.iterdir()):
        target = dst / entry.name
        if target.is_dir() and entry.is_dir() and not entry.is_symlink():
            _merge(entry, target)
        else:
            os.replace(entry, target)


def _cmd_download(args: argparse.Namespace) -> int:
    dest = Path(args.dest)
    if args.from_dir:
        copy_from(args.from_dir, dest, args.sha256, args.md5)
    else:
        fetch(args.url, dest, args.sha256, args.md5, retries=args.retries, quiet=args.quiet)
    print(dest)
    if args.extract:
        print(extract(dest, args.extract))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("download", help="resumable, checksum-verified download (+ all-or-nothing extraction)")
    p.add_argument("url", help="http(s):// or file:// URL")
    p.add_argument("dest", help="archive path to write (DEST.part while downloading)")
    p.add_argument("--sha256", help="expected SHA-256 (hex), checked before DEST appears")
    p.add_argument("--md5", help="expected MD5 (hex)")
    p.add_argument("--extract", metavar="DIR", help="unpack into DIR (via a temp dir, then rename)")
    p.add_argument("--from", dest="from_dir", metavar="DIR", help="use DIR/<basename DEST> instead of the URL")
    p.add_argument("--retries", type=int, default=3, help="resume attempts after a cut connection")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_download)
