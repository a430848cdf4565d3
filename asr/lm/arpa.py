"""The ARPA back-off n-gram format: its special words, reading (plain or gzipped) and writing.

Log-probabilities and back-off weights in the file are log10, as the format defines them.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from asr.atomic import atomic_open
from asr.errors import AsrError

BOS, EOS, UNK = "<s>", "</s>", "<unk>"


def open_text(path: Path):
    """``path`` opened for reading UTF-8 text, through gzip when it ends in ``.gz``."""
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


@contextlib.contextmanager
def _text_writer(raw: IO[bytes], gz: bool) -> Iterator[IO[str]]:
    """UTF-8 text over the binary file ``raw``, through gzip when ``gz``; ``raw`` stays open."""
    inner = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if gz else raw
    text = io.TextIOWrapper(inner, encoding="utf-8", newline="\n")
    try:
        yield text
    finally:
        text.flush()
        text.detach()
        if gz:
            inner.close()


def looks_like_arpa(path: Path) -> bool:
    """Whether ``path`` is readable text with a ``\\data\\`` header near its start."""
    try:
        with open_text(path) as f:
            head = f.read(4096)
    except (OSError, UnicodeDecodeError):
        return False
    return "\\data\\" in head


def declared_counts(path: Path) -> dict[int, int]:
    """The n-gram counts the ``\\data\\`` header of ``path`` declares (``{}`` if it has none); reads
    only the header."""
    counts: dict[int, int] = {}
    try:
        with open_text(path) as f:
            seen = False
            for raw in f:
                line = raw.strip()
                if line == "\\data\\":
                    seen = True
                elif seen and line.startswith("ngram ") and "=" in line:
                    n, _, c = line[6:].partition("=")
                    if n.strip().isdigit() and c.strip().isdigit():
                        counts[int(n)] = int(c)
                elif seen and line.startswith("\\"):
                    break
    except (OSError, UnicodeDecodeError):
        return {}
    return counts


@dataclass
class _Parsed:
    """What a pass over an ARPA file found, before validation."""

    counts: dict[int, int] = field(default_factory=dict)  # declared in \data\
    found: dict[int, int] = field(default_factory=dict)  # n-grams read per order
    table: dict[tuple, tuple] = field(default_factory=dict)
    section: int | None = None  # None: before \data\, 0: in \data\, n: in \n-grams:
    ended: bool = False


def read_arpa(path: str | os.PathLike, max_order: int | None = None) -> tuple[int, dict[tuple, tuple]]:
    """Parse an ARPA file into ``(order, {ngram tuple: (log10 p, log10 backoff)})``.

    ``max_order`` stops after that order (1 reads only the vocabulary). Anything malformed raises
    AsrError naming the file and line.
    """
    path = Path(path)
    try:
        f = open_text(path)
    except OSError as e:
        raise AsrError(f"{path}: cannot open LM: {e.strerror or e}") from None
    with f:
        try:
            parsed = _parse(f, path, max_order)
        except UnicodeDecodeError:
            raise AsrError(f"{path}: not a UTF-8 text ARPA file") from None
    return _validated(parsed, path, max_order), parsed.table


def _parse(lines, path: Path, max_order: int | None) -> _Parsed:
    """One pass over the lines: the \\data\\ counts and the n-gram sections up to ``max_order``."""
    st = _Parsed()
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line:
            continue
        where = f"{path}:{lineno}"
        if line == "\\data\\":
            st.section = 0
        elif st.section is None:
            continue  # free text before \data\ is allowed
        elif line == "\\end\\":
            st.ended = True
            break
        elif line.startswith("\\") and line.endswith("-grams:"):
            n = _section_order(line, where, st.counts)
            if max_order is not None and n > max_order:
                break
            st.section = n
            st.found[n] = 0
        elif st.section == 0:
            n, c = _count_line(line, where)
            st.counts[n] = c
        else:
            ngram, weights = _ngram_line(line, st.section, where)
            st.table[ngram] = weights
            st.found[st.section] += 1
    return st


def _section_order(line: str, where: str, counts: dict[int, int]) -> int:
    """N of a ``\\N-grams:`` header, which \\data\\ must have declared."""
    try:
        n = int(line[1:-7])
    except ValueError:
        raise AsrError(f"{where}: bad section header {line!r}") from None
    if n not in counts:
        raise AsrError(f"{where}: section {line!r} not declared in \\data\\")
    return n


def _count_line(line: str, where: str) -> tuple[int, int]:
    """``(N, count)`` of a \\data\\ line ``ngram N=count``."""
    if not line.startswith("ngram ") or "=" not in line:
        raise AsrError(f"{where}: expected 'ngram N=count' in \\data\\, got {line!r}")
    try:
        n, c = (int(x) for x in line[6:].split("="))
    except ValueError:
        raise AsrError(f"{where}: bad count line {line!r}") from None
    return n, c


def _ngram_line(line: str, n: int, where: str) -> tuple[tuple, tuple[float, float]]:
    """``(words, (log10 p, log10 backoff))`` of one line of the ``\\n-grams:`` section."""
    parts = line.split()
    if len(parts) not in (n + 1, n + 2):
        raise AsrError(f"{where}: expected log-prob, {n} word(s) and optional backoff, got {line!r}")
    try:
        lp = float(parts[0])
        bo = float(parts[n + 1]) if len(parts) == n + 2 else 0.0
    except ValueError:
        raise AsrError(f"{where}: not a number in {line!r}") from None
    if math.isnan(lp) or math.isnan(bo) or lp > 0:
        raise AsrError(f"{where}: invalid log-prob in {line!r}")
    return tuple(parts[1 : n + 1]), (lp, bo)


def _validated(parsed: _Parsed, path: Path, max_order: int | None) -> int:
    """The model's order, once the file proved complete: a header, counts matching the sections, \\end\\."""
    if parsed.section is None:
        raise AsrError(f"{path}: no \\data\\ header; not an ARPA file")
    if not parsed.counts:
        raise AsrError(f"{path}: \\data\\ declares no n-gram counts")
    for n, c in parsed.counts.items():
        if max_order is not None and n > max_order:
            continue
        if parsed.found.get(n, 0) != c:
            raise AsrError(f"{path}: \\data\\ declares {c} {n}-grams but the file has {parsed.found.get(n, 0)}")
    if max_order is None and not parsed.ended:
        raise AsrError(f"{path}: truncated (no \\end\\)")
    return max(parsed.counts)


