"""The shipped plugin families are registered before any test isolates the registry."""

import pytest

import plugins
import plugins.smp_encoders  # noqa: F401
import plugins.timm_encoders  # noqa: F401
from zoo.testing import isolated_registry


@pytest.fixture
def registry():
    """Encoders registered and plugins loaded by a test are forgotten afterwards."""
    loaded = set(plugins._loaded)
    with isolated_registry():
        yield
    plugins._loaded.intersection_update(loaded)


PLUGIN_SOURCE = '''
"""A throw-away plugin written by a test."""
import torch
from zoo import SegmentationModel, UNetDecoder, get_spec, register_encoder

with open({counter!r}, "a") as f:
    f.write("x")


class Features(torch.nn.Module):
    def __init__(self, in_channels):
        super().__init__()
        self.conv = torch.nn.Conv2d(in_channels, 4, 3, stride=2, padding=1)

    def forward(self, x):
        return [self.conv(x)]


@register_encoder({name!r}, description="test plugin encoder", channels=(4,), reductions=(2,), input_multiple=2)
def build(num_classes, in_channels=3):
    return SegmentationModel(Features(in_channels), UNetDecoder((4,), (2,), num_classes), get_spec({name!r}),
                             num_classes, in_channels)
'''


@pytest.fixture
def write_plugin(tmp_path):
    """write_plugin(path, encoder_name) -> path of a plugin file; the file counts its imports in path.count."""
    def write(path, name):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(PLUGIN_SOURCE.format(name=name, counter=str(path) + ".count"))
        return path
    return write
