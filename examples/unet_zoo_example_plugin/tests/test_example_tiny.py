"""What a plugin's own test suite needs: the zoo's kit checks the encoder as unet-zoo will use it."""

import plugins
from zoo.testing import check_encoder


def test_example_tiny_passes_the_kit():
    plugins.load_plugins(["unet_zoo_example_plugin"])
    check_encoder("example-tiny")


def test_the_timm_wrapper_declares_what_timm_measures_and_passes_the_kit():
    plugins.load_plugins(["unet_zoo_example_plugin"])
    import zoo

    spec = zoo.get_spec("example-resnet10t")
    assert (spec.channels, spec.reductions) == ((64, 64, 128, 256, 512), (2, 4, 8, 16, 32))  # timm's feature_info
    check_encoder("example-resnet10t", sizes=[(32, 64)])
