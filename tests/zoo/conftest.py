"""The shipped plugin families are registered before any test isolates the registry."""

import pytest
import torch

import plugins.smp_encoders  # noqa: F401
import plugins.timm_encoders  # noqa: F401
from zoo.testing import isolated_registry


@pytest.fixture(autouse=True)
def one_torch_thread():
    """These models are small: a second thread gains little, and on a busy 2-core machine OpenMP threads spin
    against other processes and make each test many times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def registry():
    """Whatever a test registers is forgotten afterwards."""
    with isolated_registry():
        yield
