"""Model tests run on one CPU thread: the machine is shared and the models are tiny."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
