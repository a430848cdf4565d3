"""Operations that make new Kaldi data dirs from existing ones: fix, subset, split by speaker, combine.

The counterparts of Kaldi's ``utils/fix_data_dir.sh``, ``subset_data_dir.sh``, ``split_data.sh`` and
``combine_data.sh``; reading, writing and validating a data dir is :mod:`asr.datadir`.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

from asr.atomic import write_text
from asr.datadir import KNOWN_FILES, UTT_FILES, DataDir, read_kv, read_lines, spk2utt_from_utt2spk, write_kv
from asr.errors import AsrError

log = logging.getLogger(__name__)


def fix_data_dir(path: str | Path) -> int:
    """Sort, dedupe, keep only utterances present in every utterance file, regenerate spk2utt.

    Returns the number of utterances dropped. Never touches the audio.
    """
    path = Path(path)
    tables: dict[str, dict[str, str]] = {}
    for name in KNOWN_FILES:
        if name != "spk2utt" and (path / name).is_file():
            table: dict[str, str] = {}
            for _, key, value in read_lines(path / name):
                table.setdefault(key, value)  # first occurrence wins, like sort -u -k1,1
            tables[name] = table
    if "utt2spk" not in tables:
        raise AsrError(f"{path}/utt2spk: no such file")
    before = len(tables["utt2spk"])
    keep = set(tables["utt2spk"])
    for name in UTT_FILES:
        if name in tables:
            keep &= set(tables[name])
    if "segments" in tables and "wav.scp" in tables:
        keep = {u for u in keep if tables["segments"][u].split()[0] in tables["wav.scp"]}
    elif "wav.scp" in tables:
        keep &= set(tables["wav.scp"])
    for name in UTT_FILES + ("wav.scp",):
        if name not in tables:
            continue
        table = tables[name]
        if name == "wav.scp" and "segments" in tables:
            used = {tables["segments"][u].split()[0] for u in keep}
            table = {r: v for r, v in table.items() if r in used}
        else:
            table = {k: v for k, v in table.items() if k in keep}
        write_kv(path / name, table)
    utt2spk = {u: s for u, s in tables["utt2spk"].items() if u in keep}
    write_kv(path / "spk2utt", {s: " ".join(u) for s, u in spk2utt_from_utt2spk(utt2spk).items()})
    dropped = before - len(keep)
    if dropped:
        log.warning("fix-data-dir %s: dropped %d of %d utterances missing from some file", path, dropped, before)
    return dropped


def subset_data_dir(src: str | Path, dst: str | Path, utts: list[str] | set[str]) -> Path:
    """Copy the lines of ``src`` that belong to ``utts`` into a new data dir ``dst``."""
    src, dst = Path(src), Path(dst)
    keep = set(utts)
    dst.mkdir(parents=True, exist_ok=True)
    segments = read_kv(src / "segments") if (src / "segments").is_file() else None
    for name in UTT_FILES:
        if (src / name).is_file():
            write_kv(dst / name, {k: v for k, v in read_kv(src / name).items() if k in keep})
    if (src / "wav.scp").is_file():
        wav = read_kv(src / "wav.scp")
        recos = {v.split()[0] for k, v in segments.items() if k in keep} if segments else keep
        write_kv(dst / "wav.scp", {r: v for r, v in wav.items() if r in recos})
        if (src / "reco2dur").is_file():
            write_kv(dst / "reco2dur", {r: v for r, v in read_kv(src / "reco2dur").items() if r in recos})
    for name in ("feats.yaml", "cmvn.scp", "cmvn.ark", "cmvn_global.ark"):
        # Feature config and CMVN stats describe the features, so a subset carries them along.
        if (src / name).is_file() and not (dst / name).exists():
            (dst / name).symlink_to((src / name).resolve())
    utt2spk = read_kv(dst / "utt2spk")
    write_kv(dst / "spk2utt", {s: " ".join(u) for s, u in spk2utt_from_utt2spk(utt2spk).items()})
    return dst


def combine_data_dirs(dst: str | Path, srcs: list[str | Path]) -> Path:
    """Merge data dirs into ``dst`` (Kaldi's combine_data.sh): ids must be unique across the sources.

    A file is written only when every source has it, so the result stays consistent. ``feats.yaml``
    goes with ``feats.scp``: sources whose features were made with different settings are refused.
    Where some sources have ``segments`` and others do not, those others get whole-recording segments.
    """
    dst, srcs = Path(dst), [Path(s) for s in srcs]
    if not srcs:
        raise AsrError("combine: no source data dirs")
    feats_yaml = _common_feats_yaml(srcs)
    whole = _whole_recording_segments(srcs)
    merged: dict[str, dict[str, str]] = {}
    for name in KNOWN_FILES:
        if name == "spk2utt" or not all((Path(s) / name).is_file() or (name == "segments" and s in whole)
                                        for s in srcs):
            continue
        table: dict[str, str] = {}
        for s in srcs:
            rows = whole[s] if name == "segments" and s in whole else read_kv(Path(s) / name)
            for key, value in rows.items():
                if key in table and table[key] != value:
                    raise AsrError(f"{s}/{name}: id {key} also in another source with a different value")
                table[key] = value
        merged[name] = table
    if "utt2spk" not in merged:
        raise AsrError(f"combine: some of {', '.join(map(str, srcs))} have no utt2spk")
    dst.mkdir(parents=True, exist_ok=True)
    carry_yaml = "feats.scp" in merged and feats_yaml is not None
    # Files of an earlier combine into dst that this one does not write would describe other utterances
    # or features (a stale feats.yaml makes precomputed features read as computed ones, or vice versa).
    for name in (*KNOWN_FILES, "feats.yaml"):
        if name not in (*merged, "spk2utt") and not (name == "feats.yaml" and carry_yaml):
            (dst / name).unlink(missing_ok=True)
    if carry_yaml:
        write_text(dst / "feats.yaml", feats_yaml)
    for name, table in merged.items():
        write_kv(dst / name, table)
    write_kv(dst / "spk2utt", {s: " ".join(u) for s, u in spk2utt_from_utt2spk(merged["utt2spk"]).items()})
    return dst


def _whole_recording_segments(srcs: list[Path]) -> dict[Path, dict[str, str]]:
    """``segments`` rows for the sources that have none, where another source has them (as Kaldi's
    combine_data.sh does): each utterance is its whole recording, so the merged dir keeps every one."""
    from asr.audio import audio_duration

    if all((s / "segments").is_file() for s in srcs) or not any((s / "segments").is_file() for s in srcs):
        return {}
    out: dict[Path, dict[str, str]] = {}
    for s in srcs:
        if (s / "segments").is_file():
            continue
        if not (s / "wav.scp").is_file():
            raise AsrError(f"{s}: no wav.scp, cannot combine it with data dirs that have segments")
        known = read_kv(s / "utt2dur") if (s / "utt2dur").is_file() else {}
        rows = {}
        for utt, value in read_kv(s / "wav.scp").items():
            dur = float(known[utt]) if utt in known else audio_duration(value)
            # Rounded up: the reader stops at the recording's end, so the segment is the whole recording.
            rows[utt] = f"{utt} 0.000 {math.ceil(dur * 1000) / 1000:.3f}"
        out[s] = rows
    return out


def _common_feats_yaml(srcs: list[Path]) -> str | None:
    """The text of the sources' shared ``feats.yaml`` (None when none has one); AsrError if theirs differ.

    Compared parsed, so layout and key order do not matter. A source with feats.scp but no feats.yaml
    holds precomputed features, which cannot be mixed with computed ones either.
    """
    from asr.config import read_yaml

    first: tuple[Path, dict | None] | None = None
    text = None
    for s in srcs:
        if not (s / "feats.scp").is_file():
            continue
        f = s / "feats.yaml"
        parsed = read_yaml(f) if f.is_file() else None
        if first is None:
            first, text = (s, parsed), f.read_text(encoding="utf-8") if parsed is not None else None
        elif parsed != first[1]:
            raise AsrError(f"combine: {first[0]} and {s} have features made different ways "
                           f"({_difference(first[1], parsed)}); they cannot be mixed: make both with one config")
    return text


def _difference(a: dict | None, b: dict | None) -> str:
    if a is None or b is None:
        return "feats.yaml vs none, i.e. precomputed" if b is None else "none, i.e. precomputed, vs feats.yaml"
    key = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))[0]
    return f"{key}: {a.get(key)!r} vs {b.get(key)!r}"


def split_data_dir(src: str | Path, n: int) -> list[Path]:
    """Split by speaker into ``src/split{n}/{1..n}`` (Kaldi's split_data.sh), balancing utterance counts."""
    src = Path(src)
    data = DataDir.load(src)
    if n < 1:
        raise AsrError(f"split into {n} parts: need at least 1")
    speakers = sorted(data.spk2utt, key=lambda s: (-len(data.spk2utt[s]), s))
    if n > len(speakers):
        raise AsrError(f"{src}: cannot split {len(speakers)} speaker(s) into {n} parts")
    parts: list[list[str]] = [[] for _ in range(n)]
    for spk in speakers:  # largest first into the smallest part: near-equal sizes
        min(parts, key=len).extend(data.spk2utt[spk])
    return [subset_data_dir(src, src / f"split{n}" / str(i + 1), utts) for i, utts in enumerate(parts)]


def _cmd_fix(args: argparse.Namespace) -> int:
    dropped = fix_data_dir(args.dir)
    print(f"{args.dir}: fixed; dropped {dropped} utterance(s)")
    return 0


def _cmd_subset(args: argparse.Namespace) -> int:
    data = DataDir.load(args.src)
    if args.utt_list:
        utts = list(read_kv(args.utt_list))
    elif args.spk_list:
        spks = set(read_kv(args.spk_list))
        utts = [u for u in data.utts if data.utt2spk[u] in spks]
    else:
        utts = data.utts[: args.first]
    subset_data_dir(args.src, args.dst, utts)
    print(f"{args.dst}: {len(utts)} utterances")
    return 0


def _cmd_split(args: argparse.Namespace) -> int:
    for d in split_data_dir(args.dir, args.n):
        print(d)
    return 0


def _cmd_combine(args: argparse.Namespace) -> int:
    combine_data_dirs(args.dst, args.srcs)
    print(f"{args.dst}: {len(read_kv(Path(args.dst) / 'utt2spk'))} utterances")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fix-data-dir", help="sort, drop utterances missing from any file, regenerate spk2utt")
    p.add_argument("dir")
    p.set_defaults(func=_cmd_fix)
    p = sub.add_parser("subset-data-dir", help="copy a subset of utterances into a new data dir")
    p.add_argument("src")
    p.add_argument("dst")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--utt-list")
    g.add_argument("--spk-list")
    g.add_argument("--first", type=int)
    p.set_defaults(func=_cmd_subset)
    p = sub.add_parser("combine-data-dirs", help="merge data dirs (e.g. speed-perturbed copies) into DST")
    p.add_argument("dst")
    p.add_argument("srcs", nargs="+")
    p.set_defaults(func=_cmd_combine)
    p = sub.add_parser("split-data-dir", help="split by speaker into DIR/splitN/{1..N}")
    p.add_argument("dir")
    p.add_argument("n", type=int)
    p.set_defaults(func=_cmd_split)
