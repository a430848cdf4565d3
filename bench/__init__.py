"""Benchmarks (``python bench/NAME.py``) and the reference decoders the parity tests share with them."""
