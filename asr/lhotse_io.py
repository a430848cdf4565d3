"""lhotse manifests <-> Kaldi data dirs: ``asr import-lhotse`` and ``asr export-lhotse``.

Recipes built on lhotse (icefall, k2, NeMo tooling) keep corpora as RecordingSet / SupervisionSet /
CutSet manifests; every ``asr`` stage reads Kaldi data dirs. These two commands move a corpus
across without re-running a corpus preparation, and follow lhotse's own Kaldi conversion
(``lhotse.kaldi``) so that either tool can read what the other wrote:

- a lhotse supervision is a Kaldi utterance; a cut is not (cuts are read through their
  supervisions and recordings, :meth:`CutSet.decompose`);
- ``segments`` is written only when the supervisions are not exactly one whole recording each with
  the recording's id: that is the case lhotse's importer reads back from a dir without segments;
- Kaldi wants every utterance id to start with its speaker id (so that sorting by utterance keeps
  each speaker's utterances together, as ``spk2utt`` needs); an id that does not gets the prefix
  ``<speaker>-``, lhotse's own ``prefix_spk_id`` rule, and ids that already do are kept, so a
  Kaldi dir survives the round trip unchanged. A supervision without a speaker is its own speaker;
- a recording with one audio file becomes its path (multi-channel files too: ``asr`` averages
  channels on reading), a ``command`` source becomes ``cmd |``; anything else (URLs, in-memory
  audio, one file per channel, speed or volume transforms) has no wav.scp rendering and is skipped
  with one warning line naming it, with its utterances.

lhotse is optional (``pip install 'asr[lhotse]'``) and imported only inside these functions.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asr.datadir import KNOWN_FILES, DataDir, Segment, check_audio_dir, check_data_dir, write_data_dir, write_kv
from asr.errors import AsrError

if TYPE_CHECKING:
    from lhotse import Recording, SupervisionSegment

log = logging.getLogger(__name__)

# Durations closer than this are the same: it is below the 1 ms resolution of reco2dur/segments.
WHOLE_TOL_S = 5e-4


def _require_lhotse() -> None:
    """Fail with the install hint, not an ImportError traceback: lhotse is an optional extra."""
    try:
        import lhotse  # noqa: F401
    except ImportError:
        raise AsrError("lhotse is not installed: pip install 'asr[lhotse]'") from None


def read_manifest(path: Path) -> tuple[str, list[Any]]:
    """``(kind, items)`` of a ``.jsonl``/``.jsonl.gz`` manifest, kind in recordings/supervisions/cuts.

    Read line by line (not ``lhotse.load_manifest``) so a bad line is reported with its number.
    """
    from lhotse import Recording, SupervisionSegment
    from lhotse.cut import Cut
    from lhotse.serialization import deserialize_item

    if not path.is_file():
        raise AsrError(f"{path}: no such file")
    if not path.name.endswith((".jsonl", ".jsonl.gz")):
        raise AsrError(f"{path}: expected a lhotse manifest (.jsonl or .jsonl.gz)")
    kinds = {Recording: "recordings", SupervisionSegment: "supervisions", Cut: "cuts"}
    items: list[Any] = []
    kind = None
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    item = deserialize_item(json.loads(line))
                except json.JSONDecodeError as e:
                    raise AsrError(f"{path}:{n}: not valid JSON ({e.msg})") from None
                except Exception as e:  # lhotse raises TypeError/KeyError/ValueError on foreign dicts
                    raise AsrError(f"{path}:{n}: not a lhotse manifest entry ({type(e).__name__}: {e})") from None
                this = next((k for t, k in kinds.items() if isinstance(item, t)), None)
                if this is None or (kind is not None and this != kind):
                    raise AsrError(f"{path}:{n}: expected {kind or 'a recording, supervision or cut'}, "
                                   f"got {type(item).__name__}")
                kind = this
                items.append(item)
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise AsrError(f"{path}: cannot read ({e})") from None
    if kind is None:
        raise AsrError(f"{path}: empty manifest")
    return kind, items


def _load_inputs(manifests: list[Path]) -> tuple[dict[str, Recording], list[SupervisionSegment], Path]:
    """Recordings by id, supervisions (in recording time) and the file they came from, read from one
    cuts manifest or a recordings and a supervisions manifest (in either order)."""
    from lhotse import CutSet

    loaded = {}
    for path in manifests:
        kind, items = read_manifest(path)
        if kind in loaded:
            raise AsrError(f"{path}: a second {kind} manifest (the first is {loaded[kind][0]})")
        loaded[kind] = (path, items)
    if set(loaded) == {"cuts"}:
        recs, sups, _ = CutSet.from_cuts(loaded["cuts"][1]).decompose()
        recordings, supervisions = list(recs or []), list(sups or [])
    elif set(loaded) == {"recordings", "supervisions"}:
        recordings, supervisions = loaded["recordings"][1], loaded["supervisions"][1]
    else:
        raise AsrError(f"{', '.join(map(str, manifests))}: expected one CutSet manifest, or a RecordingSet "
                       f"and a SupervisionSet manifest; got {' + '.join(sorted(loaded))}")
    by_id: dict[str, Recording] = {}
    for r in recordings:
        if r.id in by_id:
            raise AsrError(f"{manifests[0]}: duplicate recording id {r.id}")
        by_id[r.id] = r
    sup_file = loaded["supervisions"][0] if "supervisions" in loaded else manifests[0]
    for s in supervisions:
        if s.recording_id not in by_id:
            raise AsrError(f"{sup_file}: supervision {s.id}: recording {s.recording_id} not in the recordings")
    return by_id, supervisions, sup_file


def wav_scp_value(rec: Recording) -> str | None:
    """The Kaldi rendering of a recording's audio, or None where wav.scp cannot express it."""
    if len(rec.sources) != 1:
        return None
    names = [t.get("name") if isinstance(t, dict) else type(t).__name__ for t in rec.transforms or []]
    if any(name != "Resample" for name in names):
        return None  # asr resamples on reading anyway; speed/volume/reverb would change the audio
    src = rec.sources[0]
    if src.type == "file":
        return str(src.source)
    if src.type == "command":
        return f"{str(src.source).rstrip()} |"
    return None


