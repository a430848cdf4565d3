"""Token tables: text <-> integer ids for CTC (blank = 0, ``<unk>`` = 1, then the units).

Three kinds of unit, all written as Kaldi-style ``tokens.txt`` (``symbol id`` per line):

- ``char``: the characters of the training text, with ``<space>`` as the word boundary (EESEN's
  char recipes); decoding joins characters and turns ``<space>`` back into " ".
- ``phone``: the phones of a lexicon (``word phone phone ...``); a word is encoded with its first
  pronunciation. The lexicon is copied next to ``tokens.txt`` so the table can encode on its own.
- ``bpe``: sentencepiece pieces (BPE or unigram) trained on the transcripts; a piece starting with
  ``▁`` begins a word. ``bpe.model`` lies next to ``tokens.txt`` for the same reason as the lexicon.
  sentencepiece's own id 0 is its ``<unk>``, so piece ``i`` of the model is our id ``i + 1`` and
  blank takes id 0; its bos/eos are switched off, as CTC has no use for them.
"""

from __future__ import annotations

import argparse
import io
import logging
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from asr.atomic import atomic_open, write_text
from asr.datadir import read_kv
from asr.errors import AsrError

log = logging.getLogger(__name__)

BLANK, UNK, SPACE = "<blk>", "<unk>", "<space>"
BLANK_ID, UNK_ID = 0, 1
WORD_START = "\u2581"  # sentencepiece's word-start marker "▁"
BPE_MODEL = "bpe.model"


def _spm():
    try:
        import sentencepiece
    except ImportError:
        raise AsrError("BPE tokens need sentencepiece: pip install sentencepiece") from None
    return sentencepiece


def _one_text(text: str) -> str:
    # The char and phone tables split on any whitespace; sentencepiece must see the same words.
    return " ".join(text.split())


def read_pronunciations(path: str | Path, strip_stress: bool = False) -> dict[str, list[list[str]]]:
    """``word -> [phones, ...]``: the distinct pronunciations of each word of a ``word p1 p2 ...`` file, in
    file order. ``strip_stress`` drops a phone's trailing stress digit (CMUdict's ``AH0`` -> ``AH``)."""
    path = Path(path)
    if not path.is_file():
        raise AsrError(f"{path}: no such lexicon file")
    prons: dict[str, list[list[str]]] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 2:
                raise AsrError(f"{path}:{n}: word {parts[0]} has no phones")
            pron = [p[:-1] if p[-1].isdigit() else p for p in parts[1:]] if strip_stress else parts[1:]
            if pron not in prons.setdefault(parts[0], []):
                prons[parts[0]].append(pron)
    if not prons:
        raise AsrError(f"{path}: empty lexicon")
    return prons


def read_lexicon(path: str | Path) -> dict[str, list[str]]:
    """``word -> phones`` of the first pronunciation of each word (the one encoding uses)."""
    return {w: p[0] for w, p in read_pronunciations(path).items()}


