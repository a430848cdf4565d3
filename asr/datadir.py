"""Kaldi data directories: read, write and validate (editing them is :mod:`asr.datadir_ops`).

A data dir is the only contract between stages (Kaldi, EESEN, ESPnet): ``wav.scp`` (recording ->
path or ``cmd |``), ``text`` (utt -> transcript), ``utt2spk``, ``spk2utt``, optional ``segments``
(utt -> reco start end), and after feature extraction ``feats.scp`` and ``utt2num_frames``. All
files are sorted in C-locale (byte) order with unique keys, like ``utils/validate_data_dir.sh``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from asr.atomic import atomic_open
from asr.errors import AsrError

# Files keyed by utterance id that must cover exactly the same utterances.
UTT_FILES = ("text", "utt2spk", "feats.scp", "utt2num_frames", "segments", "utt2dur")
KNOWN_FILES = ("wav.scp", "text", "utt2spk", "spk2utt", "segments", "feats.scp", "utt2num_frames",
               "reco2dur", "utt2dur")


@dataclass(frozen=True)
class Segment:
    reco: str
    start: float
    end: float


def _c_key(s: str) -> bytes:
    return s.encode("utf-8")


def read_lines(path: Path) -> list[tuple[int, str, str]]:
    """``(line_no, key, value)`` per non-empty line; non-UTF-8 bytes raise AsrError naming the line."""
    out = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                raise AsrError(f"{path}:{n}: not valid UTF-8") from None
            if not line.strip():
                continue
            parts = line.strip().split(maxsplit=1)
            out.append((n, parts[0], parts[1] if len(parts) > 1 else ""))
    return out


def read_kv(path: str | Path) -> dict[str, str]:
    """Read a Kaldi table (``key value...``); duplicate keys raise AsrError naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise AsrError(f"{path}: no such file")
    out: dict[str, str] = {}
    for n, key, value in read_lines(path):
        if key in out:
            raise AsrError(f"{path}:{n}: duplicate id {key}")
        out[key] = value
    return out


def write_kv(path: str | Path, mapping: dict[str, str]) -> None:
    """Write ``key value`` lines sorted in C-locale order, atomically."""
    with atomic_open(path, "w") as f:
        for key in sorted(mapping, key=_c_key):
            value = mapping[key]
            f.write(f"{key} {value}\n" if value != "" else f"{key}\n")


def spk2utt_from_utt2spk(utt2spk: dict[str, str]) -> dict[str, list[str]]:
    spk2utt: dict[str, list[str]] = {}
    for utt in sorted(utt2spk, key=_c_key):
        spk2utt.setdefault(utt2spk[utt], []).append(utt)
    return spk2utt


@dataclass
class DataDir:
    """An in-memory Kaldi data dir. Optional files are None when absent."""

    path: Path
    wav_scp: dict[str, str] | None = None
    text: dict[str, str] | None = None
    utt2spk: dict[str, str] = field(default_factory=dict)
    spk2utt: dict[str, list[str]] = field(default_factory=dict)
    segments: dict[str, Segment] | None = None
    feats_scp: dict[str, str] | None = None
    utt2num_frames: dict[str, int] | None = None
    reco2dur: dict[str, float] | None = None

    @property
    def utts(self) -> list[str]:
        return sorted(self.utt2spk, key=_c_key)

    @classmethod
    def load(cls, path: str | Path, read_text: bool = True) -> DataDir:
        """Load every known file present; raise AsrError for a missing dir or unparseable line.

        ``read_text=False`` leaves ``text`` unread (None): decoding must not depend on the reference.
        """
        path = Path(path)
        if not path.is_dir():
            raise AsrError(f"{path}: not a directory")
        if not (path / "utt2spk").is_file():
            raise AsrError(f"{path}/utt2spk: no such file (not a Kaldi data dir?)")

        def opt(name: str) -> dict[str, str] | None:
            return read_kv(path / name) if (path / name).is_file() else None

        d = cls(path=path, wav_scp=opt("wav.scp"), text=opt("text") if read_text else None,
                utt2spk=read_kv(path / "utt2spk"), feats_scp=opt("feats.scp"))
        d.spk2utt = spk2utt_from_utt2spk(d.utt2spk)
        if (path / "segments").is_file():
            d.segments = _parse_segments(path / "segments")
        nf = opt("utt2num_frames")
        if nf is not None:
            d.utt2num_frames = {u: _number(int, v, path / "utt2num_frames", u) for u, v in nf.items()}
        rd = opt("reco2dur")
        if rd is not None:
            d.reco2dur = {r: _number(float, v, path / "reco2dur", r) for r, v in rd.items()}
        return d


