"""The one exception type users see: a single line that names the file, line or utterance."""

import sys
from collections.abc import Callable
from typing import NoReturn


class AsrError(Exception):
    """A user-facing problem (bad input, bad config). The CLI prints ``str(e)`` on one line, no traceback."""


def run_script(main: Callable[[], int | None], prog: str) -> NoReturn:
    """Run a recipe script's ``main``: an AsrError ends it with one line, never a traceback."""
    try:
        sys.exit(main())
    except AsrError as e:
        sys.exit(f"{prog}: error: {e}")
