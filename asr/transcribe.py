"""Transcribe audio files with a trained model dir: ``asr transcribe MODEL_DIR FILE...``.

The model is loaded once for all files. Long audio is streamed in chunks so memory stays flat:
each chunk is read (through :class:`asr.audio.AudioStream`) with a few seconds of context on both
sides, run through features, pipeline and model, and only the output frames of its own span are
kept. Chunk borders are moved to the quietest hop near the nominal border, where the BiLSTM's
context matters least. The posteriors of consecutive chunks are joined into segments, each decoded
on its own: a segment ends at the first chunk border after ``segment_seconds`` (120 s) where the
output frame is blank (a pause), or regardless at four times that. No word is lost or doubled at a
chunk border; at a segment border the decoder starts afresh, so an LM's context (and its sentence
start/end scores) restarts there, as between two files.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from tqdm import tqdm

from asr import cmvn as cmvn_mod
from asr.audio import AudioSource, load_wav_scp_entry
from asr.config import load as load_config
from asr.datadir import read_kv
from asr.decoders import DecodeConfig, Hypothesis, make_decoder
from asr.errors import AsrError
from asr.features import FeaturePipeline, compute_features
from asr.word_times import Word, words_with_times

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif", ".au", ".sph"}


@dataclass
class Transcript:
    key: str
    text: str
    duration: float
    words: list[Word] = field(default_factory=list)


class Transcriber:
    """Load a model dir once; transcribe many files.

    ``engine`` is ``eager`` (the checkpoint) or a file from ``asr export`` (.pt2, .onnx or TorchScript .ts).
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        decode: DecodeConfig | None = None,
        checkpoint: str = "final.pt",
        device: str = "cpu",
        chunk_seconds: float = 30.0,
        context_seconds: float = 5.0,
        word_gap: float = 0.4,
        segment_seconds: float = 120.0,
        engine: str = "eager",
        progress: bool | None = None,
        align: bool = False,
    ):
        from asr.modeldir import ModelDir

        self.md = ModelDir.load(model_dir, checkpoint=checkpoint, device=device)
        self.cfg = self.md.feature_config
        if self.cfg.kind == "precomputed":
            raise AsrError(f"{model_dir}: trained on precomputed features; it cannot transcribe audio")
        # A file carries no speaker: a per-speaker model normalises each file (long files: each chunk)
        # with its own stats, unless use_speaker_stats() pools stats over files known to share a speaker.
        self.pipeline = self.md.pipeline
        self.decode_config = decode or DecodeConfig(decoder="greedy")
        self.decoder = make_decoder(self.md.tokens.symbols, self.decode_config)
        self.rate = self.cfg.sample_rate
        self.shift = self.cfg.shift_samples
        # One output frame of the model covers `hop` samples (feature shift x pipeline subsampling x the
        # model's own time reduction); chunk borders sit on multiples of it, so a chunk's frames line up
        # exactly with the frames of the whole file. A convolutional front-end's edge frames see zero
        # padding at a window's ends, but those lie in the context, which is at least one hop.
        self.hop = self.shift * self.cfg.subsample * self.md.model.time_reduction
        self.chunk = max(1, round(chunk_seconds * self.rate / self.hop)) * self.hop
        self.context = max(1, round(context_seconds * self.rate / self.hop)) * self.hop
        self.progress = progress
        self.word_gap = word_gap
        # Word times from a forced alignment of the hypothesis to its own posteriors (asr.align)
        # instead of the run of frames around each token's spike.
        self.align = align
        self._vocab = None  # see _known
        self.segment_frames = max(1, round(segment_seconds * self.rate / self.hop))
        # chunk + context on both sides + the one second either way that _border may move the end
        self.window = self.chunk + 2 * self.context + 2 * (self.rate // self.hop) * self.hop
        # An exported network (asr export: .pt2, .onnx or TorchScript) replaces the checkpoint's model;
        # features, tokens and decoding still come from the model dir.
        self.exported = None
        if engine != "eager":
            from asr.export import load_exported

            self.exported = load_exported(engine)

    # ------------------------------------------------------------------ model on one chunk
    @torch.no_grad()  # an exported engine would otherwise keep every chunk's autograd graph
    def _log_probs(self, wave: torch.Tensor) -> torch.Tensor:
        """Audio ``(T,)`` -> log-probs ``(N', V)`` of the whole piece."""
        feats = self.pipeline(compute_features(wave, self.cfg))
        if self.exported is not None:
            lp, _ = self.exported(feats.unsqueeze(0), torch.tensor([feats.shape[0]]))
            return lp[0].float()
        lp, lens = self.md.log_probs([feats])
        return lp[0, : int(lens[0])]

    def iter_posteriors(self, audio: AudioSource) -> Iterator[torch.Tensor]:
        """Log-probs of a whole recording, one piece ``(n_k, V)`` per chunk; the pieces concatenate."""
        total = audio.num_samples
        if total < self.cfg.window_samples:
            raise AsrError(f"{audio.name}: {total} samples, shorter than one analysis window")
        if total <= self.chunk + self.context:
            yield self._log_probs(audio.read(0, total))
            return
        start = 0
        show = self.progress if self.progress is not None else sys.stderr.isatty()
        with tqdm(total=total / self.rate, unit="s", disable=not show, desc=audio.name, leave=False) as bar:
            while start < total:
                end = self._border(audio, start + self.chunk) if start + self.chunk + self.context < total else total
                # Every window has the same length (but the last): the BiLSTM kernels cache a plan
                # per input shape, so varying lengths would make memory creep up with duration.
                a = max(0, start - self.context)
                b = min(total, a + self.window)
                lp = self._log_probs(audio.read(a, b))
                first = (start - a) // self.hop
                n = (end - start) // self.hop if end < total else lp.shape[0] - first
                yield lp[first : first + n]
                bar.update((end - start) / self.rate)
                start = end

    def posteriors(self, audio: AudioSource) -> torch.Tensor:
        """Stitched log-probs ``(N, V)`` of a whole recording, computed chunk by chunk."""
        return torch.cat(list(self.iter_posteriors(audio)))

    def _border(self, audio: AudioSource, nominal: int) -> int:
        """The quietest hop boundary within one second of ``nominal`` (a multiple of ``hop``)."""
        reach = (self.rate // self.hop) * self.hop
        a = nominal - reach
        seg = audio.read(a, min(audio.num_samples, nominal + reach))
        hops = seg.numel() // self.hop
        if hops < 2:
            return nominal
        energy = seg[: hops * self.hop].reshape(hops, self.hop).pow(2).mean(dim=1)
        return a + int(torch.argmin(energy[1:])) * self.hop + self.hop

    # ------------------------------------------------------------------ public API
    def use_speaker_stats(self, audios: list[AudioSource]) -> int:
        """Treat ``audios`` as one speaker: a ``cmvn: speaker`` model normalises every later input with CMVN
        stats pooled over all of them, as ``asr decode`` does with a data dir's utt2spk (Kaldi's
        ``apply-cmvn --utt2spk``). Short files are what this is for: one digit's own stats (0.3 s, half
        silence) are far from its speaker's. Returns the number of frames pooled."""
        if self.cfg.cmvn != "speaker":
            raise AsrError(f"{self.md.path} normalises with cmvn: {self.cfg.cmvn}; only a cmvn: speaker model "
                           "takes one speaker's pooled stats")
        stats = None
        step = self.chunk + self.context  # pieces as long as a chunk's window: memory stays flat
        for audio in audios:
            try:
                for a in range(0, audio.num_samples, step):
                    piece = audio.read(a, min(audio.num_samples, a + step))
                    if piece.numel() >= self.cfg.window_samples:
                        stats = cmvn_mod.accumulate(compute_features(piece, self.cfg), stats)
            except AsrError as e:  # its transcription will say so too; the others still count
                log.warning("%s; left out of the speaker's CMVN stats", e)
        if stats is None:
            raise AsrError("no input is long enough to give CMVN stats")
        self.pipeline = FeaturePipeline(replace(self.cfg, cmvn="global"), stats)
        return int(stats[0, -1])

    def transcribe(self, audio: AudioSource) -> Transcript:
        """One recording -> its transcript with word times and confidences.

        Posteriors are decoded in segments of at least ``segment_frames`` that end where a chunk
        ends on a blank frame (a pause): decoding then never holds more than a few minutes of
        posteriors, so memory stays flat however long the recording is, and cutting at a blank
        changes no collapse of repeated tokens. Each segment is decoded afresh: an LM's context
        does not cross a segment border.
        """
        words: list[Word] = []
        buf: list[torch.Tensor] = []
        offset = buffered = 0
        for piece in self.iter_posteriors(audio):
            buf.append(piece)
            buffered += piece.shape[0]
            at_pause = int(piece[-1].argmax()) == 0
            # Without any pause (a model that never emits blank there), cut anyway to bound memory.
            if (buffered >= self.segment_frames and at_pause) or buffered >= 4 * self.segment_frames:
                words += self._decode_segment(torch.cat(buf), offset)
                offset += buffered
                buf, buffered = [], 0
        if buf:
            words += self._decode_segment(torch.cat(buf), offset)
        duration = audio.num_samples / self.rate
        for w in words:
            # The last output frame may reach past the audio by up to (subsample - 1) feature frames.
            w.end = min(w.end, duration)
        return Transcript(audio.name, " ".join(w.word for w in words), duration, words)

    def _decode_segment(self, lp: torch.Tensor, offset: int) -> list[Word]:
        hyp: Hypothesis = self.decoder.decode(lp.unsqueeze(0), torch.tensor([lp.shape[0]]))[0][0]
        frame_s = self.hop / self.rate
        if self.align:
            from asr.align import align_hypothesis, frame_time

            aligned = align_hypothesis(lp, hyp.tokens, self.md.tokens.symbols, self.decode_config.word_boundary,
                                       max(1, round(self.word_gap / frame_s)), known=self._known)
            return [Word(w.word, frame_time(w.start, frame_s, offset), frame_time(w.end, frame_s, offset),
                         round(w.score, 4)) for w in aligned]
        return words_with_times(hyp, lp, self.md.tokens.symbols, self.decode_config.word_boundary, frame_s,
                                max(1, round(self.word_gap / frame_s)), offset, lexicon=self.md.tokens.lexicon,
                                words_given=self.decode_config.decoder == "wfst", known=self._known)

    def _known(self, word: str) -> bool:
        """Is ``word`` in the vocabulary: the decoder's LM, else the model dir's tuned LM (read on first use)."""
        if self._vocab is None:
            scorer = getattr(self.decoder, "scorer", None)
            self._vocab = getattr(scorer, "lm", None)
            if self._vocab is None:
                from asr.lm.backends import load_lm
                from asr.lm_tuned import read_tuned

                info = read_tuned(self.md.path)
                lm = Path(info["lm"]) if info else None
                self._vocab = load_lm(lm) if lm is not None and lm.is_file() else frozenset()
        return word in self._vocab

    def transcribe_file(self, path: str | os.PathLike) -> Transcript:
        return self.transcribe(AudioSource.open(str(path), self.rate))


def expand_inputs(items: list[str], rate: int) -> Iterator[tuple[str, AudioSource | AsrError]]:
    """Files, ``-``, directories (their audio files, recursively) and ``wav.scp`` files -> sources."""
    for item in items:
        p = Path(item)
        if item != "-" and p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.suffix.lower() in AUDIO_SUFFIXES)
            if not files:
                yield item, AsrError(f"{item}: directory holds no audio files")
            for f in files:
                yield from _open(str(f), rate)
        elif p.name.endswith(".scp") and p.is_file():
            try:
                entries = read_kv(p)
            except AsrError as e:
                yield item, e
                continue
            for key, value in entries.items():
                try:
                    yield key, AudioSource.from_tensor(key, load_wav_scp_entry(value, rate, name=key), rate)
                except AsrError as e:
                    yield key, e
        else:
            yield from _open(item, rate)


def _open(path: str, rate: int) -> Iterator[tuple[str, AudioSource | AsrError]]:
    try:
        yield path, AudioSource.open(path, rate)
    except AsrError as e:
        yield path, e


# ---------------------------------------------------------------------- output formats
def _srt_time(t: float) -> str:
    ms = int(round(t * 1000))
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def format_srt(tr: Transcript, max_words: int = 12, pause: float = 0.6) -> str:
    """Subtitles: a cue per phrase, split at pauses longer than ``pause`` s or every ``max_words``."""
    cues, cur = [], []
    for w in tr.words:
        if cur and (len(cur) >= max_words or w.start - cur[-1].end > pause):
            cues.append(cur)
            cur = []
        cur.append(w)
    if cur:
        cues.append(cur)
    return "".join(
        f"{i}\n{_srt_time(c[0].start)} --> {_srt_time(c[-1].end)}\n{' '.join(w.word for w in c)}\n\n"
        for i, c in enumerate(cues, 1)
    )


def format_ctm(tr: Transcript) -> str:
    """NIST CTM: ``key channel start duration word confidence`` per word."""
    key = tr.key.replace(" ", "_")
    return "".join(f"{key} 1 {w.start:.3f} {w.end - w.start:.3f} {w.word} {w.confidence:.4f}\n" for w in tr.words)


def format_transcripts(transcripts: list[Transcript], fmt: str) -> str:
    if fmt == "json":
        return json.dumps([asdict(t) for t in transcripts], indent=2, ensure_ascii=False) + "\n"
    if fmt == "ctm":
        return "".join(format_ctm(t) for t in transcripts)
    if fmt == "srt":
        return "".join(format_srt(t) for t in transcripts)
    return "".join(f"{t.key.replace(' ', '_')} {t.text}\n" for t in transcripts)


# ---------------------------------------------------------------------- CLI
def _decode_config(args: argparse.Namespace) -> DecodeConfig:
    """As ``asr decode``: an LM means beam search unless a decoder is named, and greedy + LM is an error."""
    decode = load_config(DecodeConfig, args.conf, args.set)
    if args.decoder:
        decode.decoder = args.decoder
    if args.lm:
        decode.lm = args.lm
    if getattr(args, "graph", None):
        decode.graph = args.graph
    named = args.decoder or any(kv.split("=", 1)[0].strip() == "decoder" for kv in args.set)
    if not named and (args.lm or getattr(args, "graph", None) or not args.conf):
        # Without a config the default is greedy (fast, no LM needed), but an LM only works in beam search.
        decode.decoder = "wfst" if getattr(args, "graph", None) else "beam" if decode.lm else "greedy"
    if args.lm and decode.decoder == "wfst":
        raise AsrError("--lm: the wfst decoder's LM is the one compiled into its graph ('asr make-graph --lm')")
    if decode.lm and decode.decoder == "greedy":
        raise AsrError("--lm needs the beam decoder (--decoder beam)")
    if decode.adapt_epochs and not args.one_speaker:
        raise AsrError("adapt_epochs: speaker adaptation needs a speaker's files together: add --one-speaker, or "
                       "use 'asr decode' on a data dir (utt2spk)")
    return decode


def _cmd_transcribe(args: argparse.Namespace) -> int:
    from asr.atomic import write_text
    from asr.lm_tuned import apply_tuned, explicit_keys, named_decoder

    decode = _decode_config(args)
    # A model dir with a tuned LM (asr tune-lm) decodes with it unless told otherwise.
    decode = apply_tuned(decode, args.model_dir, explicit_keys(args.set), bool(args.lm), named_decoder(args, decode))
    engine = args.engine
    if engine != "eager" and args.device not in ("auto", "cpu"):
        raise AsrError(f"--device {args.device}: an exported --engine runs on the CPU (use --engine eager)")
    tr = Transcriber(
        args.model_dir, decode, checkpoint=args.checkpoint, chunk_seconds=args.chunk_seconds, engine=engine,
        align=args.align, device=args.device if engine == "eager" else "cpu",
    )
    done, failed = [], 0
    inputs = expand_inputs(args.files, tr.rate)
    if args.one_speaker:
        # Two passes: pool the stats over every readable input, then transcribe them.
        inputs = list(inputs)
        frames = tr.use_speaker_stats([s for _, s in inputs if not isinstance(s, AsrError)])
        log.info("--one-speaker: CMVN stats pooled over %d frames of %d input(s)", frames, len(inputs))
        if decode.adapt_epochs:
            from asr.adapt import adapt_transcriber

            adapt_transcriber(tr, [s for _, s in inputs if not isinstance(s, AsrError)], decode)
    elif tr.cfg.cmvn == "speaker":
        log.info("%s normalises per speaker: each file gets its own stats with a global prior; --one-speaker "
                 "pools them over the files", args.model_dir)
    for key, source in inputs:
        if isinstance(source, AsrError):
            print(f"asr transcribe: {source}", file=sys.stderr)
            failed += 1
            continue
        try:
            t = tr.transcribe(source)
        except AsrError as e:
            print(f"asr transcribe: {e}", file=sys.stderr)
            failed += 1
            continue
        t.key = key
        done.append(t)
        if not args.output:
            sys.stdout.write(format_transcripts([t], args.format))
            sys.stdout.flush()
    if args.output:
        write_text(args.output, format_transcripts(done, args.format))
    if failed:
        print(f"asr transcribe: {failed} of {failed + len(done)} input(s) failed", file=sys.stderr)
    return 1 if failed else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("transcribe", help="transcribe audio files with a trained model dir")
    p.add_argument("model_dir")
    p.add_argument("files", nargs="+", help="audio files, directories, wav.scp files, or - for stdin")
    p.add_argument("--decoder", choices=["greedy", "beam", "wfst"],
                   help="default: beam with --lm, wfst with --graph, else what --conf says, else greedy")
    p.add_argument("--graph", help="graph dir from 'asr make-graph' for the wfst decoder; implies --decoder wfst")
    p.add_argument("--conf", help="decoder config YAML (conf/decode_beam.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a decoder setting")
    p.add_argument("--lm", help="ARPA word n-gram LM; implies --decoder beam")
    p.add_argument("--format", choices=["text", "json", "ctm", "srt"], default="text")
    p.add_argument("-o", "--output", help="write here (atomically) instead of stdout")
    p.add_argument("--checkpoint", default="final.pt")
    p.add_argument("--device", default="auto",
                   help="where the model runs: cpu, cuda[:N], or auto (cuda when torch sees a GPU); search on the CPU")
    p.add_argument("--chunk-seconds", type=float, default=30.0, help="long audio is processed in chunks this long")
    p.add_argument(
        "--engine", default="eager", help="'eager', or a file from 'asr export' (.pt2, .onnx, or TorchScript .ts)"
    )
    p.add_argument("--align", action="store_true",
                   help="word times from a forced alignment of the hypothesis (as 'asr align') instead of its spikes")
    p.add_argument("--one-speaker", action="store_true",
                   help="the inputs share one speaker: a cmvn: speaker model normalises them with stats pooled "
                        "over all of them (as 'asr decode' with a data dir's utt2spk), not each file's own with "
                        "a global prior")
    p.set_defaults(func=_cmd_transcribe)
