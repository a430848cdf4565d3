"""egs/ablation.py: each row's figures come from its own model dir, and a row with nothing to read here
keeps its line from the old table (running one row with --only must not wipe the others)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "egs" / "ablation.py"

MAKEFILE = """\
ABLATION ?=
EXP = exp/m-$(ABLATION)
DEV_SET = dev
TEST_SETS = test other
STAGE_LOGS = 4-feats=exp/log/stage4-feats.v.log $(foreach s,3-augment 7-train 8-tune 9-decode 10-score,\
  $(s)=exp/log/stage$(s).v-$(ABLATION).log)
print-%:
\t@echo '$($*)'
"""


def _scores(recipe: Path, row: str, dset: str, decoder: str, rate: float, ci: tuple[float, float]) -> None:
    d = recipe / "exp" / f"m-{row}" / f"decode_{dset}_{decoder}"
    d.mkdir(parents=True)
    (d / "scores.json").write_text(json.dumps({"wer": {"rate": rate, "ci95": list(ci)}}))


def test_rows_read_own_dirs_and_keep_old_lines(tmp_path):
    recipe = tmp_path / "toy"
    recipe.mkdir()
    (recipe / "Makefile").write_text(MAKEFILE)
    rows = tmp_path / "rows.tsv"
    rows.write_text("# comment\nbase\tthe baseline\nnew\t+ a change\tFOO=1\n")
    # The baseline ran elsewhere: only its old line is left. The new row ran here.
    old_base = "| base | the baseline | 9.00 | 7.00 | 12.00 [10.0, 14.0] | 8.00 [6.0, 10.0] | 100 | 120 |"
    (recipe / "RESULTS.md").write_text(
        "# toy\n\n<!-- ablation begin -->\n| row | adds |\n|---|---|\n" + old_base + "\n"
        "| gone | a row no longer in rows.tsv | 1 | 1 | 1 | 1 | 1 | 1 |\n<!-- ablation end -->\n\ntail text\n")
    _scores(recipe, "new", "dev", "greedy", 8.5, (7.0, 10.0))
    _scores(recipe, "new", "dev", "beam", 6.25, (5.0, 7.5))
    _scores(recipe, "new", "test", "greedy", 13.0, (11.0, 15.0))   # overlaps base's [10, 14]
    _scores(recipe, "new", "test", "beam", 3.0, (2.0, 4.0))        # clear of base's [6, 10]
    log = recipe / "exp" / "log"
    log.mkdir(parents=True)
    (log / "stage7-train.v-new.log").write_text("stage 7 train: done in 50s\nstage 7 train: done in 40s\n")
    (log / "stage9-decode.v-new.log").write_text("done in 5s\n")
    (log / "stage4-feats.v.log").write_text("done in 3s\n")  # a data stage: the variant's, not the row's
    out = subprocess.run([sys.executable, str(SCRIPT), str(recipe), "--rows", str(rows), "--"],
                         capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    text = (recipe / "RESULTS.md").read_text()
    table = text.split("<!-- ablation begin -->")[1].split("<!-- ablation end -->")[0]
    lines = [ln for ln in table.splitlines() if ln.startswith("| ") and not ln.startswith("| row")]
    assert lines[0] == old_base
    assert lines[1] == "| new | + a change | 8.50 | 6.25 | 13.00 [11.0, 15.0] ≈ | 3.00 [2.0, 4.0] | 40 | 48 |"
    assert len(lines) == 2  # rows that left rows.tsv leave the table
    assert text.startswith("# toy\n\n") and text.endswith("\n\ntail text\n")
