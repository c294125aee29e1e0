"""emoflow feature extractors and the HDF5 feature store."""

from features.base import (
    Extractor,
    ExtractorConfig,
    config_hash,
    extractor_class,
    get_extractor,
    list_extractors,
    register_extractor,
)

__all__ = [
    "Extractor",
    "ExtractorConfig",
    "config_hash",
    "extractor_class",
    "get_extractor",
    "list_extractors",
    "register_extractor",
]
