"""The one exception type users see: a single line that names the file, line or utterance."""


class AsrError(Exception):
    """A user-facing problem (bad input, bad config). The CLI prints ``str(e)`` on one line, no traceback."""
