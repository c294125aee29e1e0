"""Run the models package's doctests (shape examples in every forward docstring) under tests/models too."""

import doctest
import importlib
import pkgutil

import pytest

import models

MODULES = sorted(m.name for m in pkgutil.iter_modules(models.__path__, "models."))


@pytest.mark.parametrize("module", MODULES)
def test_doctests(module):
    mod = importlib.import_module(module)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


def test_every_model_forward_has_a_shape_example():
    for name in models.list_models():
        cls = models.get_model_info(name).model_cls
        assert ">>>" in (cls.__doc__ or ""), f"{cls.__name__} lacks a doctest"
        assert "(B" in (cls.forward.__doc__ or ""), f"{cls.__name__}.forward docstring must state shapes"
