#!/usr/bin/env python3
"""LibriSpeech subsets ``LibriSpeech/<subset>/<reader>/<chapter>/`` -> ``OUT/<subset with _>``.

Each chapter dir holds ``<reader>-<chapter>.trans.txt`` (``utt-id TRANSCRIPT`` lines) and one
``<utt-id>.flac`` per line. As in Kaldi's egs/librispeech, the speaker is ``<reader>-<chapter>``
(utterance ids start with it) and ``dev-clean`` becomes ``data/dev_clean``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from asr.datadir import write_data_dir
from asr.errors import AsrError, run_script


def prepare_subset(src: Path, dst: Path) -> int:
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
    write_data_dir(dst, wav_scp=wav, text=text, utt2spk=utt2spk)
    return len(utt2spk)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("corpus", type=Path, help="the LibriSpeech dir holding the subsets")
    p.add_argument("out", type=Path)
    p.add_argument("subsets", nargs="+", help="e.g. train-clean-100 dev-clean test-clean")
    args = p.parse_args(argv)
    for subset in args.subsets:
        src = args.corpus / subset
        if not src.is_dir():
            raise AsrError(f"{src}: no such directory (download it, or fix CORPUS_DIR / SUBSETS)")
        dst = args.out / subset.replace("-", "_")
        n = prepare_subset(src, dst)
        print(f"{dst}: {n} utterances")
    return 0


if __name__ == "__main__":
    run_script(main, "prepare.py")
