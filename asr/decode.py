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
from importlib import resources
from pathlib import Path

import torch

from asr.atomic import atomic_open
from asr.config import dump, from_dict, load, to_dict
from asr.decoders import DecodeConfig, make_decoder
from asr.errors import AsrError
from asr.model_inputs import BATCH_FRAMES, BATCH_SIZE, ModelInputs, log_probs_of

log = logging.getLogger(__name__)
Result = dict[str, list[tuple[list[str], float]]]  # utt -> n-best (words, score)
__all__ = ["BATCH_FRAMES", "BATCH_SIZE", "ModelInputs", "decode_dir", "log_probs_of"]


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

    With ``cfg.adapt_epochs`` the text is a second pass, each speaker by its own adapted model (asr.adapt).

    ``stats``, if given, gets ``audio_s``, ``device``, ``nj`` and ``threads`` (per process).
    """
    from asr.datadir import DataDir

    utts = DataDir.load(data_dir, read_text=False).utts
    if not utts:
        raise AsrError(f"{data_dir}: no utterances")
    dev, nj, threads = _plan(device, nj, threads, len(utts))
    if cfg.adapt_epochs:
        from asr.adapt import first_pass_config

        first_cfg = first_pass_config(cfg)
    args = (str(exp_dir), checkpoint, str(data_dir), to_dict(first_cfg if cfg.adapt_epochs else cfg))
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
    if cfg.adapt_epochs:
        from asr.adapt import adapt_speakers
        from asr.modeldir import ModelDir, cpu_threads

        with cpu_threads(threads * nj):
            md = ModelDir.load(exp_dir, checkpoint, dev)
            result = adapt_speakers(md, data_dir, cfg, result, (batch_size, batch_frames))
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
