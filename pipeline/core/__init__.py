"""Layer 0 — what every layer reads: ``params.yaml`` access (:mod:`.params`) and the training-code hash (:mod:`.codehash`).
"""
