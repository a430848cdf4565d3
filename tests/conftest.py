"""Shared fixtures: where the real corpora are, and tiny data dirs built in tmp."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ASR_SHARED_DATA", ROOT.parent / "shared" / "data"))

# Tests share 2 cores with each other and with other jobs; one thread keeps timings predictable.
torch.set_num_threads(1)


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` beside the repository; the test skips (with the reason) where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real corpora not found at {SHARED_DATA} (set ASR_SHARED_DATA or put ../shared beside the repo)")
    return SHARED_DATA


@pytest.fixture
def recipe_make():
    """``recipe_make(recipe, *args)``: ``make -s -C egs/<recipe> ARGS`` -> its stdout, failing the test with
    make's stderr where it exits non-zero (for wiring checks: ``print-VAR``, ``-n <stage>``)."""
    import subprocess

    def run(recipe: str, *args: str) -> str:
        out = subprocess.run(["make", "-s", "-C", str(ROOT / "egs" / recipe), *args], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout

    return run
