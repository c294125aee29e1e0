"""Layer 6 — the edges: every typer command (:mod:`.main` is the ``emoflow`` app; :mod:`.team`, :mod:`.predict`) and the
DVC stage entry points (:mod:`.stages`). Options in, one library call out.
"""
