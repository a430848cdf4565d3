"""report.html in a real browser (headless Chromium): every plot draws, no script error, a screenshot.

Slow (`make test-all`); skips where no Chromium binary is installed (Debian: `apt-get install chromium`).
The screenshot is written next to the report as ``report.png``.
"""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pytest
from browser import check_page, find_chromium
from test_report import _fake_exp

from asr.cli import main

pytestmark = pytest.mark.slow

CHROMIUM = find_chromium()
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium/chromium-browser/google-chrome on PATH "
                                    "(Debian: apt-get install chromium)")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    exp = _fake_exp(tmp_path_factory.mktemp("browser"))
    assert main(["report", str(exp)]) == 0
    return exp / "report.html"


@needs_chromium
def test_report_plots_draw_without_script_errors(report):
    pngs = sorted((report.parent / "report").glob("*.png"))
    assert len(pngs) == 6
    check = check_page(report, screenshot=report.with_suffix(".png"), chromium=CHROMIUM)
    assert check.problems == []
    assert len(check.plots) == len(pngs)  # every plot the report wrote is on the page, and drew
    assert all(min(im["natural"]) > 50 and min(im["shown"]) > 50 for im in check.images), check.images

    shot = mpimg.imread(check.screenshot)  # float RGB(A) in [0, 1]
    assert shot.shape[1] == 1280 and shot.shape[0] >= min(check.height, 16384) > 1000
    rgb = shot[..., :3]
    assert (np.abs(rgb - rgb[0, 0]).max(axis=-1) > 0.05).mean() > 0.02  # not one colour: >2% ink
    colours = np.unique((rgb[::7, ::7] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 32  # plots, not just text on a background


@needs_chromium
def test_checker_catches_broken_image_and_script_error(report, tmp_path):
    """Negative control: the same page plus a broken image, a missing file and a throwing script."""
    page = report.read_text()
    broken = ('<img alt="corrupt" src="data:image/png;base64,iVBORw0KGgoAAAA=">'
              '<img alt="missing" src="report/no_such_plot.png">'
              '<script>throw new Error("boom from the page")</script>')
    bad = report.with_name("broken.html")
    bad.write_text(page.replace("</body>", broken + "</body>"))
    check = check_page(bad, chromium=CHROMIUM)
    assert [im["alt"] for im in check.images if not im["ok"]] == ["corrupt", "missing"]
    assert sum(im["ok"] for im in check.images) == 6  # the real plots still drew
    assert any("boom from the page" in e for e in check.errors), check.errors
    assert any("no_such_plot.png" in x for x in check.failed_loads), check.failed_loads
    assert len(check.problems) >= 4
