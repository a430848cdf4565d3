"""``asr decode``: model dir + data dir -> ``decode_<set>_<decoder>/text``; ``asr tune-lm``: alpha/beta grid.

Decoding runs in ``--nj`` processes, each loading the model once and taking an interleaved share
of the utterances; features come from the data dir's ``feats.scp`` when it has one (through the
model dir's load-time pipeline), else from its audio. An utterance that cannot be read is logged
with its id, counted and skipped (its batch-mates go on); scoring then counts it as all deletions.

Throughput: the acoustic model runs over batches of utterances sorted by length, cut like training's
bucket sampler (``batch x longest <= --batch-frames`` model-input frames, at most ``--batch-size``
utterances), so padding stays small; the model's outputs on an utterance do not depend on its
batch-mates (asr.models), and the text is written in the data dir's order. Features are read ahead
in pools of :data:`POOL_BATCHES` batches' worth of frames and each pool is sorted; a ``feats.scp``
dir (and an audio dir whose ``segments`` or ``utt2dur`` gives every duration, without pipes) is
first put in length order as a whole. The model and each batch go to ``--device`` (``auto``: CUDA
when torch sees a GPU); search and LMs stay on the CPU. Each process sets torch's threads to
``--threads``, by default the cores this process may use divided by ``--nj``, whatever
``OMP_NUM_THREADS`` (which the Makefiles export) said at import; with a GPU one process decodes.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import logging
import multiprocessing
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import torch

from asr.atomic import atomic_open
from asr.config import dump, from_dict, load, to_dict
from asr.decoders import DecodeConfig, make_decoder
from asr.errors import AsrError

log = logging.getLogger(__name__)
Result = dict[str, list[tuple[list[str], float]]]  # utt -> n-best (words, score)
Batch = tuple[list[str], torch.Tensor, torch.Tensor, int]  # utts, log_probs (B, T, V), lengths (B,), n_failed
BATCH_FRAMES = 20000  # as training's frames_per_batch: padded model-input frames per forward pass
BATCH_SIZE = 64  # utterances per forward pass at most (0: no cap beyond --batch-frames)
POOL_BATCHES = 8  # features read ahead and sorted together, in batches' worth of frames


class _Source:
    """A data dir's model inputs one utterance at a time: ``feats.scp`` through the model dir's pipeline, else audio."""

    def __init__(self, md, data_dir: Path):
        from asr.datadir import DataDir

        self.md, self.data_dir = md, data_dir
        self.data = DataDir.load(data_dir, read_text=False)  # decoding never reads the reference
        self.ds = None
        if self.data.feats_scp is not None:
            from asr.dataset import FeatsDataset

            self.ds = FeatsDataset(data_dir, md.tokens, pipeline=md.pipeline_for(data_dir), need_text=False)
            self.index = {u: i for i, u in enumerate(self.ds.utts)}
        elif md.feature_config.cmvn == "speaker":
            raise AsrError(
                f"{data_dir}: {md.path} normalises per speaker, which needs the dir's features and per-speaker "
                f"stats: run 'asr make-feats {data_dir}' and 'asr compute-cmvn {data_dir} --per-speaker'"
            )

    def order(self, utts: list[str]) -> list[str]:
        """``utts`` shortest first where every length is known up front, else as given."""
        if self.ds is not None:
            return sorted(utts, key=lambda u: self.ds.lengths[self.index[u]] if u in self.index else 0)
        data = self.data
        # Reading a pipe's recording out of order would run the pipe again for each of its segments.
        if any(v.strip().endswith("|") for v in (data.wav_scp or {}).values()):
            return utts
        durs = {u: s.end - s.start for u, s in (data.segments or {}).items()}
        if (data.path / "utt2dur").is_file():
            from asr.datadir import read_kv

            for u, v in read_kv(data.path / "utt2dur").items():
                try:
                    durs[u] = float(v)
                except ValueError:
                    return utts
        return sorted(utts, key=durs.__getitem__) if all(u in durs for u in utts) else utts

    def read(self, u: str) -> tuple[torch.Tensor, float]:
        """``(model input (N', D'), seconds of audio)``, or an AsrError naming ``u``."""
        cfg = self.md.feature_config
        if self.ds is not None:
            if u not in self.index:
                raise AsrError(f"{u}: no usable features in {self.data_dir}/feats.scp")
            x = self.ds[self.index[u]][1]
            frames = (self.data.utt2num_frames or {}).get(u, x.shape[0] * cfg.subsample)
            return x, frames * cfg.frame_shift_ms / 1000
        from asr.audio import load_utterance

        try:
            wave = load_utterance(self.data, u, cfg.sample_rate)
            return self.md.features(wave), wave.numel() / cfg.sample_rate
        except AsrError as e:
            msg = str(e)
            raise AsrError(msg if msg.startswith(u) else f"{u}: {msg}") from None


def _forward(md, names: list[str], feats: list[torch.Tensor]) -> Iterator[Batch]:
    """One batch through the model; if it fails as a whole (e.g. out of GPU memory), one utterance at a time."""
    try:
        lp, lens = md.log_probs(feats)
    except RuntimeError as e:
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if len(feats) == 1:
            log.warning("%s: the model failed on it: %s", names[0], why)
            yield [], torch.zeros(0, 1, 1), torch.zeros(0, dtype=torch.long), 1
            return
        log.warning("a batch of %d utterances failed (%s); running them one at a time", len(feats), why)
        for n, f in zip(names, feats, strict=True):
            yield from _forward(md, [n], [f])
        return
    yield names, lp, lens, 0


def log_probs_of(
    md, data_dir: Path, utts: list[str] | None, batch_size: int = BATCH_SIZE, batch_frames: int = BATCH_FRAMES,
    stats: dict | None = None,
) -> Iterator[Batch]:
    """Batches ``(utts, log_probs (B, T, V), lengths (B,), n_failed_since_last)`` of a data dir, sorted by length.

    A batch holds utterances of similar length (``B x T <= batch_frames``, ``B <= batch_size`` unless 0),
    rows in the data dir's order; an unreadable utterance is logged, counted and left out. ``stats``,
    if given, gets ``audio_s`` (seconds of audio read) added to.
    """
    from asr.dataset import bucket_batches

    if batch_frames < 1 or batch_size < 0:
        raise AsrError(f"--batch-frames {batch_frames} must be >= 1 and --batch-size {batch_size} >= 0")
    src = _Source(md, data_dir)
    utts = list(src.data.utts if utts is None else utts)
    rank = {u: i for i, u in enumerate(utts)}
    pool_frames, pool_utts = POOL_BATCHES * batch_frames, POOL_BATCHES * (batch_size or batch_frames)
    names, feats, failed, seconds, pooled = [], [], 0, 0.0, 0

    def flush() -> Iterator[Batch]:
        nonlocal failed, pooled
        for b in bucket_batches([f.shape[0] for f in feats], batch_frames, batch_size):
            b.sort(key=lambda i: rank[names[i]])
            for batch in _forward(md, [names[i] for i in b], [feats[i] for i in b]):
                yield *batch[:3], batch[3] + failed
                failed = 0
        names.clear()
        feats.clear()
        pooled = 0

    for k, u in enumerate(src.order(utts)):
        try:
            x, dur = src.read(u)
        except AsrError as e:
            log.warning("%s", e)
            failed += 1
        else:
            names.append(u)
            feats.append(x)
            seconds, pooled = seconds + dur, pooled + x.shape[0]
        if feats and (pooled >= pool_frames or len(feats) >= pool_utts or k == len(utts) - 1):
            yield from flush()
    if failed:
        yield [], torch.zeros(0, 1, 1), torch.zeros(0, dtype=torch.long), failed
    if stats is not None:
        stats["audio_s"] = stats.get("audio_s", 0.0) + seconds


def _worker(
    exp_dir: str, checkpoint: str, data_dir: str, cfg: dict, utts: list[str] | None, batching: tuple[int, int],
    sample: str | None = None, device: str = "cpu", threads: int = 1,
) -> tuple[Result, int, dict | None, float]:
    """Decode ``utts`` (None: all) in this process: ``(n-best per utterance, n_failed, posteriors, audio seconds)``."""
    from asr.modeldir import ModelDir, cpu_threads

    with cpu_threads(threads):
        md = ModelDir.load(exp_dir, checkpoint, device)
        decoder = make_decoder(md.tokens.symbols, from_dict(DecodeConfig, cfg))
        out: Result = {}
        failed, stats = 0, {"audio_s": 0.0}
        posteriors = None
        for names, lp, lens, nfail in log_probs_of(md, Path(data_dir), utts, *batching, stats=stats):
            failed += nfail
            if not names:
                continue
            for i, (u, hyps) in enumerate(zip(names, decoder.decode(lp, lens), strict=True)):
                out[u] = [(h.words, h.score) for h in hyps]
                if u == sample:
                    posteriors = _posteriors(md, u, lp[i, : int(lens[i])], " ".join(hyps[0].words))
    return out, failed, posteriors, stats["audio_s"]


def _posteriors(md, utt: str, lp: torch.Tensor, hyp: str) -> dict:
    """One utterance's CTC posteriors for the report's posteriorgram (``posteriors.npz``)."""
    import numpy as np

    cfg = md.feature_config
    shift = cfg.frame_shift_ms / 1000 * cfg.subsample * md.model.time_reduction  # seconds per output frame
    return {"log_probs": lp.numpy().astype(np.float32), "tokens": np.array(md.tokens.symbols), "utt": np.array(utt),
            "hyp": np.array(hyp), "frame_shift": np.array(shift)}


def _plan(device: str, nj: int, threads: int, n_utts: int) -> tuple[torch.device, int, int]:
    """``(device, processes, torch threads per process)``; one process when the model runs on a GPU."""
    from asr.modeldir import available_cores, resolve_device

    dev = resolve_device(device)
    nj = max(1, min(nj, n_utts))
    if dev.type == "cuda" and nj > 1:
        log.info("--device %s: one process decodes (--nj %d ignored; the GPU takes the model's batches)", dev, nj)
        nj = 1
    if threads < 0:
        raise AsrError(f"--threads {threads}: expected >= 0 (0: cores / nj)")
    return dev, nj, threads or max(1, available_cores() // nj)


def decode_dir(
    exp_dir: Path,
    data_dir: Path,
    cfg: DecodeConfig,
    out_dir: Path,
    checkpoint: str = "final.pt",
    nj: int = 1,
    batch_size: int = BATCH_SIZE,
    batch_frames: int = BATCH_FRAMES,
    device: str = "auto",
    threads: int = 0,
    stats: dict | None = None,
) -> tuple[Result, int]:
    """Decode every utterance of ``data_dir``; write ``out_dir/text`` (+ ``nbest`` when nbest > 1).

    ``stats``, if given, gets ``audio_s``, ``device``, ``nj`` and ``threads`` (per process).
    """
    from asr.datadir import DataDir

    utts = DataDir.load(data_dir, read_text=False).utts
    if not utts:
        raise AsrError(f"{data_dir}: no utterances")
    dev, nj, threads = _plan(device, nj, threads, len(utts))
    args = (str(exp_dir), checkpoint, str(data_dir), to_dict(cfg))
    sample, batching = utts[0], (batch_size, batch_frames)
    if nj == 1:
        result, failed, posteriors, audio_s = _worker(*args, None, batching, sample, str(dev), threads)
    else:
        ctx = multiprocessing.get_context("spawn")  # forking a process with torch threads can hang
        with cf.ProcessPoolExecutor(nj, mp_context=ctx) as pool:
            jobs = [pool.submit(_worker, *args, utts[i::nj], batching, sample, str(dev), threads) for i in range(nj)]
            result, failed, posteriors, audio_s = {}, 0, None, 0.0
            for j in jobs:
                r, f, p, s = j.result()
                result.update(r)
                failed += f
                posteriors = posteriors or p
                audio_s += s
    if stats is not None:
        stats.update(audio_s=audio_s, device=str(dev), nj=nj, threads=threads)
    if not result:
        raise AsrError(f"{data_dir}: none of its {len(utts)} utterances could be decoded (see warnings)")
    _write(out_dir, cfg, [u for u in utts if u in result], result, posteriors)
    return result, failed


def _write(out_dir: Path, cfg: DecodeConfig, utts: list[str], result: Result, posteriors: dict | None) -> None:
    """``text`` (+ ``nbest``, ``posteriors.npz``) in the data dir's order, and ``decode.yaml``."""
    with atomic_open(out_dir / "text", "w") as f:
        for u in utts:
            f.write(" ".join([u, *result[u][0][0]]) + "\n")
    if cfg.nbest > 1:
        with atomic_open(out_dir / "nbest", "w") as f:
            for u in utts:
                for rank, (words, score) in enumerate(result[u], 1):
                    f.write(f"{u}\t{rank}\t{score:.4f}\t{' '.join(words)}\n")
    if posteriors is not None:
        import numpy as np

        with atomic_open(out_dir / "posteriors.npz", "wb") as f:
            np.savez(f, **posteriors)
    dump(cfg, out_dir / "decode.yaml")


