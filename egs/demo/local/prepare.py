#!/usr/bin/env python3
"""Demo corpus (``local/synth.py`` output) -> Kaldi data dirs ``OUT/{train,dev,test}``.

Speakers are voices (accent + variant); utterance ids start with the voice, so Kaldi's sorting
rules hold. wav.scp paths are absolute, so the data dirs work from any directory.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from asr.datadir import write_data_dir
from asr.errors import AsrError, run_script


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("corpus", type=Path)
    p.add_argument("out", type=Path)
    args = p.parse_args(argv)
    prompts = args.corpus / "prompts.tsv"
    if not prompts.is_file():
        raise AsrError(f"{prompts}: no such file (run local/synth.py first)")
    sets: dict[str, dict[str, dict[str, str]]] = {}
    for n, line in enumerate(prompts.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split("\t")
        if len(fields) != 7:
            raise AsrError(f"{prompts}:{n}: expected 7 tab-separated fields")
        utt, voice, split, text = fields[0], fields[1], fields[2], fields[6]
        d = sets.setdefault(split, {"wav_scp": {}, "text": {}, "utt2spk": {}})
        d["wav_scp"][utt] = str((args.corpus / "wav" / voice / f"{utt}.wav").resolve())
        d["text"][utt] = text
        d["utt2spk"][utt] = voice
    for split, tables in sorted(sets.items()):
        write_data_dir(args.out / split, **tables)
        print(f"{args.out / split}: {len(tables['utt2spk'])} utterances, "
              f"{len(set(tables['utt2spk'].values()))} voices")
    return 0


if __name__ == "__main__":
    run_script(main, "prepare.py")
