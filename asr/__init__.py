"""asr: end-to-end CTC speech recognition with deep bidirectional LSTMs."""

__version__ = "0.1.0"