def write_arpa(probs: list[dict[tuple, float]], backoffs: list[dict[tuple, float]], path: str | os.PathLike) -> None:
    """Write ``estimate``'s tables as an ARPA file (log10), ``<s>`` with the customary -99.

    ``probs`` and ``backoffs`` hold plain (not log) values per order, as
    :func:`asr.lm.kneser_ney.estimate` returns them. A ``path`` ending in ``.gz`` is gzipped, as
    :func:`open_text` reads it back.
    """
    order = len(probs)
    tables = [dict(p) for p in probs]
    tables[0][(BOS,)] = 0.0
    with atomic_open(path, "wb") as raw, _text_writer(raw, Path(path).suffix == ".gz") as f:
        f.write("\\data\\\n")
        for n, t in enumerate(tables, 1):
            f.write(f"ngram {n}={len(t)}\n")
        for n, t in enumerate(tables, 1):
            f.write(f"\n\\{n}-grams:\n")
            for g in sorted(t):
                lp = -99.0 if g == (BOS,) else math.log10(t[g])
                line = f"{lp:.7f}\t{' '.join(g)}"
                if n < order and g in backoffs[n - 1]:
                    bo = backoffs[n - 1][g]
                    line += f"\t{math.log10(bo) if bo > 0 else -99.0:.7f}"
                f.write(line + "\n")
        f.write("\n\\end\\\n")