class TokenTable:
    """Symbols indexed by id; ``symbols[0]`` is the CTC blank, ``symbols[1]`` is ``<unk>``."""

    def __init__(self, symbols: list[str], lexicon: dict[str, list[str]] | None = None, bpe_model: bytes | None = None):
        if symbols[:2] != [BLANK, UNK]:
            raise AsrError(f"token table must start with {BLANK} 0 and {UNK} 1, got {symbols[:2]}")
        if len(set(symbols)) != len(symbols):
            dup = next(s for s, c in Counter(symbols).items() if c > 1)
            raise AsrError(f"token table: duplicate symbol {dup!r}")
        self.symbols = list(symbols)
        self.ids = {s: i for i, s in enumerate(self.symbols)}
        self.lexicon = lexicon if bpe_model is None else None
        self.bpe_model, self.sp = bpe_model, None
        self.unit = "bpe" if bpe_model is not None else "phone" if lexicon is not None else "char"
        if bpe_model is not None:
            self.sp = _spm().SentencePieceProcessor(model_proto=bpe_model)
            sp = self.sp
            if sp.unk_id() != 0 or sp.bos_id() >= 0 or sp.eos_id() >= 0 or sp.pad_id() >= 0:
                raise AsrError(f"{BPE_MODEL}: expected unk id 0 and no bos/eos/pad (train it with 'asr make-tokens')")
            pieces = [sp.id_to_piece(i) for i in range(1, sp.get_piece_size())]
            if self.symbols[2:] != pieces:
                raise AsrError(f"token table does not match its {BPE_MODEL} (rerun 'asr make-tokens')")
        elif self.unit == "char" and SPACE not in self.ids:
            raise AsrError(f"char token table has no {SPACE}; a phone table needs its lexicon.txt")

    def __len__(self) -> int:
        return len(self.symbols)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, TokenTable)
            and self.symbols == other.symbols
            and self.lexicon == other.lexicon
            and self.bpe_model == other.bpe_model
        )

    # -- building ---------------------------------------------------------------------------------

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> TokenTable:
        """Char table from transcripts: every character seen, sorted, after blank/unk/space."""
        chars: set[str] = set()
        for t in texts:
            chars.update(t.replace(" ", "").replace("\t", ""))
        return cls([BLANK, UNK, SPACE, *sorted(chars)])

    @classmethod
    def from_lexicon(cls, lexicon: dict[str, list[str]]) -> TokenTable:
        """Phone table: every phone of the lexicon, sorted, after blank/unk."""
        phones = sorted({p for prons in lexicon.values() for p in prons} - {BLANK, UNK})
        return cls([BLANK, UNK, *phones], lexicon=lexicon)

    @classmethod
    def from_bpe_model(cls, bpe_model: bytes) -> TokenTable:
        """Piece table of a sentencepiece model (unk id 0, no bos/eos): blank, then its pieces in order."""
        sp = _spm().SentencePieceProcessor(model_proto=bpe_model)
        return cls([BLANK, UNK, *(sp.id_to_piece(i) for i in range(1, sp.get_piece_size()))], bpe_model=bpe_model)

    # -- files ------------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path) -> TokenTable:
        """Read ``tokens.txt`` (``symbol id``; ids 0..V-1 in order); a phone table reads lexicon.txt beside it,
        a piece table bpe.model."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokens.txt"
        if not path.is_file():
            raise AsrError(f"{path}: no such token table (run 'asr make-tokens')")
        symbols: list[str] = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) != 2 or not parts[1].isdigit() or int(parts[1]) != len(symbols):
                    raise AsrError(f"{path}:{n}: expected 'symbol {len(symbols)}', got {line.strip()!r}")
                symbols.append(parts[0])
        lexicon, bpe_model = None, None
        # A lang dir may keep a stale lexicon.txt or bpe.model from an earlier make-tokens: the pieces
        # (▁-words) in tokens.txt say which of the two belongs to it.
        if SPACE not in symbols and any(s.startswith(WORD_START) for s in symbols):
            if not (path.parent / BPE_MODEL).is_file():
                raise AsrError(f"{path}: a piece table needs its {BPE_MODEL} beside it (rerun 'asr make-tokens')")
            bpe_model = (path.parent / BPE_MODEL).read_bytes()
        elif SPACE not in symbols and (path.parent / "lexicon.txt").is_file():
            lexicon = read_lexicon(path.parent / "lexicon.txt")
        try:
            return cls(symbols, lexicon, bpe_model)
        except (AsrError, RuntimeError) as e:  # sentencepiece raises RuntimeError on a corrupt model
            raise AsrError(f"{path}: {str(e).splitlines()[0]}") from None

    def save(self, lang_dir: str | Path) -> Path:
        """Write ``lang_dir/tokens.txt`` (and ``lexicon.txt`` for phones, ``bpe.model`` + ``bpe.vocab`` for
        pieces), atomically."""
        lang_dir = Path(lang_dir)
        lang_dir.mkdir(parents=True, exist_ok=True)
        if self.sp is not None:
            # The model goes first: a crash in between leaves a tokens.txt that load() reports as not
            # matching, never a silently wrong pairing.
            with atomic_open(lang_dir / BPE_MODEL, "wb", encoding=None) as f:
                f.write(self.bpe_model)
            sp = self.sp
            write_text(
                lang_dir / "bpe.vocab",
                "".join(f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(sp.get_piece_size())),
            )
        write_text(lang_dir / "tokens.txt", "".join(f"{s} {i}\n" for i, s in enumerate(self.symbols)))
        if self.lexicon is not None:
            write_text(
                lang_dir / "lexicon.txt", "".join(f"{w} {' '.join(p)}\n" for w, p in sorted(self.lexicon.items()))
            )
        return lang_dir / "tokens.txt"

    # -- text <-> ids -----------------------------------------------------------------------------

    def units(self, text: str) -> list[str]:
        """The unit symbols of ``text`` before lookup (unknown chars/words kept as-is)."""
        if self.sp is not None:
            return self.sp.encode(_one_text(text), out_type=str)
        words = text.split()
        if self.lexicon is not None:
            out: list[str] = []
            for w in words:
                out.extend(self.lexicon.get(w, [UNK]))
            return out
        out = []
        for i, w in enumerate(words):
            if i:
                out.append(SPACE)
            out.extend(w)
        return out

    def encode_counting(self, text: str) -> tuple[list[int], int]:
        """``(ids, n_unknown)``: ids of ``text`` with uncovered chars / OOV words mapped to ``<unk>``."""
        if self.sp is not None:
            # Deterministic segmentation (no sampling): the one the decoder's words are made of.
            ids = [i + 1 for i in self.sp.encode(_one_text(text))]
            return ids, ids.count(UNK_ID)
        ids, unknown = [], 0
        for u in self.units(text):
            i = self.ids.get(u, UNK_ID)
            unknown += i == UNK_ID
            ids.append(i)
        return ids, unknown

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; what the table does not cover becomes ``<unk>`` (id 1)."""
        return self.encode_counting(text)[0]

    def decode(self, ids: Iterable[int]) -> str:
        """Join the symbols of ``ids`` (blanks skipped); chars join with ``<space>`` -> " ", phones with " ",
        pieces with a word break before each ``▁``."""
        syms = [self.symbols[int(i)] for i in ids if int(i) != BLANK_ID]
        if self.lexicon is not None:
            return " ".join(syms)
        if self.sp is not None:
            return " ".join("".join(syms).replace(WORD_START, " ").split())
        return " ".join("".join(syms).replace(SPACE, " ").split())


