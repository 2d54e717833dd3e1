"""What a plugin's own test suite needs: the zoo's kit checks the encoder as unet-zoo will use it."""

import plugins
from zoo.testing import check_encoder


def test_example_tiny_passes_the_kit():
    plugins.load_plugins(["unet_zoo_example_plugin"])
    check_encoder("example-tiny")