def _config(args: argparse.Namespace) -> DecodeConfig:
    if args.conf is not None:
        cfg = load(DecodeConfig, args.conf, args.set)
    else:
        # The defaults ship inside the package (asr/conf, kept equal to the repo's conf/ by a test), so an
        # installed wheel decodes with the same settings as a checkout, whatever the working directory.
        decoder = args.decoder or ("wfst" if getattr(args, "graph", None) else DecodeConfig.decoder)
        packaged = resources.files("asr") / "conf" / f"decode_{decoder}.yaml"
        with resources.as_file(packaged) as default:
            cfg = load(DecodeConfig, default, args.set)
    if args.decoder:
        cfg.decoder = args.decoder
    if getattr(args, "graph", None):
        cfg.graph = args.graph
        if not args.decoder:
            cfg.decoder = "wfst"
        elif cfg.decoder != "wfst":
            raise AsrError(f"--graph needs the wfst decoder, not --decoder {cfg.decoder}")
    if args.lm and cfg.decoder == "wfst":
        raise AsrError("--lm: the wfst decoder's LM is the one compiled into its graph ('asr make-graph --lm')")
    if args.lm:
        cfg.lm = args.lm
        if not args.decoder:
            cfg.decoder = "beam"
    if getattr(args, "nbest", None):
        cfg.nbest = args.nbest
    if cfg.lm and cfg.decoder == "greedy":
        raise AsrError("--lm needs the beam decoder (--decoder beam)")
    return cfg


