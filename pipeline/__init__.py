"""emoflow pipeline, in layers; each imports only the layers below it (tests/pipeline/test_layering.py):

``core`` (params, code hash) → ``corpus`` (manifest, adapters, folds, demo synthesiser) → ``extraction`` (feature
store filling, ASR) → ``training`` (dataset, loop, metrics, bundle) → ``orchestration`` (Prefect flows, results,
report, predict, server, DVC stage generation) → ``team`` (DVC remotes) → ``cli`` (typer commands, DVC stage
entry points). ``features/`` and ``models/`` sit below all of them.
"""

#: the layers, lowest first
LAYERS = ("core", "corpus", "extraction", "training", "orchestration", "team", "cli")