def check_coverage(tokens: TokenTable, texts: dict[str, str], where: str, max_unk_fraction: float = 0.05) -> None:
    """Warn with a count when some of ``texts`` maps to ``<unk>``; raise AsrError when too much does."""
    total = unknown = 0
    missing: Counter[str] = Counter()
    for text in texts.values():
        for u in tokens.units(text):
            total += 1
            if u not in tokens.ids or u == UNK:
                unknown += 1
                missing[u] += 1
    if not unknown:
        return
    examples = ", ".join(repr(s) for s, _ in missing.most_common(5))
    msg = (
        f"{where}: {unknown} of {total} units ({100.0 * unknown / max(total, 1):.1f}%) are not in the token "
        f"table and become {UNK}, e.g. {examples}"
    )
    if unknown > max_unk_fraction * total:
        raise AsrError(msg + "; the tokens do not cover this text (rebuild them with 'asr make-tokens')")
    log.warning(msg)


def train_bpe(texts: Iterable[str], vocab_size: int, model_type: str = "bpe") -> bytes:
    """A sentencepiece model (serialized) of ``vocab_size`` pieces, its ``<unk>`` included, trained on ``texts``."""
    spm = _spm()
    if vocab_size < 2:
        raise AsrError(f"--vocab-size {vocab_size}: need at least 2 (<unk> and one piece)")
    out = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter([_one_text(t) for t in texts]),
            model_writer=out,
            model_type=model_type,
            vocab_size=vocab_size,
            # Every character of the transcripts gets a piece, so training text never maps to <unk>.
            character_coverage=1.0,
            # Text stays as written (no NFKC), so decode(encode(text)) gives the text back exactly.
            normalization_rule_name="identity",
            unk_id=0,
            bos_id=-1,
            eos_id=-1,
            pad_id=-1,
            unk_piece=UNK,
            max_sentence_length=1 << 20,
            # The thread count is stored in the model: a fixed one keeps bpe.model reproducible.
            num_threads=4,
            minloglevel=2,
        )
    except RuntimeError as e:
        msg = str(e).splitlines()[0]
        raise AsrError(f"sentencepiece ({model_type}, --vocab-size {vocab_size}): {msg.split('] ')[-1]}") from None
    return out.getvalue()


