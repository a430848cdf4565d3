"""Word n-gram language models, one module per concept (none imported here, to keep this cheap):

- :mod:`asr.lm.arpa`: the ARPA format: ``BOS``/``EOS``/``UNK``, ``read_arpa``, ``write_arpa``
  (reading is gzip-aware).
- :mod:`asr.lm.kneser_ney`: interpolated modified Kneser-Ney estimation (``estimate``).
- :mod:`asr.lm.backends`: query back ends for shallow fusion: ``ArpaLM``, ``KenLM``, ``load_lm``.
- :mod:`asr.lm.build`: the ``asr build-lm`` command.
"""
