"""Word and character error rates, Kaldi style, computed through jiwer.

``asr score REF HYP`` aligns each utterance of the hypothesis file against the reference and writes
Kaldi's familiar reports (``wer``, ``errs.txt``, ``per_spk``, ...; see :mod:`asr.score_files`).
``asr compare REF HYP_A HYP_B`` runs a paired bootstrap between two systems.

Input files are Kaldi ``text`` files, ``utt-id word word ...``, read as UTF-8. Problems are logged
as one warning line naming file and line, and scoring goes on (``--strict`` makes them errors):

- bytes that are not UTF-8: the line is decoded with U+FFFD replacement characters;
- a duplicate utterance id: the first line wins;
- an id in HYP that is not in REF: ignored (listed in ``scores.json`` as ``extra``).

An id line with no words is a valid, empty hypothesis (or reference). An utterance in REF but
missing from HYP is scored as an empty hypothesis -- all deletions -- logged, and listed in
``wer``, ``errs.txt`` and ``scores.json``; it is never dropped (Kaldi compute-wer ``--mode=all``).

Normalisation (:class:`Normaliser`) is explicit and applied identically to REF and HYP, in order:

1. Unicode NFC (so composed and decomposed accents compare equal), split on any whitespace;
2. case: ``keep`` (default, like Kaldi compute-wer), ``upper`` or ``lower``;
3. with ``ignore_noise``: drop Kaldi noise tokens, i.e. any whole token in angle or square brackets
   (``<UNK>``, ``<unk>``, ``[NOISE]``, ``[laughter]``, ``<sil>``), and any token named in ``ignore``;
4. with ``strip_punct``: delete Unicode punctuation (categories P*) from the remaining tokens,
   except an apostrophe or hyphen between two letters/digits (``don't``, ``x-ray`` survive);
   tokens left empty disappear. Noise tokens are never punctuation-stripped, so ``[NOISE]`` is
   either ignored whole or kept whole.

WER counts words. CER runs jiwer's character alignment over the normalised words joined by one
space, so the space between words counts as a character (as ESPnet's ``<space>`` unit does).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path

import jiwer
import numpy as np

from asr.errors import AsrError

log = logging.getLogger(__name__)

EPS = "***"  # Kaldi align-text's --special-symbol for an empty side of an insertion/deletion
_NOISE_RE = re.compile(r"^(<[^<>\s]+>|\[[^\[\]\s]+\])$")
_KEEP_INSIDE = "'’-"


@dataclasses.dataclass
class Normaliser:
    """How REF and HYP text are normalised before alignment (see the module docstring)."""

    case: str = "keep"  # keep | upper | lower
    strip_punct: bool = False
    ignore_noise: bool = False
    ignore: tuple[str, ...] = ()  # extra tokens to drop, matched after case mapping

    def __post_init__(self) -> None:
        if self.case not in ("keep", "upper", "lower"):
            raise AsrError(f"normalisation case must be keep, upper or lower, not {self.case!r}")
        self._ignore = {self._case(w) for w in self.ignore}

    def _case(self, s: str) -> str:
        return s.upper() if self.case == "upper" else s.lower() if self.case == "lower" else s

    def __call__(self, text: str) -> list[str]:
        out = []
        for tok in unicodedata.normalize("NFC", text).split():
            tok = self._case(tok)
            if tok in self._ignore:
                continue
            if _NOISE_RE.match(tok):
                if not self.ignore_noise:
                    out.append(tok)
                continue
            if self.strip_punct:
                tok = _strip_punct(tok)
                if not tok:
                    continue
            out.append(tok)
        return out

    def describe(self) -> str:
        return (
            f"case={self.case} strip_punct={'yes' if self.strip_punct else 'no'} "
            f"ignore_noise={'yes' if self.ignore_noise else 'no'} ignore={','.join(self.ignore) or '-'}"
        )

    def to_dict(self) -> dict:
        return {"case": self.case, "strip_punct": self.strip_punct, "ignore_noise": self.ignore_noise,
                "ignore": list(self.ignore)}


def _strip_punct(tok: str) -> str:
    keep = []
    for i, c in enumerate(tok):
        if unicodedata.category(c).startswith("P"):
            inside = 0 < i < len(tok) - 1 and tok[i - 1].isalnum() and tok[i + 1].isalnum()
            if not (c in _KEEP_INSIDE and inside):
                continue
        keep.append(c)
    return "".join(keep)


def read_text(
    path: str | Path, problems: list[str] | None = None, line_numbers: dict[str, int] | None = None
) -> dict[str, str]:
    """Read a Kaldi text-like file ``key rest-of-line`` into an ordered dict.

    Each problem (non-UTF-8 bytes, duplicate key) is appended to ``problems`` as one line naming
    ``file:line``; blank lines are skipped silently. A key with nothing after it maps to "".
    ``line_numbers``, when given, receives each kept key's line number.
    """
    path = Path(path)
    problems = problems if problems is not None else []
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise AsrError(f"{path}: cannot read: {e.strerror or e}") from None
    out: dict[str, str] = {}
    for lineno, bline in enumerate(raw.splitlines(), start=1):
        try:
            line = bline.decode("utf-8")
        except UnicodeDecodeError as e:
            problems.append(f"{path}:{lineno}: not UTF-8 (byte 0x{bline[e.start]:02x} at column "
                            f"{e.start + 1}); decoded with replacement characters")
            line = bline.decode("utf-8", errors="replace")
        parts = line.strip().split(maxsplit=1)
        if not parts:
            continue
        key = parts[0]
        if key in out:
            problems.append(f"{path}:{lineno}: duplicate id {key}; keeping its first line")
            continue
        out[key] = parts[1] if len(parts) > 1 else ""
        if line_numbers is not None:
            line_numbers[key] = lineno
    return out


@dataclasses.dataclass
class UttScore:
    """One utterance's alignment: ``ops`` holds (ref_token, hyp_token, op) with op in C S I D."""

    utt: str
    ref: list[str]
    hyp: list[str]
    ops: list[tuple[str, str, str]]
    cor: int
    sub: int
    ins: int
    dels: int
    char_errors: int
    ref_chars: int
    missing: bool = False
    spk: str | None = None

    @property
    def errors(self) -> int:
        return self.sub + self.ins + self.dels


