"""The shipped plugin families are registered before any test isolates the registry."""

import pytest

import plugins.smp_encoders  # noqa: F401
import plugins.timm_encoders  # noqa: F401
from zoo.testing import isolated_registry


@pytest.fixture
def registry():
    """Whatever a test registers is forgotten afterwards."""
    with isolated_registry():
        yield