def _utterance(sup: SupervisionSegment, where: Path) -> tuple[str, str]:
    """``(utterance id, speaker)``: missing speaker -> the utterance itself; speaker-prefixed id."""
    spk = sup.speaker or sup.id
    for what, value in (("supervision id", sup.id), ("speaker", spk)):
        if not value or any(c.isspace() for c in value):
            raise AsrError(f"{where}: {what} {value!r} is empty or has whitespace (not a Kaldi id)")
    return (sup.id if sup.id.startswith(spk) else f"{spk}-{sup.id}"), spk


def _wav_scp(recordings: dict[str, Recording], supervisions: list[SupervisionSegment]) -> dict[str, str]:
    """wav.scp of the recordings Kaldi can express; one warning line for each one it cannot."""
    wav_scp = {}
    for rid, rec in recordings.items():
        value = wav_scp_value(rec)
        if value is None:
            n = sum(s.recording_id == rid for s in supervisions)
            log.warning("recording %s: audio source (%s) has no Kaldi wav.scp form; skipped with its %d "
                        "supervision(s)", rid, ", ".join(s.type for s in rec.sources), n)
        else:
            wav_scp[rid] = value
    return wav_scp


def import_lhotse(manifests: list[str | Path], dst_dir: str | Path) -> Path:
    """Write a validated Kaldi data dir from a CutSet manifest or recordings + supervisions manifests."""
    _require_lhotse()
    manifests, dst = [Path(m) for m in manifests], Path(dst_dir)
    recordings, supervisions, sup_file = _load_inputs(manifests)
    wav_scp = _wav_scp(recordings, supervisions)
    text, utt2spk, utt2dur, segments = {}, {}, {}, {}
    for sup in supervisions:
        if sup.recording_id not in wav_scp:
            continue
        utt, spk = _utterance(sup, sup_file)
        if utt in utt2spk:
            raise AsrError(f"{sup_file}: duplicate utterance id {utt}")
        utt2spk[utt], utt2dur[utt] = spk, sup.duration
        text[utt] = " ".join((sup.text or "").split())
        segments[utt] = Segment(sup.recording_id, sup.start, sup.start + sup.duration)
    if not utt2spk:
        raise AsrError(f"{sup_file}: no supervisions left to write")
    reco2dur = {rid: recordings[rid].duration for rid in wav_scp}
    whole = set(segments) == set(wav_scp) and all(
        s.reco == u and abs(s.start) < WHOLE_TOL_S and abs(s.end - reco2dur[u]) < WHOLE_TOL_S
        for u, s in segments.items())
    has_text = any(s.text is not None for s in supervisions)
    # Files of an earlier run into dst that this one does not write would describe other utterances.
    written = {"wav.scp", "utt2spk", "spk2utt", "reco2dur", "utt2dur", "text" if has_text else "",
               "" if whole else "segments"}
    for name in (*KNOWN_FILES, "feats.yaml", "cmvn.scp"):
        if name not in written:
            (dst / name).unlink(missing_ok=True)
    write_data_dir(dst, wav_scp=wav_scp, text=text if has_text else None, utt2spk=utt2spk,
                   segments=None if whole else segments, reco2dur=reco2dur)
    write_kv(dst / "utt2dur", {u: f"{d:.3f}" for u, d in utt2dur.items()})
    check_data_dir(dst, need_text=False, need_audio=True)
    log.info("import-lhotse: %d utterances of %d recordings -> %s", len(utt2spk), len(wav_scp), dst)
    return dst


