"""Layer 4 — Prefect and DVC around the library: the cross-validation flow and its cache keys (:mod:`.flows`), the
extract flow (:mod:`.feature_flow`), results/metrics files (:mod:`.results`), comparison and report (:mod:`.compare`,
:mod:`.report`), prediction from a bundle (:mod:`.predict`), the Prefect server and deployments (:mod:`.server`) and
``dvc.yaml`` train-stage generation (:mod:`.dvc_stages`).
"""
