"""Token tables: text <-> integer ids for CTC (blank = 0, ``<unk>`` = 1, then the units).

Two kinds of unit, both written as Kaldi-style ``tokens.txt`` (``symbol id`` per line):

- ``char``: the characters of the training text, with ``<space>`` as the word boundary (EESEN's
  char recipes); decoding joins characters and turns ``<space>`` back into " ".
- ``phone``: the phones of a lexicon (``word phone phone ...``); a word is encoded with its first
  pronunciation. The lexicon is copied next to ``tokens.txt`` so the table can encode on its own.
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from asr.atomic import write_text
from asr.datadir import read_kv
from asr.errors import AsrError

log = logging.getLogger(__name__)

BLANK, UNK, SPACE = "<blk>", "<unk>", "<space>"
BLANK_ID, UNK_ID = 0, 1


def read_lexicon(path: str | Path) -> dict[str, list[str]]:
    """``word -> phones`` of the first pronunciation of each word in a ``word p1 p2 ...`` file."""
    path = Path(path)
    if not path.is_file():
        raise AsrError(f"{path}: no such lexicon file")
    lexicon: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 2:
                raise AsrError(f"{path}:{n}: word {parts[0]} has no phones")
            lexicon.setdefault(parts[0], parts[1:])
    if not lexicon:
        raise AsrError(f"{path}: empty lexicon")
    return lexicon


class TokenTable:
    """Symbols indexed by id; ``symbols[0]`` is the CTC blank, ``symbols[1]`` is ``<unk>``."""

    def __init__(self, symbols: list[str], lexicon: dict[str, list[str]] | None = None):
        if symbols[:2] != [BLANK, UNK]:
            raise AsrError(f"token table must start with {BLANK} 0 and {UNK} 1, got {symbols[:2]}")
        if len(set(symbols)) != len(symbols):
            dup = next(s for s, c in Counter(symbols).items() if c > 1)
            raise AsrError(f"token table: duplicate symbol {dup!r}")
        self.symbols = list(symbols)
        self.ids = {s: i for i, s in enumerate(self.symbols)}
        self.lexicon = lexicon
        self.unit = "phone" if lexicon is not None else "char"
        if self.unit == "char" and SPACE not in self.ids:
            raise AsrError(f"char token table has no {SPACE}; a phone table needs its lexicon.txt")

    def __len__(self) -> int:
        return len(self.symbols)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TokenTable) and self.symbols == other.symbols and self.lexicon == other.lexicon

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

    # -- files ------------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path) -> TokenTable:
        """Read ``tokens.txt`` (``symbol id``; ids 0..V-1 in order); a phone table reads lexicon.txt beside it."""
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
        lexicon = None
        if SPACE not in symbols and (path.parent / "lexicon.txt").is_file():
            lexicon = read_lexicon(path.parent / "lexicon.txt")
        try:
            return cls(symbols, lexicon)
        except AsrError as e:
            raise AsrError(f"{path}: {e}") from None

    def save(self, lang_dir: str | Path) -> Path:
        """Write ``lang_dir/tokens.txt`` (and ``lexicon.txt`` for phones), atomically."""
        lang_dir = Path(lang_dir)
        lang_dir.mkdir(parents=True, exist_ok=True)
        write_text(lang_dir / "tokens.txt", "".join(f"{s} {i}\n" for i, s in enumerate(self.symbols)))
        if self.lexicon is not None:
            write_text(
                lang_dir / "lexicon.txt", "".join(f"{w} {' '.join(p)}\n" for w, p in sorted(self.lexicon.items()))
            )
        return lang_dir / "tokens.txt"

    # -- text <-> ids -----------------------------------------------------------------------------

    def units(self, text: str) -> list[str]:
        """The unit symbols of ``text`` before lookup (unknown chars/words kept as-is)."""
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
        """Join the symbols of ``ids`` (blanks skipped); chars join with ``<space>`` -> " ", phones with " "."""
        syms = [self.symbols[int(i)] for i in ids if int(i) != BLANK_ID]
        if self.lexicon is not None:
            return " ".join(syms)
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


def make_tokens(
    text_file: str | Path, lang_dir: str | Path, unit: str = "char", lexicon: str | Path | None = None
) -> TokenTable:
    """Build a token table from a Kaldi ``text`` file and write it into ``lang_dir``."""
    texts = read_kv(text_file)
    if not texts:
        raise AsrError(f"{text_file}: no transcripts")
    if unit == "char":
        table = TokenTable.from_texts(texts.values())
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
        raise AsrError(f"--unit {unit!r}: expected char or phone")
    table.save(lang_dir)
    return table


def _cmd_make_tokens(args: argparse.Namespace) -> int:
    table = make_tokens(args.text_file, args.lang_dir, args.unit, args.lexicon)
    print(f"{Path(args.lang_dir) / 'tokens.txt'}: {len(table)} tokens ({table.unit})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("make-tokens", help="build LANG_DIR/tokens.txt from a Kaldi text file (chars or phones)")
    p.add_argument("text_file", help="Kaldi text file: utt-id transcript")
    p.add_argument("lang_dir")
    p.add_argument("--unit", choices=["char", "phone"], default="char")
    p.add_argument("--lexicon", help="lexicon.txt (word phone phone ...), needed for --unit phone")
    p.set_defaults(func=_cmd_make_tokens)