def _cmd_decode(args: argparse.Namespace) -> int:
    from asr.lm_tuned import apply_tuned, explicit_keys, named_decoder

    exp_dir, data_dir = Path(args.exp_dir), Path(args.data_dir)
    cfg = _config(args)
    cfg = apply_tuned(cfg, exp_dir, explicit_keys(args.set), bool(args.lm), named_decoder(args, cfg))
    out_dir = Path(args.out) if args.out else exp_dir / f"decode_{data_dir.name}_{args.tag or cfg.decoder}"
    t0, stats = time.time(), {}
    result, failed = decode_dir(exp_dir, data_dir, cfg, out_dir, args.checkpoint, args.nj, args.batch_size,
                                args.batch_frames, args.device, args.threads, stats)
    wall = time.time() - t0
    audio_s = stats["audio_s"]
    log.info(
        "decoded %d utterance(s), %.1f s of audio, into %s/text in %.1f s: %.2f utt/s, RTF %s (%s, %d x %d threads)%s",
        len(result), audio_s, out_dir, wall, len(result) / max(wall, 1e-9),
        f"{wall / audio_s:.4f}" if audio_s > 0 else "n/a", stats["device"], stats["nj"], stats["threads"],
        f"; {failed} could not be read (see warnings)" if failed else "",
    )
    return 0

