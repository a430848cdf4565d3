"""``asr decode``: model dir + data dir -> ``decode_<set>_<decoder>/text``; ``asr tune-lm``: alpha/beta grid.

Decoding runs in ``--nj`` processes, each loading the model once and taking an interleaved share
of the utterances; features come from the data dir's ``feats.scp`` when it has one (through the
model dir's load-time pipeline), else from its audio. An utterance that cannot be read is logged
with its id, counted and skipped; scoring then counts it as all deletions.
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


def _inputs(md, data_dir: Path, utts: list[str] | None) -> Iterator[tuple[str, torch.Tensor | AsrError]]:
    """Model inputs ``(N', D')`` per utterance, or the AsrError that prevented reading it."""
    from asr.datadir import DataDir

    data = DataDir.load(data_dir, read_text=False)  # decoding never reads the reference
    if data.feats_scp is not None:
        from asr.dataset import FeatsDataset

        ds = FeatsDataset(data_dir, md.tokens, pipeline=md.pipeline_for(data_dir), need_text=False)
        index = {u: i for i, u in enumerate(ds.utts)}
        for u in utts if utts is not None else ds.utts:
            if u not in index:
                yield u, AsrError(f"{u}: no usable features in {data_dir}/feats.scp")
                continue
            try:
                yield u, ds[index[u]][1]
            except AsrError as e:
                yield u, e
        return
    from asr.audio import iter_utterances

    if md.feature_config.cmvn == "speaker":
        raise AsrError(
            f"{data_dir}: {md.path} normalises per speaker, which needs the dir's features and per-speaker "
            f"stats: run 'asr make-feats {data_dir}' and 'asr compute-cmvn {data_dir} --per-speaker'"
        )

    for u, wave in iter_utterances(data, md.feature_config.sample_rate, utts):
        if isinstance(wave, AsrError):
            yield u, wave
            continue
        try:
            yield u, md.features(wave)
        except AsrError as e:
            yield u, AsrError(f"{u}: {e}")


def log_probs_of(
    md, data_dir: Path, utts: list[str] | None, batch_size: int
) -> Iterator[tuple[list[str], torch.Tensor, torch.Tensor, int]]:
    """Batches ``(utts, log_probs (B, T, V), lengths (B,), n_failed_since_last)`` of a data dir."""
    names, feats, failed = [], [], 0
    for u, x in _inputs(md, data_dir, utts):
        if isinstance(x, AsrError):
            log.warning("%s", x)
            failed += 1
            continue
        names.append(u)
        feats.append(x)
        if len(feats) == batch_size:
            lp, lens = md.log_probs(feats)
            yield names, lp, lens, failed
            names, feats, failed = [], [], 0
    if feats:
        lp, lens = md.log_probs(feats)
        yield names, lp, lens, failed
    elif failed:
        yield [], torch.zeros(0, 1, 1), torch.zeros(0, dtype=torch.long), failed


def _worker(
    exp_dir: str, checkpoint: str, data_dir: str, cfg: dict, utts: list[str] | None, batch_size: int,
    sample: str | None = None,
) -> tuple[Result, int, dict | None]:
    from asr.modeldir import ModelDir

    torch.set_num_threads(1)
    md = ModelDir.load(exp_dir, checkpoint)
    decoder = make_decoder(md.tokens.symbols, from_dict(DecodeConfig, cfg))
    out: Result = {}
    failed = 0
    posteriors = None
    for names, lp, lens, nfail in log_probs_of(md, Path(data_dir), utts, batch_size):
        failed += nfail
        if not names:
            continue
        for i, (u, hyps) in enumerate(zip(names, decoder.decode(lp, lens), strict=True)):
            out[u] = [(h.words, h.score) for h in hyps]
            if u == sample:
                posteriors = _posteriors(md, u, lp[i, : int(lens[i])], " ".join(hyps[0].words))
    return out, failed, posteriors


def _posteriors(md, utt: str, lp: torch.Tensor, hyp: str) -> dict:
    """One utterance's CTC posteriors for the report's posteriorgram (``posteriors.npz``)."""
    import numpy as np

    cfg = md.feature_config
    shift = cfg.frame_shift_ms / 1000 * cfg.subsample * md.model.time_reduction  # seconds per output frame
    return {"log_probs": lp.numpy().astype(np.float32), "tokens": np.array(md.tokens.symbols), "utt": np.array(utt),
            "hyp": np.array(hyp), "frame_shift": np.array(shift)}


def decode_dir(
    exp_dir: Path,
    data_dir: Path,
    cfg: DecodeConfig,
    out_dir: Path,
    checkpoint: str = "final.pt",
    nj: int = 1,
    batch_size: int = 16,
) -> tuple[Result, int]:
    """Decode every utterance of ``data_dir``; write ``out_dir/text`` (+ ``nbest`` when nbest > 1)."""
    from asr.datadir import DataDir

    utts = DataDir.load(data_dir, read_text=False).utts
    if not utts:
        raise AsrError(f"{data_dir}: no utterances")
    nj = max(1, min(nj, len(utts)))
    args = (str(exp_dir), checkpoint, str(data_dir), to_dict(cfg))
    sample = utts[0]
    if nj == 1:
        result, failed, posteriors = _worker(*args, None, batch_size, sample)
    else:
        ctx = multiprocessing.get_context("spawn")  # forking a process with torch threads can hang
        with cf.ProcessPoolExecutor(nj, mp_context=ctx) as pool:
            jobs = [pool.submit(_worker, *args, utts[i::nj], batch_size, sample) for i in range(nj)]
            result, failed, posteriors = {}, 0, None
            for j in jobs:
                r, f, p = j.result()
                result.update(r)
                failed += f
                posteriors = posteriors or p
    if not result:
        raise AsrError(f"{data_dir}: none of its {len(utts)} utterances could be decoded (see warnings)")
    with atomic_open(out_dir / "text", "w") as f:
        for u in sorted(result):
            f.write(" ".join([u, *result[u][0][0]]) + "\n")
    if cfg.nbest > 1:
        with atomic_open(out_dir / "nbest", "w") as f:
            for u in sorted(result):
                for rank, (words, score) in enumerate(result[u], 1):
                    f.write(f"{u}\t{rank}\t{score:.4f}\t{' '.join(words)}\n")
    if posteriors is not None:
        import numpy as np

        with atomic_open(out_dir / "posteriors.npz", "wb") as f:
            np.savez(f, **posteriors)
    dump(cfg, out_dir / "decode.yaml")
    return result, failed


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
    t0 = time.time()
    result, failed = decode_dir(exp_dir, data_dir, cfg, out_dir, args.checkpoint, args.nj, args.batch_size)
    log.info(
        "decoded %d utterance(s) into %s/text in %.1f s%s",
        len(result),
        out_dir,
        time.time() - t0,
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
    p.add_argument("--batch-size", type=int, default=16, help="utterances per forward pass")
    p.add_argument("-o", "--out", help="output dir")


def register(subparsers) -> None:
    p = subparsers.add_parser("decode", help="decode a data dir with a trained model")
    _common(p)
    p.add_argument("--decoder", choices=["greedy", "beam", "wfst"],
                   help="wfst: Kaldi FasterDecoder over a graph from 'asr make-graph' (needs --graph)")
    p.add_argument("--graph", help="graph dir from 'asr make-graph' (TLG.fst, words.txt); implies --decoder wfst")
    p.add_argument("--nbest", type=int, help="also write an n-best list (nbest file)")
    p.add_argument("--nj", type=int, default=1, help="parallel processes")
    p.add_argument("--tag", help="output dir suffix instead of the decoder name: decode_<set>_<tag>")
    p.set_defaults(func=_cmd_decode)
