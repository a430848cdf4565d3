#!/usr/bin/env python3
"""LibriSpeech subsets ``LibriSpeech/<subset>/<reader>/<chapter>/`` -> ``OUT/<subset with _>``.

Each chapter dir holds ``<reader>-<chapter>.trans.txt`` (``utt-id TRANSCRIPT`` lines) and one
``<utt-id>.flac`` per line. As in Kaldi's egs/librispeech, the speaker is ``<reader>-<chapter>``
(utterance ids start with it) and ``dev-clean`` becomes ``data/dev_clean``.

With ``--lexicon librispeech-lexicon.txt`` (OpenSLR 11: ``WORD<tab>PH PH ...``, CMU phones with
stress digits) for phone units, the lexicon loses its stress digits (AH0/AH1 -> AH: 39 phones) and
becomes ``OUT/local/lexicon.txt``, and each set gets a twin ``<set>_phone`` (text = the first
pronunciation of every word, utt2spk) to score phone error rate against. A transcript word the
lexicon lacks is ``<unk>`` there (counted on stdout), as make-tokens encodes it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from asr.atomic import write_text
from asr.datadir import write_data_dir
from asr.errors import AsrError, run_script
from asr.tokens import UNK, read_pronunciations


def phone_texts(text: dict[str, str], lexicon: dict[str, list[list[str]]]) -> tuple[dict[str, str], int]:
    """utt -> the first pronunciation of each of its words (``<unk>`` for a word not in ``lexicon``), and
    how many words were not."""
    out, oov = {}, 0
    for utt, words in text.items():
        phones = []
        for w in words.split():
            prons = lexicon.get(w)
            oov += prons is None
            phones.extend(prons[0] if prons else [UNK])
        out[utt] = " ".join(phones)
    return out, oov


def read_subset(src: Path) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """``(wav, text, utt2spk)`` of one subset dir."""
    wav, text, utt2spk = {}, {}, {}
    for trans in sorted(src.glob("*/*/*.trans.txt")):
        for n, line in enumerate(trans.read_text(encoding="utf-8").splitlines(), 1):
            parts = line.split(maxsplit=1)
            if not parts:
                continue
            utt = parts[0]
            flac = trans.parent / f"{utt}.flac"
            if not flac.is_file():
                raise AsrError(f"{trans}:{n}: {flac.name} not found")
            reader, chapter = utt.split("-")[:2]
            wav[utt], text[utt] = str(flac.resolve()), parts[1] if len(parts) > 1 else ""
            utt2spk[utt] = f"{reader}-{chapter}"
    if not utt2spk:
        raise AsrError(f"{src}: no <reader>/<chapter>/*.trans.txt found")
    return wav, text, utt2spk


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("corpus", type=Path, help="the LibriSpeech dir holding the subsets")
    p.add_argument("out", type=Path)
    p.add_argument("subsets", nargs="+", help="e.g. train-clean-100 dev-clean test-clean")
    p.add_argument("--lexicon", type=Path, help="librispeech-lexicon.txt: also OUT/local/lexicon.txt, <set>_phone")
    args = p.parse_args(argv)
    lexicon = None
    if args.lexicon is not None:
        lexicon = read_pronunciations(args.lexicon, strip_stress=True)
        lines = [f"{w} {' '.join(pron)}" for w in sorted(lexicon) for pron in lexicon[w]]
        write_text(args.out / "local" / "lexicon.txt", "\n".join(lines) + "\n")
        print(f"{args.out / 'local' / 'lexicon.txt'}: {len(lexicon)} words, {len(lines)} pronunciations, "
              f"{len({p for prons in lexicon.values() for pron in prons for p in pron})} phones")
    for subset in args.subsets:
        src = args.corpus / subset
        if not src.is_dir():
            raise AsrError(f"{src}: no such directory (download it, or fix CORPUS_DIR / SUBSETS)")
        dst = args.out / subset.replace("-", "_")
        wav, text, utt2spk = read_subset(src)
        write_data_dir(dst, wav_scp=wav, text=text, utt2spk=utt2spk)
        print(f"{dst}: {len(utt2spk)} utterances")
        if lexicon is not None:
            # A data dir of its own, so scoring and `asr results` name the set <set>_phone.
            phones, oov = phone_texts(text, lexicon)
            write_data_dir(f"{dst}_phone", text=phones, utt2spk=utt2spk)
            print(f"{dst}_phone: phone references{f', {oov} word(s) not in the lexicon as {UNK}' if oov else ''}")
    return 0


if __name__ == "__main__":
    run_script(main, "prepare.py")
