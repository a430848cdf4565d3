#!/usr/bin/env python3
"""Kaldi's yesno corpus ``waves_yesno/{0|1}_..._{0|1}.wav`` -> ``OUT/{train,test}``.

The file name is the transcript (1 = YES, 0 = NO). The split is Kaldi's egs/yesno: the 31 files
whose name starts with 0 train, the 29 starting with 1 test. One speaker, so utt2spk maps each
file to ``global`` like Kaldi; the utterance id is the file name without ``.wav``.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from asr.datadir import write_data_dir
from asr.errors import AsrError, run_script

NAME = re.compile(r"^[01](_[01]){7}\.wav$")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("corpus", type=Path, help="the waves_yesno directory")
    p.add_argument("out", type=Path)
    args = p.parse_args(argv)
    if not args.corpus.is_dir():
        raise AsrError(f"{args.corpus}: no such directory")
    sets: dict[str, dict[str, dict[str, str]]] = {}
    for wav in sorted(args.corpus.iterdir()):
        if not NAME.match(wav.name):
            continue  # README
        utt = wav.name[:-4]
        name = "train" if utt.startswith("0") else "test"
        d = sets.setdefault(name, {"wav_scp": {}, "text": {}, "utt2spk": {}})
        d["wav_scp"][utt] = str(wav.resolve())
        d["text"][utt] = " ".join("YES" if b == "1" else "NO" for b in utt.split("_"))
        d["utt2spk"][utt] = "global"
    if set(sets) != {"train", "test"}:
        raise AsrError(f"{args.corpus}: expected yesno wav files starting with 0 and 1")
    for name, tables in sorted(sets.items()):
        write_data_dir(args.out / name, **tables)
        print(f"{args.out / name}: {len(tables['utt2spk'])} utterances")
    return 0


if __name__ == "__main__":
    run_script(main, "prepare.py")
