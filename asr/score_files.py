"""The report files ``asr score`` writes into a decode dir, in Kaldi's formats where Kaldi has one.

- ``wer``: compute-wer's ``%WER`` / ``%SER`` / ``Scored N sentences, M not present in hyp.`` lines,
  then ``%WER-CI95 [ lo , hi ]`` (95 % bootstrap interval over utterances), the utterances missing
  from HYP, and the normalisation used. ``grep WER .../wer | utils/best_wer.sh`` still works.
- ``cer``: the same for characters (``%CER``), always written.
- ``errs.txt``: per-utterance alignment like Kaldi's ``wer_per_utt_details.pl`` (``utt ref``,
  ``utt hyp``, ``utt op``, ``utt #csid`` lines, ``***`` for the empty side), worst utterance first:
  most errors, then highest per-utterance error rate, then id.
- ``per_spk``: per-speaker table (``#SENT #WORD Corr Sub Del Ins Err S.Err`` in percent), with utt2spk.
- ``confusions.txt``: substitution pairs, inserted words and deleted words, most frequent first.
- ``scores.json``: all of it machine-readable, for ``asr report`` and ``asr results``
  (schema in :func:`scores_dict`).

The `asr score` and `asr compare` commands live here too (the scoring itself is asr.scoring).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from asr.atomic import write_text
from asr.bootstrap import bootstrap_ci, paired_bootstrap
from asr.scoring import Normaliser, ScoreResult, UttScore, ci_line, kaldi_line, rate, score_files

SCHEMA_VERSION = 1


def summary_lines(result: ScoreResult, cer: bool = False, n_resamples: int = 1000, seed: int = 0) -> list[str]:
    """The lines printed to stdout: %WER, its interval, and with ``cer`` the %CER pair."""
    t = result.totals()
    lines = [kaldi_line("WER", t["errors"], t["words"], t["ins"], t["del"], t["sub"])]
    lines.append(ci_line("WER", *_ci(result, "word", n_resamples, seed), n_resamples, seed))
    if cer:
        lines.append(_cer_line(result))
        lines.append(ci_line("CER", *_ci(result, "char", n_resamples, seed), n_resamples, seed))
    return lines


def _cer_line(result: ScoreResult) -> str:
    ce = [u.char_errors for u in result.utts]
    t = result.totals()
    # The character breakdown is not kept per type; the word line carries ins/del/sub.
    return f"%CER {rate(sum(ce), t['chars']):.2f} [ {sum(ce)} / {t['chars']} ]"


def _ci(result: ScoreResult, unit: str, n_resamples: int, seed: int) -> tuple[float, float]:
    """Bootstrap interval (fractions), memoised on the result: every report file quotes the same one."""
    cache = result.__dict__.setdefault("_ci_cache", {})
    key = (unit, n_resamples, seed)
    if key not in cache:
        cache[key] = bootstrap_ci(*result.arrays(unit), n_resamples, seed=seed)
    return cache[key]


def _utt_rate(u: UttScore) -> float:
    return rate(u.errors, len(u.ref))


def worst_first(utts: list[UttScore]) -> list[UttScore]:
    """Most errors first, then highest per-utterance rate, then utterance id."""
    return sorted(utts, key=lambda u: (-u.errors, -_utt_rate(u), u.utt))


def wer_text(result: ScoreResult, unit: str, n_resamples: int, seed: int) -> str:
    t = result.totals()
    missing = result.missing
    if unit == "word":
        lines = [kaldi_line("WER", t["errors"], t["words"], t["ins"], t["del"], t["sub"]),
                 f"%SER {rate(t['sentence_errors'], t['sentences']):.2f} [ {t['sentence_errors']} / "
                 f"{t['sentences']} ]"]
    else:
        lines = [_cer_line(result)]
    lines.append(f"Scored {t['sentences']} sentences, {len(missing)} not present in hyp.")
    label = "WER" if unit == "word" else "CER"
    lines.append(ci_line(label, *_ci(result, unit, n_resamples, seed), n_resamples, seed))
    if missing:
        lines.append("# not present in hyp (scored as deletions): " + " ".join(missing))
    lines.append(f"# normalisation: {result.normaliser.describe()}")
    lines.append(f"# ref: {result.ref_path}  hyp: {result.hyp_path}")
    return "\n".join(lines) + "\n"


def errs_text(result: ScoreResult) -> str:
    lines = ["# per-utterance alignment, worst first (most errors); C=correct S=sub I=ins D=del"]
    for u in worst_first(result.utts):
        cols = u.ops or [("", "", "")]
        widths = [max(len(r), len(h), len(o)) for r, h, o in cols]
        if u.missing:
            lines.append(f"{u.utt} #missing hypothesis: scored as all deletions")
        for label, k in (("ref", 0), ("hyp", 1), ("op", 2)):
            cells = "  ".join(c[k].ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip()
            lines.append(f"{u.utt} {label:<3}  {cells}".rstrip())
        lines.append(f"{u.utt} #csid {u.cor} {u.sub} {u.ins} {u.dels}")
    return "\n".join(lines) + "\n"


def per_spk_rows(result: ScoreResult) -> list[dict]:
    """One dict per speaker (sorted by id) plus a final ``SUM`` row; counts and percentages."""
    groups: dict[str, list[UttScore]] = {}
    for u in result.utts:
        groups.setdefault(u.spk or "<unknown>", []).append(u)
    rows = []
    for spk, us in [*sorted(groups.items()), ("SUM", result.utts)]:
        words = sum(len(u.ref) for u in us)
        c = {k: sum(getattr(u, a) for u in us) for k, a in
             (("cor", "cor"), ("sub", "sub"), ("del", "dels"), ("ins", "ins"), ("err", "errors"))}
        rows.append({"spk": spk, "sentences": len(us), "words": words, **c,
                     "sentence_errors": sum(1 for u in us if u.errors), "wer": rate(c["err"], words),
                     "chars": sum(u.ref_chars for u in us),
                     "char_errors": sum(u.char_errors for u in us)})
    return rows


def per_spk_text(result: ScoreResult) -> str:
    rows = per_spk_rows(result)
    w = max(12, *(len(r["spk"]) for r in rows))
    head = f"{'SPEAKER':<{w}} {'#SENT':>7} {'#WORD':>8} {'Corr':>7} {'Sub':>7} {'Del':>7} {'Ins':>7} " \
           f"{'Err':>7} {'S.Err':>7}"
    lines = [head]
    for r in rows:
        pct = [rate(r[k], r["words"]) for k in ("cor", "sub", "del", "ins", "err")]
        lines.append(f"{r['spk']:<{w}} {r['sentences']:>7} {r['words']:>8} "
                     + " ".join(f"{p:>7.2f}" for p in pct)
                     + f" {rate(r['sentence_errors'], r['sentences']):>7.2f}")
    return "\n".join(lines) + "\n"


def confusions(result: ScoreResult) -> dict[str, Counter]:
    """Counters of substitution pairs ``(ref, hyp)``, inserted words and deleted words."""
    sub, ins, dels = Counter(), Counter(), Counter()
    for u in result.utts:
        for r, h, o in u.ops:
            if o == "S":
                sub[(r, h)] += 1
            elif o == "I":
                ins[h] += 1
            elif o == "D":
                dels[r] += 1
    return {"sub": sub, "ins": ins, "del": dels}


def confusions_text(result: ScoreResult) -> str:
    c = confusions(result)
    lines = ["# SUBSTITUTIONS: count ref -> hyp"]
    lines += [f"{n:6d}  {r} -> {h}" for (r, h), n in sorted(c["sub"].items(), key=lambda kv: (-kv[1], kv[0]))]
    lines += ["", "# INSERTIONS: count word"]
    lines += [f"{n:6d}  {w}" for w, n in sorted(c["ins"].items(), key=lambda kv: (-kv[1], kv[0]))]
    lines += ["", "# DELETIONS: count word"]
    lines += [f"{n:6d}  {w}" for w, n in sorted(c["del"].items(), key=lambda kv: (-kv[1], kv[0]))]
    return "\n".join(lines) + "\n"


def scores_dict(result: ScoreResult, n_resamples: int = 1000, seed: int = 0, top: int = 50) -> dict:
    """Machine-readable summary. Rates are percent; ``ci95`` is ``[lo, hi]`` in percent.

    Keys: ``schema``, ``ref``, ``hyp``, ``normalisation``, ``wer`` and ``cer`` (each with
    ``rate errors total ins del sub ci95``; wer also ``ser``), ``sentences``, ``missing``, ``extra``,
    ``problems``, ``per_spk`` (rows of :func:`per_spk_rows`, or null without utt2spk),
    ``confusions`` (top ``top`` of each kind), ``utts`` (every utterance, worst first, with ``utt
    spk ref hyp ops errors words char_errors chars missing``; ``ops`` is a string of C/S/I/D).
    """
    t = result.totals()
    wlo, whi = _ci(result, "word", n_resamples, seed)
    clo, chi = _ci(result, "char", n_resamples, seed)
    c = confusions(result)
    has_spk = any(u.spk is not None for u in result.utts)
    return {
        "schema": SCHEMA_VERSION,
        "ref": result.ref_path,
        "hyp": result.hyp_path,
        "normalisation": result.normaliser.to_dict(),
        "bootstrap": {"resamples": n_resamples, "seed": seed},
        "wer": {"rate": rate(t["errors"], t["words"]), "errors": t["errors"], "total": t["words"],
                "ins": t["ins"], "del": t["del"], "sub": t["sub"], "ci95": [100 * wlo, 100 * whi],
                "ser": rate(t["sentence_errors"], t["sentences"]), "sentence_errors": t["sentence_errors"]},
        "cer": {"rate": rate(t["char_errors"], t["chars"]), "errors": t["char_errors"], "total": t["chars"],
                "ci95": [100 * clo, 100 * chi]},
        "sentences": t["sentences"],
        "missing": result.missing,
        "extra": result.extra,
        "problems": result.problems,
        "per_spk": per_spk_rows(result) if has_spk else None,
        "confusions": {
            "sub": [[r, h, n] for (r, h), n in c["sub"].most_common(top)],
            "ins": [[w, n] for w, n in c["ins"].most_common(top)],
            "del": [[w, n] for w, n in c["del"].most_common(top)],
        },
        "utts": [{"utt": u.utt, "spk": u.spk, "ref": " ".join(u.ref), "hyp": " ".join(u.hyp),
                  "ops": "".join(o for _, _, o in u.ops), "errors": u.errors, "words": len(u.ref),
                  "char_errors": u.char_errors, "chars": u.ref_chars, "missing": u.missing}
                 for u in worst_first(result.utts)],
    }


def write_outputs(result: ScoreResult, out_dir: str | Path, n_resamples: int = 1000, seed: int = 0) -> None:
    """Write wer, cer, errs.txt, confusions.txt, scores.json and (with speakers) per_spk."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "wer", wer_text(result, "word", n_resamples, seed))
    write_text(out / "cer", wer_text(result, "char", n_resamples, seed))
    write_text(out / "errs.txt", errs_text(result))
    write_text(out / "confusions.txt", confusions_text(result))
    if any(u.spk is not None for u in result.utts):
        write_text(out / "per_spk", per_spk_text(result))
    write_text(out / "scores.json", json.dumps(scores_dict(result, n_resamples, seed), indent=1,
                                               ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------- CLI (asr score, asr compare)


def _resolve(path: str, name: str) -> Path:
    """A data/decode dir stands for its ``name`` file (``text``, ``utt2spk``)."""
    p = Path(path)
    return p / name if p.is_dir() else p


def _normaliser_from_args(args: argparse.Namespace) -> Normaliser:
    return Normaliser(case=args.case, strip_punct=args.strip_punct, ignore_noise=args.ignore_noise,
                      ignore=tuple(args.ignore or ()))


def _add_norm_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("normalisation (applied to REF and HYP alike)")
    g.add_argument("--case", choices=["keep", "upper", "lower"], default="keep", help="case mapping")
    g.add_argument("--strip-punct", action="store_true", help="delete punctuation inside tokens")
    g.add_argument("--ignore-noise", action="store_true",
                   help="drop tokens in <...> or [...] such as <UNK> [NOISE]")
    g.add_argument("--ignore", action="append", metavar="WORD", help="drop this token (repeatable)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="bootstrap random seed")
    p.add_argument("--strict", action="store_true", help="treat any input problem as an error")


def _cmd_score(args: argparse.Namespace) -> int:
    ref_path = _resolve(args.ref, "text")
    hyp_path = _resolve(args.hyp, "text")
    utt2spk = args.utt2spk
    if utt2spk is None and Path(args.ref).is_dir() and (Path(args.ref) / "utt2spk").is_file():
        utt2spk = Path(args.ref) / "utt2spk"
    out_dir = args.out or (args.hyp if Path(args.hyp).is_dir() else None)
    result = score_files(ref_path, hyp_path, _normaliser_from_args(args), utt2spk, strict=args.strict)
    if out_dir is not None:
        write_outputs(result, out_dir, n_resamples=args.bootstrap, seed=args.seed)
    for line in summary_lines(result, cer=args.cer, n_resamples=args.bootstrap, seed=args.seed):
        print(line)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    norm = _normaliser_from_args(args)
    ref_path = _resolve(args.ref, "text")
    a = score_files(ref_path, _resolve(args.hyp_a, "text"), norm, strict=args.strict)
    b = score_files(ref_path, _resolve(args.hyp_b, "text"), norm, strict=args.strict)
    unit, label = ("char", "CER") if args.cer else ("word", "WER")
    ea, lens = a.arrays(unit)
    eb, _ = b.arrays(unit)
    r = paired_bootstrap(ea, eb, lens, n_resamples=args.bootstrap, seed=args.seed)
    for name, res in (("A", a), ("B", b)):
        t = res.totals()
        if unit == "char":
            print(f"{name}: %CER {rate(t['char_errors'], t['chars']):.2f} [ {t['char_errors']} / {t['chars']} ]"
                  f"  {res.hyp_path}")
        else:
            print(f"{name}: {kaldi_line('WER', t['errors'], t['words'], t['ins'], t['del'], t['sub'])}"
                  f"  {res.hyp_path}")
    print(f"B - A: {100 * r['delta']:+.2f} %{label} absolute, 95% CI [ {100 * r['delta_lo']:+.2f} , "
          f"{100 * r['delta_hi']:+.2f} ] (paired bootstrap over utterances, {args.bootstrap} resamples)")
    print(f"P(B better) = {r['p_b_better']:.4f}")
    if args.out:
        import json

        from asr.atomic import write_text
        r.update(unit=unit, ref=str(ref_path), hyp_a=a.hyp_path, hyp_b=b.hyp_path,
                 normalisation=norm.to_dict())
        write_text(args.out, json.dumps(r, indent=2) + "\n")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "score", help="WER/CER of a hypothesis text against a reference, Kaldi style",
        description="Score HYP against REF (Kaldi text files, or data/decode dirs holding 'text'). "
                    "Writes wer, cer, errs.txt, per_spk, confusions.txt, scores.json into -o DIR "
                    "(default: HYP when it is a directory).")
    p.add_argument("ref", metavar="REF", help="reference text file or data dir")
    p.add_argument("hyp", metavar="HYP", help="hypothesis text file or decode dir")
    p.add_argument("--utt2spk", help="utt2spk file for the per-speaker table (default: REF/utt2spk)")
    p.add_argument("--cer", action="store_true", help="also print the %%CER lines (the cer file is always written)")
    p.add_argument("-o", "--out", metavar="DIR", help="output directory")
    _add_norm_args(p)
    p.set_defaults(func=_cmd_score)

    c = subparsers.add_parser(
        "compare", help="paired bootstrap between two hypotheses on the same reference",
        description="Paired bootstrap over utterances: the WER difference B - A with its 95%% "
                    "interval and the probability that B is better than A.")
    c.add_argument("ref", metavar="REF", help="reference text file or data dir")
    c.add_argument("hyp_a", metavar="HYP_A", help="system A text file or decode dir")
    c.add_argument("hyp_b", metavar="HYP_B", help="system B text file or decode dir")
    c.add_argument("--cer", action="store_true", help="compare character error rates instead")
    c.add_argument("-o", "--out", metavar="FILE", help="also write the result as JSON")
    _add_norm_args(c)
    c.set_defaults(func=_cmd_compare)