@dataclasses.dataclass
class ScoreResult:
    """Everything ``asr score`` knows; ``utts`` is in REF order."""

    utts: list[UttScore]
    normaliser: Normaliser
    ref_path: str = ""
    hyp_path: str = ""
    extra: list[str] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)

    def _sum(self, name: str) -> int:
        return sum(getattr(u, name) for u in self.utts)

    @property
    def missing(self) -> list[str]:
        return [u.utt for u in self.utts if u.missing]

    @property
    def ref_words(self) -> int:
        return sum(len(u.ref) for u in self.utts)

    def totals(self) -> dict[str, int]:
        """Corpus counts: words, errors, ins/del/sub, sentences, sentence errors, chars, char errors."""
        return {
            "words": self.ref_words,
            "errors": self._sum("errors"),
            "ins": self._sum("ins"),
            "del": self._sum("dels"),
            "sub": self._sum("sub"),
            "cor": self._sum("cor"),
            "sentences": len(self.utts),
            "sentence_errors": sum(1 for u in self.utts if u.errors > 0),
            "chars": self._sum("ref_chars"),
            "char_errors": self._sum("char_errors"),
        }

    def arrays(self, unit: str = "word") -> tuple[np.ndarray, np.ndarray]:
        """Per-utterance ``(errors (N,), ref_lens (N,))`` for the bootstrap; unit is word or char."""
        if unit == "char":
            return (np.array([u.char_errors for u in self.utts], dtype=np.int64),
                    np.array([u.ref_chars for u in self.utts], dtype=np.int64))
        return (np.array([u.errors for u in self.utts], dtype=np.int64),
                np.array([len(u.ref) for u in self.utts], dtype=np.int64))


def rate(errors: int, total: int) -> float:
    """Error rate in percent; 0 errors of 0 is 0, k > 0 errors of 0 is inf (as Kaldi would print)."""
    if total == 0:
        return 0.0 if errors == 0 else float("inf")
    return 100.0 * errors / total


def _ops_from_chunks(ref: list[str], hyp: list[str], chunks: Iterable) -> list[tuple[str, str, str]]:
    ops = []
    for c in chunks:
        r, h = ref[c.ref_start_idx:c.ref_end_idx], hyp[c.hyp_start_idx:c.hyp_end_idx]
        if c.type == "equal":
            ops += [(a, b, "C") for a, b in zip(r, h, strict=True)]
        elif c.type == "substitute":
            ops += [(a, b, "S") for a, b in zip(r, h, strict=True)]
        elif c.type == "delete":
            ops += [(a, EPS, "D") for a in r]
        elif c.type == "insert":
            ops += [(EPS, b, "I") for b in h]
    return ops


