"""emoflow models: the five reproduced papers' models and the baselines, registered by name.

Importing :mod:`models` registers every model. Use :func:`create_model` with a name from :func:`list_models`;
:func:`get_model_info` gives the inputs (feature-store names), the paper's training defaults, its published
numbers and its fold plan. See :mod:`models.registry` for the batch conventions.
"""

# importing the paper modules registers their models
from models import baselines, head_fusion, ilt_cat, ks_transformer, multilevel, rlc  # noqa: F401
from models.presets import tiny_config
from models.registry import (
    InputSpec,
    ModelInfo,
    create_model,
    default_config,
    describe_models,
    example_batch,
    get_model_info,
    list_models,
    make_config,
    model_config_class,
    register_model,
    requirements,
)

__all__ = [
    "InputSpec",
    "ModelInfo",
    "create_model",
    "default_config",
    "describe_models",
    "example_batch",
    "get_model_info",
    "list_models",
    "make_config",
    "model_config_class",
    "register_model",
    "requirements",
    "tiny_config",
]
