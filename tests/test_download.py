"""asr download against a local archive served by a tiny HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import io
import random
import tarfile
import threading
from pathlib import Path

import pytest

from asr import download
from asr.cli import main
from asr.errors import AsrError


def make_archive(path: Path) -> bytes:
    """A .tar.gz with a top-level folder, like a corpus release; returns its bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in (("corpus/README", b"hello\n"), ("corpus/a/1.txt", b"x" * 50_000),
                           ("corpus/a/2.bin", random.Random(0).randbytes(60_000))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


class Server:
    """Serves one file with Range support; ``cut_after`` bytes ends the first response early."""

    def __init__(self, data: bytes, cut_after: int | None = None):
        self.data, self.cut_after, self.requests = data, cut_after, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep pytest output clean
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                server.requests.append(rng)
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                body = server.data[start:]
                self.send_response(206 if rng else 200)
                self.send_header("Content-Length", str(len(body)))
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(server.data) - 1}/{len(server.data)}")
                self.end_headers()
                if server.cut_after is not None:
                    body, server.cut_after = body[:server.cut_after], None
                    self.wfile.write(body)
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/corpus.tar.gz"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_resume_after_cut(tmp_path):
    data = make_archive(tmp_path / "src.tar.gz")
    sha = hashlib.sha256(data).hexdigest()
    dest = tmp_path / "dl" / "corpus.tar.gz"
    with Server(data, cut_after=1000) as srv:
        # No retries: the cut surfaces as an error and leaves the partial download behind.
        with pytest.raises(AsrError, match="rerun to resume"):
            download.fetch(srv.url, dest, sha256=sha, retries=0, quiet=True)
        part = dest.with_name(dest.name + ".part")
        assert part.stat().st_size == 1000 and not dest.exists()
        download.fetch(srv.url, dest, sha256=sha, retries=0, quiet=True)
        assert srv.requests == [None, "bytes=1000-"]
    assert dest.read_bytes() == data and not part.exists()


def test_retry_resumes_within_one_call(tmp_path):
    data = make_archive(tmp_path / "src.tar.gz")
    dest = tmp_path / "corpus.tar.gz"
    with Server(data, cut_after=5000) as srv:
        download.fetch(srv.url, dest, md5=hashlib.md5(data).hexdigest(), retries=2, quiet=True)
        assert srv.requests == [None, "bytes=5000-"]
    assert dest.read_bytes() == data


def test_checksum_mismatch_is_an_error_and_extracts_nothing(tmp_path, capsys):
    data = make_archive(tmp_path / "src.tar.gz")
    dest, out = tmp_path / "corpus.tar.gz", tmp_path / "extracted"
    with Server(data) as srv:
        rc = main(["download", srv.url, str(dest), "--sha256", "0" * 64, "--extract", str(out), "--quiet"])
    assert rc == 1
    assert "sha256 mismatch" in capsys.readouterr().err
    assert not dest.exists() and not dest.with_name(dest.name + ".part").exists()
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".extract." in p.name]


def test_file_url_extract_and_rerun_is_noop(tmp_path):
    src = tmp_path / "src" / "corpus.tar.gz"
    src.parent.mkdir()
    data = make_archive(src)
    dest, out = tmp_path / "dl" / "corpus.tar.gz", tmp_path / "corpus"
    sha = hashlib.sha256(data).hexdigest()
    assert main(["download", src.as_uri(), str(dest), "--sha256", sha, "--extract", str(out), "--quiet"]) == 0
    assert (out / "corpus" / "a" / "1.txt").read_bytes() == b"x" * 50_000
    stamp = out / ".extracted.corpus.tar.gz"
    mtime = stamp.stat().st_mtime_ns
    assert main(["download", src.as_uri(), str(dest), "--sha256", sha, "--extract", str(out), "--quiet"]) == 0
    assert stamp.stat().st_mtime_ns == mtime


def test_from_existing_copy(tmp_path):
    src = tmp_path / "mirror" / "corpus.tar.gz"
    src.parent.mkdir()
    data = make_archive(src)
    dest = tmp_path / "dl" / "corpus.tar.gz"
    rc = main(["download", "http://127.0.0.1:9/unused", str(dest), "--from", str(src.parent),
               "--md5", hashlib.md5(data).hexdigest(), "--quiet"])
    assert rc == 0 and dest.read_bytes() == data
    assert main(["download", "http://127.0.0.1:9/unused", str(tmp_path / "x.tar.gz"),
                 "--from", str(src.parent)]) == 1


def test_corrupt_archive_leaves_nothing(tmp_path):
    bad = tmp_path / "bad.tar.gz"
    data = make_archive(tmp_path / "good.tar.gz")
    bad.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    with pytest.raises(AsrError, match="cannot extract"):
        download.extract(bad, out)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tar.gz", "good.tar.gz"]


def test_extract_merges_archives_sharing_a_top_folder(tmp_path):
    def tar(path: Path, files: dict[str, bytes]) -> None:
        with tarfile.open(path, "w") as t:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))

    tar(tmp_path / "a.tar", {"LibriSpeech/dev-clean/1.txt": b"1"})
    tar(tmp_path / "b.tar", {"LibriSpeech/test-clean/2.txt": b"2"})
    out = tmp_path / "corpus"
    download.extract(tmp_path / "a.tar", out)
    download.extract(tmp_path / "b.tar", out)
    assert (out / "LibriSpeech/dev-clean/1.txt").exists() and (out / "LibriSpeech/test-clean/2.txt").exists()