def make_tokens(
    text_file: str | Path,
    lang_dir: str | Path,
    unit: str = "char",
    lexicon: str | Path | None = None,
    vocab_size: int | None = None,
) -> TokenTable:
    """Build a token table from a Kaldi ``text`` file and write it into ``lang_dir``.

    ``unit`` ``bpe`` or ``unigram`` trains a sentencepiece model of ``vocab_size`` pieces (its
    ``<unk>`` included; tokens.txt adds the blank) on the transcripts.
    """
    texts = read_kv(text_file)
    if not texts:
        raise AsrError(f"{text_file}: no transcripts")
    if unit == "char":
        table = TokenTable.from_texts(texts.values())
    elif unit in ("bpe", "unigram"):
        if vocab_size is None:
            raise AsrError(f"--unit {unit} needs --vocab-size N")
        try:
            table = TokenTable.from_bpe_model(train_bpe(texts.values(), vocab_size, unit))
        except AsrError as e:
            raise AsrError(f"{text_file}: {e}") from None
    elif unit == "phone":
        if lexicon is None:
            raise AsrError("--unit phone needs --lexicon lexicon.txt")
        table = TokenTable.from_lexicon(read_lexicon(lexicon))
        oov = Counter(w for t in texts.values() for w in t.split() if w not in table.lexicon)
        if oov:
            log.warning(
                "%s: %d word token(s) not in %s become %s, e.g. %s",
                text_file,
                sum(oov.values()),
                lexicon,
                UNK,
                ", ".join(w for w, _ in oov.most_common(5)),
            )
    else:
        raise AsrError(f"--unit {unit!r}: expected char, phone, bpe or unigram")
    table.save(lang_dir)
    if unit == "phone":
        # Every pronunciation, not just the first that encoding uses: make-graph's L takes them all.
        # Per word the source order is kept, so the first pronunciation read back stays the same.
        prons = read_pronunciations(lexicon)
        lines = [f"{w} {' '.join(p)}\n" for w in sorted(prons) for p in prons[w]]
        write_text(Path(lang_dir) / "lexicon.txt", "".join(lines))
    return table


def _cmd_make_tokens(args: argparse.Namespace) -> int:
    table = make_tokens(args.text_file, args.lang_dir, args.unit, args.lexicon, args.vocab_size)
    print(f"{Path(args.lang_dir) / 'tokens.txt'}: {len(table)} tokens ({table.unit})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "make-tokens", help="build LANG_DIR/tokens.txt from a Kaldi text file (chars, phones or BPE pieces)"
    )
    p.add_argument("text_file", help="Kaldi text file: utt-id transcript")
    p.add_argument("lang_dir")
    p.add_argument(
        "--unit",
        choices=["char", "phone", "bpe", "unigram"],
        default="char",
        help="bpe/unigram: train a sentencepiece model, saved as LANG_DIR/bpe.model",
    )
    p.add_argument("--lexicon", help="lexicon.txt (word phone phone ...), needed for --unit phone")
    p.add_argument(
        "--vocab-size", type=int, help="sentencepiece pieces incl. <unk> (tokens.txt adds the blank); bpe/unigram"
    )
    p.set_defaults(func=_cmd_make_tokens)
