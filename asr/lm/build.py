"""``asr build-lm``: estimate a word n-gram LM with interpolated modified Kneser-Ney, write ARPA.

The estimation is :mod:`asr.lm.kneser_ney`, the file format :mod:`asr.lm.arpa`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from asr.errors import AsrError
from asr.lm.arpa import write_arpa
from asr.lm.kneser_ney import estimate

log = logging.getLogger(__name__)


def read_sentences(path: Path, has_ids: bool) -> list[list[str]]:
    """The non-empty lines of ``path`` as word lists, less a leading utterance id when ``has_ids``."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.split() for line in f]
    except FileNotFoundError:
        raise AsrError(f"{path}: no such text file") from None
    except UnicodeDecodeError:
        raise AsrError(f"{path}: not UTF-8 text") from None
    return [words[1:] if has_ids else words for words in lines if words[1 if has_ids else 0 :]]


def _cmd_build_lm(args: argparse.Namespace) -> int:
    src = Path(args.text)
    has_ids = {"yes": True, "no": False}.get(args.utt_ids)
    if src.is_dir():
        src = src / "text"
        has_ids = True if has_ids is None else has_ids
    if has_ids is None:  # a Kaldi data dir's text file starts each line with an utterance id
        has_ids = src.name == "text"
    sentences = read_sentences(src, has_ids)
    probs, backoffs = estimate(sentences, args.order)
    write_arpa(probs, backoffs, args.output)
    log.info(
        "wrote %s: order %d, %s n-grams from %d sentences",
        args.output,
        args.order,
        "/".join(str(len(p)) for p in probs),
        len(sentences),
    )
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("build-lm", help="estimate a modified Kneser-Ney word n-gram LM (ARPA)")
    p.add_argument("text", help="training text: a plain file of sentences, a Kaldi 'text' file or a data dir")
    p.add_argument("--order", type=int, default=3)
    p.add_argument("-o", "--output", required=True, help="ARPA file to write")
    p.add_argument(
        "--utt-ids",
        choices=["auto", "yes", "no"],
        default="auto",
        help="whether lines start with an utterance id (auto: yes for a file named 'text')",
    )
    p.set_defaults(func=_cmd_build_lm)
