"""The shipped plugin families are registered before any test isolates the registry."""

import plugins.smp_encoders  # noqa: F401
import plugins.timm_encoders  # noqa: F401
import pytest
import torch

from zoo.testing import isolated_registry

torch.set_num_threads(2)


@pytest.fixture
def registry():
    """Whatever a test registers is forgotten afterwards."""
    with isolated_registry():
        yield
