"""Layer 2 — features over a corpus: the extraction driver that fills the HDF5 store (:mod:`.extract`) and ASR
transcripts (:mod:`.transcribe`). Imports only the layers below.
"""