def _recording(rid: str, value: str) -> Recording | str:
    """A lhotse Recording for one wav.scp value (header read, pipes run), or why there is none."""
    import soundfile as sf
    from lhotse import AudioSource, Recording

    from asr.audio import run_pipe

    value = value.strip()
    if value.endswith("|"):
        cmd = value[:-1].rstrip()
        try:
            info = sf.info(io.BytesIO(run_pipe(cmd, rid)))
        except (AsrError, sf.LibsndfileError, RuntimeError) as e:
            return f"pipe gave no readable audio ({str(e).splitlines()[0]})"
        return Recording(id=rid, sources=[AudioSource(type="command", channels=list(range(info.channels)),
                                                      source=cmd)],
                         sampling_rate=info.samplerate, num_samples=info.frames,
                         duration=info.frames / info.samplerate)
    if not Path(value).is_file():
        return f"not an audio file or a 'cmd |' pipe: {value}"
    try:
        return Recording.from_file(value, recording_id=rid)
    except Exception as e:  # soundfile / lhotse AudioLoadingError: report, skip, go on
        return f"cannot read audio header ({str(e).splitlines()[0] if str(e) else type(e).__name__})"


def export_lhotse(data_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Write recordings/supervisions/cuts ``.jsonl.gz`` manifests for a Kaldi data dir."""
    _require_lhotse()
    from lhotse import CutSet, RecordingSet, SupervisionSegment, SupervisionSet
    from lhotse.utils import add_durations

    src, out = Path(data_dir), Path(out_dir)
    d = DataDir.load(src)  # one line for a missing dir or utt2spk; then every problem, one line each
    check_audio_dir(src)
    assert d.wav_scp is not None  # check_audio_dir requires it
    segments = d.segments or {u: Segment(u, 0.0, -1.0) for u in d.utts}
    recordings: dict[str, Recording] = {}
    for rid, value in d.wav_scp.items():
        rec = _recording(rid, value)
        if isinstance(rec, str):
            n = sum(s.reco == rid for s in segments.values())
            log.warning("%s/wav.scp: recording %s: %s; skipped with its %d utterance(s)", src, rid, rec, n)
        else:
            recordings[rid] = rec
    sups = []
    for utt in d.utts:
        seg = segments[utt]
        rec = recordings.get(seg.reco)
        if rec is None:
            continue
        end = rec.duration if seg.end < 0 else seg.end
        sups.append(SupervisionSegment(
            id=utt, recording_id=seg.reco, start=seg.start, channel=rec.channel_ids[0],
            duration=add_durations(end, -seg.start, sampling_rate=rec.sampling_rate),
            text=d.text.get(utt) if d.text is not None else None, speaker=d.utt2spk[utt]))
    if not recordings:
        raise AsrError(f"{src}/wav.scp: no recording could be read")
    recs = RecordingSet.from_recordings(recordings[r] for r in sorted(recordings, key=lambda r: r.encode()))
    sup_set = SupervisionSet.from_segments(sups)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.jsonl.gz" for name in ("recordings", "supervisions", "cuts")]
    recs.to_file(paths[0])
    sup_set.to_file(paths[1])
    CutSet.from_manifests(recordings=recs, supervisions=sup_set).to_file(paths[2])
    log.info("export-lhotse: %d recordings, %d supervisions -> %s", len(recs), len(sup_set), out)
    return paths


def _cmd_import(args: argparse.Namespace) -> int:
    import_lhotse(args.manifests, args.dst)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    export_lhotse(args.dir, args.out)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import-lhotse", help="lhotse manifests (cuts, or recordings + supervisions) -> Kaldi data dir")
    p.add_argument("manifests", nargs="+", metavar="MANIFEST",
                   help="cuts.jsonl.gz, or recordings.jsonl.gz and supervisions.jsonl.gz (.jsonl too)")
    p.add_argument("dst", metavar="DST_DIR", help="data dir to write")
    p.set_defaults(func=_cmd_import)
    p = sub.add_parser("export-lhotse", help="Kaldi data dir -> lhotse recordings/supervisions/cuts manifests")
    p.add_argument("dir", metavar="DATA_DIR")
    p.add_argument("out", metavar="OUT_DIR", help="gets recordings.jsonl.gz, supervisions.jsonl.gz, cuts.jsonl.gz")
    p.set_defaults(func=_cmd_export)
