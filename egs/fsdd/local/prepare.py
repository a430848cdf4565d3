#!/usr/bin/env python3
"""Free Spoken Digit Dataset ``recordings/{digit}_{speaker}_{index}.wav`` -> Kaldi data dirs.

Two splits, both written on every run:

- official (``train``, ``dev``, ``test``): index 0-4 is test, as upstream says; 5-9 of every
  speaker is our dev set (upstream has none), 10-49 train.
- leave-speakers-out (``train_spk``, ``dev_spk``, ``test_spk``; ``--spk-suffix`` renames them): every
  recording of the ``--test-speakers`` is test; of the others, index 0-4 is dev and 5-49 train.

Utterance ids are ``{speaker}_{digit}_{index:02d}`` so they sort by speaker (Kaldi's rule);
transcripts are the digit's English word in upper case.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from asr.datadir import write_data_dir
from asr.errors import AsrError, run_script

WORDS = ["ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE"]
NAME = re.compile(r"^(\d)_([a-z]+)_(\d+)\.wav$")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("corpus", type=Path, help="dir holding recordings/")
    p.add_argument("out", type=Path)
    p.add_argument("--test-speakers", default="theo", help="comma-separated, for the *_spk split")
    p.add_argument("--spk-suffix", default="_spk",
                   help="name of the leave-speakers-out sets: train<suffix>, dev<suffix>, test<suffix>")
    args = p.parse_args(argv)
    rec = args.corpus / "recordings"
    if not rec.is_dir():
        raise AsrError(f"{rec}: no such directory (is CORPUS_DIR the FSDD root?)")
    test_spk = set(args.test_speakers.split(","))
    sets: dict[str, dict[str, dict[str, str]]] = {}
    speakers = set()
    for wav in sorted(rec.iterdir()):
        m = NAME.match(wav.name)
        if not m:
            continue
        digit, spk, index = int(m[1]), m[2], int(m[3])
        speakers.add(spk)
        utt = f"{spk}_{digit}_{index:02d}"
        official = "test" if index < 5 else "dev" if index < 10 else "train"
        by_spk = ("test" if spk in test_spk else "dev" if index < 5 else "train") + args.spk_suffix
        for name in (official, by_spk):
            d = sets.setdefault(name, {"wav_scp": {}, "text": {}, "utt2spk": {}})
            d["wav_scp"][utt] = str(wav.resolve())
            d["text"][utt] = WORDS[digit]
            d["utt2spk"][utt] = spk
    if not sets:
        raise AsrError(f"{rec}: no {{digit}}_{{speaker}}_{{index}}.wav files")
    if not test_spk <= speakers:
        raise AsrError(f"--test-speakers {args.test_speakers}: not in the corpus ({', '.join(sorted(speakers))})")
    for name, tables in sorted(sets.items()):
        write_data_dir(args.out / name, **tables)
        n_spk = len(set(tables["utt2spk"].values()))
        print(f"{args.out / name}: {len(tables['utt2spk'])} utterances, {n_spk} speakers")
    return 0


if __name__ == "__main__":
    run_script(main, "prepare.py")
