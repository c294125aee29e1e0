"""Layer 5 — team sharing: DVC remotes, what a model needs pulled, partial pulls (:mod:`.remote`).
"""
