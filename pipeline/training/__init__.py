"""Layer 3 — one fold of one model: dataset/collate and normalisation (:mod:`.data`), the training loop with its
seams (:mod:`.train`), metrics (:mod:`.metrics`) and the exported model bundle (:mod:`.bundle`). No Prefect here.
"""
