"""The shipped families `timm-*` and `smp-*`: specs measured lazily, any member buildable."""

import pytest
import torch

import zoo
from zoo import UnknownEncoderError, ZooError


def test_timm_spec_comes_from_feature_info():
    spec = zoo.get_spec("timm-convnext_atto")
    assert (spec.channels, spec.reductions, spec.input_multiple) == ((40, 80, 160, 320), (4, 8, 16, 32), 32)
    assert spec.source == "timm" and spec.pretrained == ("imagenet",) and spec.normalization == zoo.IMAGENET
    model = zoo.create_model("timm-convnext_atto", 2, in_channels=1)
    assert model(torch.zeros(1, 1, 64, 64)).shape == (1, 2, 64, 64)  # stride 4 -> 1 without skips
    assert zoo.get_spec("timm-inception_v3").normalization == zoo.TUTORIAL  # timm's (0.5, 0.5) statistics


def test_smp_specs_skip_the_input_but_keep_vgg_stride_1():
    assert zoo.get_spec("smp-resnet34").channels == (64, 64, 128, 256, 512)
    assert zoo.get_spec("smp-resnet34").reductions == (2, 4, 8, 16, 32)
    assert zoo.get_spec("smp-vgg16").channels == zoo.get_spec("vgg").channels
    assert zoo.get_spec("smp-vgg16").reductions == (1, 2, 4, 8, 16, 32)
    assert zoo.get_spec("smp-resnet18").pretrained == ("imagenet", "ssl", "swsl")


def test_models_that_cannot_be_built_on_meta_are_counted_on_the_cpu():
    spec = zoo.get_spec("smp-mit_b0")  # MixTransformer calls .item() while it is built
    model = zoo.create_model("smp-mit_b0", 2)
    assert spec.params_at(2) == sum(p.numel() for p in model.parameters())
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 2, 64, 64)


def test_family_errors():
    with pytest.raises(UnknownEncoderError, match=r"did you mean: smp-resnet18.*encoders 'smp-\*'"):
        zoo.get_spec("smp-resnet19")
    with pytest.raises(ZooError, match=r"no pretrained weights 'foo' \(available: imagenet, ssl, swsl\)"):
        zoo.create_model("smp-resnet18", 2, weights="foo")