def _number(kind: type, value: str, path: Path, key: str) -> int | float:
    try:
        return kind(value)
    except ValueError:
        raise AsrError(f"{path}: {key}: expected a number, got {value!r}") from None


def _parse_segments(path: Path) -> dict[str, Segment]:
    out: dict[str, Segment] = {}
    for n, utt, value in read_lines(path):
        parts = value.split()
        if len(parts) != 3:
            raise AsrError(f"{path}:{n}: expected 'utt reco start end'")
        try:
            start, end = float(parts[1]), float(parts[2])
        except ValueError:
            raise AsrError(f"{path}:{n}: start/end are not numbers") from None
        if utt in out:
            raise AsrError(f"{path}:{n}: duplicate id {utt}")
        out[utt] = Segment(parts[0], start, end)
    return out


def write_data_dir(path: str | Path, *, wav_scp: dict[str, str] | None = None, text: dict[str, str] | None = None,
                   utt2spk: dict[str, str], segments: dict[str, Segment] | None = None,
                   feats_scp: dict[str, str] | None = None, utt2num_frames: dict[str, int] | None = None,
                   reco2dur: dict[str, float] | None = None) -> Path:
    """Write the given files (sorted, atomic) and a ``spk2utt`` generated from ``utt2spk``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for name, table in (("wav.scp", wav_scp), ("text", text), ("utt2spk", utt2spk), ("feats.scp", feats_scp)):
        if table is not None:
            write_kv(path / name, table)
    if segments is not None:
        write_kv(path / "segments", {u: f"{s.reco} {s.start:.3f} {s.end:.3f}" for u, s in segments.items()})
    if utt2num_frames is not None:
        write_kv(path / "utt2num_frames", {u: str(n) for u, n in utt2num_frames.items()})
    if reco2dur is not None:
        write_kv(path / "reco2dur", {r: f"{d:.3f}" for r, d in reco2dur.items()})
    write_kv(path / "spk2utt", {s: " ".join(u) for s, u in spk2utt_from_utt2spk(utt2spk).items()})
    return path


def validate_data_dir(path: str | Path, need_text: bool = True, need_feats: bool = False,
                      need_audio: bool = False) -> list[str]:
    """Every problem found, one line each naming the file (and line); empty when the dir is valid."""
    path = Path(path)
    if not path.is_dir():
        return [f"{path}: not a directory"]
    problems: list[str] = []
    tables: dict[str, dict[str, str]] = {}
    required = ["utt2spk"] + (["text"] if need_text else []) + (["feats.scp"] if need_feats else [])
    required += ["wav.scp"] if need_audio else []
    for name in required:
        if not (path / name).is_file():
            problems.append(f"{path}/{name}: missing")
    for name in KNOWN_FILES:
        f = path / name
        if not f.is_file():
            continue
        try:
            lines = read_lines(f)
        except AsrError as e:
            problems.append(str(e))
            continue
        seen: dict[str, int] = {}
        prev: str | None = None
        unsorted_reported = False
        for n, key, value in lines:
            if key in seen:
                problems.append(f"{f}:{n}: duplicate id {key} (first on line {seen[key]})")
            seen.setdefault(key, n)
            if prev is not None and _c_key(key) < _c_key(prev) and not unsorted_reported:
                problems.append(f"{f}:{n}: not sorted (C locale): {key} after {prev}; run 'asr fix-data-dir'")
                unsorted_reported = True
            prev = key
            if name != "text" and value == "":
                problems.append(f"{f}:{n}: {key} has no value")
        tables[name] = {k: v for _, k, v in lines}
    if "utt2spk" not in tables:
        return problems
    utts = set(tables["utt2spk"])
    if not utts:
        problems.append(f"{path}/utt2spk: empty")
    for name in UTT_FILES:
        if name in tables and name != "utt2spk":
            _compare_sets(problems, path, name, set(tables[name]), utts)
    if "spk2utt" in tables:
        expected = {s: " ".join(u) for s, u in spk2utt_from_utt2spk(tables["utt2spk"]).items()}
        got = {s: " ".join(v.split()) for s, v in tables["spk2utt"].items()}
        if got != expected:
            bad = sorted(set(expected) ^ set(got)) or sorted(s for s in expected if expected[s] != got.get(s))
            problems.append(f"{path}/spk2utt: inconsistent with utt2spk (speaker {bad[0]}); run 'asr fix-data-dir'")
    elif "utt2spk" in tables:
        problems.append(f"{path}/spk2utt: missing; run 'asr fix-data-dir'")
    if "wav.scp" in tables:
        if "segments" in tables:
            problems += _check_segments(path, tables)
        else:
            _compare_sets(problems, path, "wav.scp", set(tables["wav.scp"]), utts)
    for name in ("utt2num_frames",):
        for key, v in tables.get(name, {}).items():
            if not v.isdigit():
                problems.append(f"{path}/{name}: {key}: not a whole number: {v!r}")
    return problems


def check_audio_dir(path: str | Path) -> None:
    """Validate a data dir as audio input; problems in feats.scp / utt2num_frames are ignored (they are
    outputs of make-feats and get replaced). Raises one AsrError listing the rest."""
    path = Path(path)
    ours = (str(path / "feats.scp"), str(path / "utt2num_frames"))
    problems = [p for p in validate_data_dir(path, need_text=False, need_audio=True) if not p.startswith(ours)]
    if problems:
        raise AsrError(f"{path}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))


def _compare_sets(problems: list[str], path: Path, name: str, got: set[str], utts: set[str]) -> None:
    missing, extra = sorted(utts - got), sorted(got - utts)
    if missing:
        problems.append(f"{path}/{name}: {len(missing)} utterance(s) of utt2spk missing, e.g. {missing[0]}")
    if extra:
        problems.append(f"{path}/{name}: {len(extra)} id(s) not in utt2spk, e.g. {extra[0]}")


def _check_segments(path: Path, tables: dict[str, dict[str, str]]) -> list[str]:
    problems = []
    recos = tables["wav.scp"]
    durs = {}
    if "reco2dur" in tables:
        durs = {r: float(d) for r, d in tables["reco2dur"].items() if _is_float(d)}
    for utt, value in tables["segments"].items():
        parts = value.split()
        if len(parts) != 3 or not (_is_float(parts[1]) and _is_float(parts[2])):
            problems.append(f"{path}/segments: {utt}: expected 'reco start end', got {value!r}")
            continue
        reco, start, end = parts[0], float(parts[1]), float(parts[2])
        if reco not in recos:
            problems.append(f"{path}/segments: {utt}: recording {reco} not in wav.scp")
        if not 0 <= start < end:
            problems.append(f"{path}/segments: {utt}: bad times {start}..{end}")
        if reco in durs and end > durs[reco] + 0.01:
            problems.append(f"{path}/segments: {utt}: ends at {end}s, after its recording ({durs[reco]}s)")
    return problems


def _is_float(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def check_data_dir(path: str | Path, need_text: bool = True, need_feats: bool = False,
                   need_audio: bool = False) -> None:
    """Raise one AsrError listing every problem (first line counts them) if the dir is invalid."""
    problems = validate_data_dir(path, need_text, need_feats, need_audio)
    if problems:
        raise AsrError(f"{path}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))


def _cmd_validate(args: argparse.Namespace) -> int:
    problems = validate_data_dir(args.dir, need_text=not args.no_text, need_feats=args.need_feats,
                                 need_audio=not args.no_wav)
    for p in problems:
        print(p)
    if problems:
        print(f"{args.dir}: {len(problems)} problem(s)")
        return 1
    print(f"{args.dir}: OK ({len(read_kv(Path(args.dir) / 'utt2spk'))} utterances)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate-data-dir", help="check a Kaldi data dir; print every problem")
    p.add_argument("dir")
    p.add_argument("--no-text", action="store_true", help="text is optional (test data)")
    p.add_argument("--no-wav", action="store_true", help="wav.scp is optional (precomputed features)")
    p.add_argument("--need-feats", action="store_true", help="feats.scp is required")
    p.set_defaults(func=_cmd_validate)
