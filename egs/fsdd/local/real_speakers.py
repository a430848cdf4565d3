#!/usr/bin/env python3
"""speechocean762 (train + test, 250 speakers) -> one data dir of extra real speakers for FSDD.

FSDD has five speakers; a model trained on four of them learns those voices, not the digits. The
speechocean762 corpus beside it has 250 other voices (Mandarin L1 adults and children) reading
English, 139 of its 1750 prompts digit strings ("THREE TWO TWO SEVEN"). Its audio is 16 kHz FLAC;
feature extraction resamples it to the recipe's 8 kHz. Speaker and utterance ids get the prefix
``so762-`` so they cannot meet FSDD's. ``--digits-only`` keeps only prompts made of digit words.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from asr.datadir import read_kv, write_data_dir
from asr.errors import AsrError, run_script

DIGITS = {"ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE"}
PREFIX = "so762-"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("corpus", type=Path, help="speechocean762 root holding train/ test/ WAVE/")
    p.add_argument("out", type=Path)
    p.add_argument("--digits-only", action="store_true", help="keep only prompts that are digit strings")
    args = p.parse_args(argv)
    corpus = args.corpus.resolve()
    wav, text, utt2spk = {}, {}, {}
    for split in ("train", "test"):
        src = corpus / split
        if not (src / "wav.scp").is_file():
            raise AsrError(f"{src}/wav.scp: no such file (is SO762_DIR the speechocean762 root?)")
        split_wav = read_kv(src / "wav.scp")
        split_spk = read_kv(src / "utt2spk")
        for utt, words in read_kv(src / "text").items():
            if args.digits_only and not set(words.split()) <= DIGITS:
                continue
            if utt not in split_wav or utt not in split_spk:
                raise AsrError(f"{src}: utterance {utt} has no wav.scp or utt2spk entry")
            path = split_wav[utt]
            # Kaldi sorts utterances by id and wants each speaker's ids contiguous: speaker first.
            new = f"{PREFIX}{split_spk[utt]}-{utt}"
            wav[new] = path if path.startswith("/") else str(corpus / path)
            text[new] = words
            utt2spk[new] = PREFIX + split_spk[utt]
    if not text:
        raise AsrError(f"{corpus}: no utterances selected")
    d = write_data_dir(args.out, wav_scp=wav, text=text, utt2spk=utt2spk)
    print(f"{d}: {len(text)} utterances, {len(set(utt2spk.values()))} speakers")
    return 0


if __name__ == "__main__":
    run_script(main, "real_speakers.py")
