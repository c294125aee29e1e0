"""Layer 1 — corpora as tables: the manifest contract (:mod:`.manifest`), corpus adapters (:mod:`.corpora`, :mod:`.combined`),
fold plans (:mod:`.folds`), the demo synthesiser (:mod:`.demo_corpus`) and dimensional targets (:mod:`.dimensional`).
Imports only :mod:`pipeline.core` (and ``features``/``models``).
"""