def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("exp_dir", help="model dir written by 'asr train'")
    p.add_argument("data_dir", help="Kaldi data dir (feats.scp, or wav.scp)")
    p.add_argument("--conf", help="decoder config YAML (default: decode_<decoder>.yaml packaged with asr, "
                   "the same as the repository's conf/decode_<decoder>.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a decoder setting")
    p.add_argument("--lm", help="word n-gram LM (ARPA, or KenLM binary when kenlm is installed)")
    p.add_argument("--checkpoint", default="final.pt")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                   help="utterances per forward pass at most (1: one at a time; 0: only --batch-frames caps it)")
    p.add_argument("-o", "--out", help="output dir")


def register(subparsers) -> None:
    p = subparsers.add_parser("decode", help="decode a data dir with a trained model")
    _common(p)
    p.add_argument("--decoder", choices=["greedy", "beam", "wfst"],
                   help="wfst: Kaldi FasterDecoder over a graph from 'asr make-graph' (needs --graph)")
    p.add_argument("--graph", help="graph dir from 'asr make-graph' (TLG.fst, words.txt); implies --decoder wfst")
    p.add_argument("--nbest", type=int, help="also write an n-best list (nbest file)")
    p.add_argument("--nj", type=int, default=1, help="parallel processes (one when the model runs on a GPU)")
    p.add_argument("--batch-frames", type=int, default=BATCH_FRAMES,
                   help="padded model-input frames per forward pass (batch x longest); batches are sorted by length")
    p.add_argument("--device", default="auto", help="cpu, cuda[:N], or auto (cuda when torch sees a GPU); "
                   "the search and any LM run on the CPU")
    p.add_argument("--threads", type=int, default=0, help="torch threads per process (default 0: the cores this "
                   "process may use / --nj, whatever OMP_NUM_THREADS says)")
    p.add_argument("--tag", help="output dir suffix instead of the decoder name: decode_<set>_<tag>")
    p.set_defaults(func=_cmd_decode)
