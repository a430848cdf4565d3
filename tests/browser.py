"""Test helper: load an HTML page in headless Chromium and say what the browser saw.

No Python packages beyond the stdlib: the page is copied (beside the original, so relative paths
still resolve) with two scripts added. The first, at the top, records script errors, unhandled promise
rejections, ``console.error`` calls and failed loads of images/scripts/styles; the second, on
``load``, measures every ``<img>``, ``<canvas>`` and ``<svg>`` and writes a JSON result into the
DOM, which ``chromium --dump-dom`` prints. Chromium's stderr is also scanned for "Uncaught" console
lines. A second run takes a full-page screenshot of the original page.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from html import unescape
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
RESULT_ID = "__browser_check__"

_HOOK = """<script>(function () {
  var errs = window.__check_errors__ = [], bad = window.__check_failed_loads__ = [];
  addEventListener("error", function (e) {
    if (e instanceof ErrorEvent) errs.push(e.message || String(e.error));
    else if (e.target && e.target.tagName) bad.push(e.target.tagName.toLowerCase() + " " +
        String(e.target.src || e.target.href || "").slice(0, 80));
  }, true);
  addEventListener("unhandledrejection", function (e) { errs.push("Uncaught (in promise) " + e.reason); });
  var ce = console.error;
  console.error = function () {
    errs.push("console.error: " + [].join.call(arguments, " "));
    ce.apply(console, arguments);
  };
})();</script>"""

_PROBE = """<script>addEventListener("load", function () {
  function box(el) { var r = el.getBoundingClientRect(); return [Math.round(r.width), Math.round(r.height)]; }
  var out = {images: [], canvases: [], svgs: [], errors: window.__check_errors__,
             failed_loads: window.__check_failed_loads__, height: document.documentElement.scrollHeight};
  [].forEach.call(document.images, function (im) {
    var b = box(im);
    out.images.push({src: im.currentSrc.slice(0, 60), alt: im.alt, natural: [im.naturalWidth, im.naturalHeight],
                     shown: b, ok: im.complete && im.naturalWidth > 0 && im.naturalHeight > 0 && b[0] > 0 && b[1] > 0});
  });
  [].forEach.call(document.querySelectorAll("canvas"), function (c) {
    var inked = null;  // null: unreadable (tainted); else whether any pixel is not transparent
    try { var d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
          inked = false; for (var i = 3; i < d.length; i += 4) if (d[i]) { inked = true; break; } } catch (e) {}
    out.canvases.push({size: [c.width, c.height], ok: c.width > 0 && c.height > 0 && inked !== false});
  });
  [].forEach.call(document.querySelectorAll("svg"), function (s) {
    var b = s.getBBox(); out.svgs.push({bbox: [b.width, b.height], ok: b.width > 0 && b.height > 0});
  });
  var pre = document.createElement("pre");
  pre.id = "@RESULT_ID@"; pre.hidden = true; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});</script>""".replace("@RESULT_ID@", RESULT_ID)


@dataclass
class PageCheck:
    """What the browser saw; ``problems`` is empty when every plot drew and no script failed."""

    images: list[dict]
    canvases: list[dict]
    svgs: list[dict]
    errors: list[str]
    failed_loads: list[str]
    height: int
    screenshot: Path | None = None
    stderr: str = field(default="", repr=False)

    @property
    def plots(self) -> list[dict]:
        return self.images + self.canvases + self.svgs

    @property
    def problems(self) -> list[str]:
        bad = [f"not drawn: {p}" for p in self.plots if not p["ok"]]
        return bad + [f"failed to load: {x}" for x in self.failed_loads] + [f"script error: {e}" for e in self.errors]


def find_chromium() -> str | None:
    return next((p for p in map(shutil.which, CANDIDATES) if p), None)


def _run(chromium: str, args: list[str], url: str, timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}",
               "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", *args, url]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)


def check_page(html: Path, screenshot: Path | None = None, chromium: str | None = None,
               width: int = 1280, timeout: float = 60) -> PageCheck:
    """Load ``html`` in headless Chromium; optionally write a full-page PNG screenshot to ``screenshot``."""
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError(f"no Chromium binary on PATH (tried {', '.join(CANDIDATES)})")
    html = Path(html).resolve()
    page = html.read_text(encoding="utf-8")
    head = re.search(r"<head[^>]*>", page, re.I) or re.search(r"<html[^>]*>", page, re.I)
    at = head.end() if head else 0
    page = page[:at] + _HOOK + page[at:]
    end = page.lower().rfind("</body>")
    page = page[:end] + _PROBE + page[end:] if end >= 0 else page + _PROBE
    probe = html.with_name(f".{html.stem}.browser-check.html")
    probe.write_text(page, encoding="utf-8")
    try:
        proc = _run(chromium, [f"--window-size={width},1000", "--dump-dom"], probe.as_uri(), timeout)
    finally:
        probe.unlink(missing_ok=True)
    found = re.search(rf'<pre id="{RESULT_ID}"[^>]*>(.*?)</pre>', proc.stdout, re.S)
    if not found:
        raise RuntimeError(f"the probe script never reported (page did not load?); stderr:\n{proc.stderr[-3000:]}")
    res = json.loads(unescape(found.group(1)))
    # Console lines chromium logged itself ("Uncaught ..."): catches anything the hook could not see.
    logged = re.findall(r'CONSOLE[^\]]*\] "(Uncaught[^"]*)"', proc.stderr)
    check = PageCheck(res["images"], res["canvases"], res["svgs"], list(dict.fromkeys(res["errors"] + logged)),
                      res["failed_loads"], res["height"], stderr=proc.stderr)
    if screenshot is not None:
        screenshot = Path(screenshot).resolve()
        height = max(200, min(check.height, 16384))
        _run(chromium, [f"--window-size={width},{height}", f"--screenshot={screenshot}"], html.as_uri(), timeout)
        check.screenshot = screenshot
    return check