def score(
    ref: dict[str, str],
    hyp: dict[str, str],
    normaliser: Normaliser | None = None,
    utt2spk: dict[str, str] | None = None,
) -> ScoreResult:
    """Align every REF utterance with its HYP (empty when missing) and count errors.

    ``ref``/``hyp`` map utterance id -> raw text. Words are aligned by ``jiwer.process_words`` and
    characters by ``jiwer.process_characters``, so totals equal jiwer's on the normalised text. An
    empty reference (e.g. only noise tokens under ``ignore_noise``) scores its hypothesis as
    insertions, 0 errors when that is empty too; any jiwer >= 3.0 works.
    """
    norm = normaliser or Normaliser()
    ids = list(ref)
    refs = [norm(ref[u]) for u in ids]
    hyps = [norm(hyp.get(u, "")) for u in ids]
    result = ScoreResult(utts=[], normaliser=norm, extra=[u for u in hyp if u not in ref])
    if not ids:
        return result
    # jiwer 3.x raises on an empty reference (which --ignore-noise easily makes), so pairs with an
    # empty side never reach it: their alignment is all insertions or all deletions anyway.
    aligned = [i for i in range(len(ids)) if refs[i] and hyps[i]]
    at = {i: k for k, i in enumerate(aligned)}
    if aligned:
        pairs = [" ".join(refs[i]) for i in aligned], [" ".join(hyps[i]) for i in aligned]
        words, chars = jiwer.process_words(*pairs), jiwer.process_characters(*pairs)
    for i, u in enumerate(ids):
        if i in at:
            j = at[i]
            ops = _ops_from_chunks(refs[i], hyps[i], words.alignments[j])
            char_err = sum(max(c.ref_end_idx - c.ref_start_idx, c.hyp_end_idx - c.hyp_start_idx)
                           for c in chars.alignments[j] if c.type != "equal")
            ref_chars = len(chars.references[j])
        else:
            ops = [(w, EPS, "D") for w in refs[i]] + [(EPS, w, "I") for w in hyps[i]]
            ref_chars = len(" ".join(refs[i]))
            char_err = ref_chars + len(" ".join(hyps[i]))  # one side is empty
        counts = {k: sum(1 for o in ops if o[2] == k) for k in "CSID"}
        result.utts.append(UttScore(
            utt=u, ref=refs[i], hyp=hyps[i], ops=ops, cor=counts["C"], sub=counts["S"],
            ins=counts["I"], dels=counts["D"], char_errors=char_err,
            ref_chars=ref_chars, missing=u not in hyp,
            spk=(utt2spk.get(u, "<unknown>") if utt2spk is not None else None),
        ))
    return result


def score_files(
    ref_path: str | Path,
    hyp_path: str | Path,
    normaliser: Normaliser | None = None,
    utt2spk_path: str | Path | None = None,
    strict: bool = False,
) -> ScoreResult:
    """Read REF/HYP (and utt2spk) text files, report each input problem as one line, and score."""
    problems: list[str] = []
    ref = read_text(ref_path, problems)
    hyp_lines: dict[str, int] = {}
    hyp = read_text(hyp_path, problems, hyp_lines)
    if not ref:
        raise AsrError(f"{ref_path}: no utterances to score")
    utt2spk = None
    if utt2spk_path is not None:
        utt2spk = {k: (v.split() or ["<unknown>"])[0] for k, v in read_text(utt2spk_path, problems).items()}
        problems += [f"{utt2spk_path}: utterance {u} has no speaker" for u in ref if u not in utt2spk]
    extra = [u for u in hyp if u not in ref]
    problems += [f"{hyp_path}:{hyp_lines[u]}: id {u} is not in {ref_path}; ignored" for u in extra]
    missing = [u for u in ref if u not in hyp]
    problems += [f"{hyp_path}: utterance {u} of {ref_path} has no hypothesis; scored as all deletions"
                 for u in missing]
    if strict and problems:
        raise AsrError(problems[0] + (f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""))
    for p in problems:
        log.warning("%s", p)
    result = score(ref, hyp, normaliser, utt2spk)
    result.ref_path, result.hyp_path, result.problems = str(ref_path), str(hyp_path), problems
    return result


def kaldi_line(label: str, errors: int, total: int, ins: int, dels: int, sub: int) -> str:
    """Kaldi compute-wer's summary: ``%WER 12.34 [ 45 / 365, 3 ins, 10 del, 32 sub ]``."""
    return f"%{label} {rate(errors, total):.2f} [ {errors} / {total}, {ins} ins, {dels} del, {sub} sub ]"


def ci_line(label: str, lo: float, hi: float, n_resamples: int, seed: int) -> str:
    """The interval line written under the %WER line; phrased so Kaldi's best_wer.sh ignores it."""
    return (f"%{label}-CI95 [ {100 * lo:.2f} , {100 * hi:.2f} ] bootstrap over utterances, "
            f"{n_resamples} resamples, seed {seed}")
