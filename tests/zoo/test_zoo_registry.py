"""Registry behaviour: names, patterns, lazy families, suggestions, errors a user can act on."""

import pytest
import timm.data
import torch

import zoo
from zoo import (
    IMAGENET,
    TUTORIAL,
    EncoderSpec,
    InputSizeError,
    Normalization,
    SegmentationModel,
    UNetDecoder,
    UnknownEncoderError,
    ZooError,
)


def _tiny_builder(name):
    def build(num_classes, in_channels=3):
        encoder = torch.nn.Conv2d(in_channels, 4, 3, stride=2, padding=1)
        return SegmentationModel(_Features(encoder), UNetDecoder((4,), (2,), num_classes), zoo.get_spec(name),
                                 num_classes, in_channels)
    return build


class _Features(torch.nn.Module):
    def __init__(self, conv):
        super().__init__()
        self.conv = conv

    def forward(self, x):
        return [self.conv(x)]


def test_builtins_are_listed_with_exact_specs():
    names = zoo.list_encoders()
    assert {"mini", "mobilenet", "unet", "resnet50", "vgg", "vgg16_bn"} <= set(names)
    assert names == sorted(names)
    mini, mobilenet = zoo.get_spec("mini"), zoo.get_spec("mobilenet")
    assert (mini.channels, mini.reductions, mini.input_multiple) == ((32, 64, 128), (1, 2, 4), 4)
    assert (mobilenet.channels, mobilenet.reductions, mobilenet.input_multiple) == (
        (64, 128, 256, 512), (2, 4, 8, 16), 32)
    assert mini.source == mobilenet.source == zoo.get_spec("vgg").source == "built-in"
    assert mini.normalization == mobilenet.normalization == TUTORIAL
    assert zoo.get_spec("resnet50").normalization == IMAGENET
    assert mobilenet.origin == "tutorial keras mobilenet_unet"
    unet = zoo.get_spec("unet")  # Ronneberger et al.: full-resolution skip, 4 pools, BN
    assert (unet.channels, unet.reductions, unet.input_multiple) == ((32, 64, 128, 256, 512), (1, 2, 4, 8, 16), 16)


def test_patterns_and_lazy_families():
    default = zoo.list_encoders("*")
    assert {"timm-resnet18", "smp-resnet18"} <= set(default)
    assert "timm-resnet50" not in default, "the default listing shows featured family names only"
    assert "timm-resnet50" in zoo.list_encoders("timm-res*")
    assert all(n.startswith("timm-res") for n in zoo.list_encoders("timm-res*"))
    assert zoo.list_encoders("vgg*") == ["vgg", "vgg16_bn"]
    assert zoo.list_encoders("nothing*") == []


def test_unknown_name_suggests_the_closest():
    with pytest.raises(UnknownEncoderError) as info:
        zoo.create_model("mobilnet", 2)
    message = str(info.value)
    assert message.startswith("unknown encoder 'mobilnet'; did you mean: mobilenet")
    assert "python launch.py encoders" in message and "\n" not in message
    with pytest.raises(UnknownEncoderError, match=r"did you mean: timm-resnet18\b.*encoders 'timm-\*'"):
        zoo.get_spec("timm-resnt18")
    with pytest.raises(UnknownEncoderError, match=r"^unknown encoder 'qqqq' \(list them"):
        zoo.get_spec("qqqq")


def test_errors_are_user_errors():
    for cls in (ZooError, UnknownEncoderError, InputSizeError):
        assert cls.user_error is True


def test_normalization():
    assert TUTORIAL.mean == TUTORIAL.std == (127.5,) * 3
    assert IMAGENET.mean == pytest.approx([m * 255 for m in timm.data.IMAGENET_DEFAULT_MEAN])
    assert IMAGENET.std == pytest.approx([s * 255 for s in timm.data.IMAGENET_DEFAULT_STD])
    grey = IMAGENET.for_channels(1)
    assert grey.mean == pytest.approx((sum(IMAGENET.mean) / 3,)) and grey.std == pytest.approx(
        (sum(IMAGENET.std) / 3,))
    assert IMAGENET.for_channels(3) == IMAGENET
    five = Normalization("x", (1.0, 2.0, 3.0), (4.0, 5.0, 6.0)).for_channels(5)
    assert five.mean == (1.0, 2.0, 3.0, 1.0, 2.0) and five.std == (4.0, 5.0, 6.0, 4.0, 5.0)
    clipped = Normalization("planned", (50.0, 60.0), (10.0, 20.0), low=(0.0, 10.0), high=(200.0, 100.0))
    assert clipped.for_channels(1).clip == ((5.0,), (150.0,))
    assert clipped.for_channels(3).clip == ((0.0, 10.0, 0.0), (200.0, 100.0, 200.0))


def test_register_encoder_sources_and_clashes(registry):
    zoo.register_encoder("t-a", description="d", channels=(4,), reductions=(2,), input_multiple=2)(
        _tiny_builder("t-a"))
    assert zoo.get_spec("t-a").source == __name__.split(".")[0]  # the registering module's package
    from zoo._registry import registering_as

    with registering_as("my-plugin"):
        zoo.register_encoder("t-b", description="d", channels=(4,), reductions=(2,))(_tiny_builder("t-b"))
    assert zoo.get_spec("t-b").source == "my-plugin"
    with registering_as("other"), pytest.raises(ZooError, match="clashes"):
        zoo.register_encoder("t-b", description="d", channels=(4,), reductions=(2,))(_tiny_builder("t-b"))
    with pytest.raises(ZooError, match="invalid encoder name"):
        zoo.register_encoder("bad name*", description="d", channels=(4,), reductions=(2,))
    with pytest.raises(ZooError, match="shallow to deep"):
        zoo.register_encoder("t-c", description="d", channels=(4, 8), reductions=(4, 2))(_tiny_builder("t-c"))
    model = zoo.create_model("t-a", 3, in_channels=2)
    assert model(torch.zeros(1, 2, 6, 6)).shape == (1, 3, 6, 6)


def test_register_family_resolves_lazily_and_once(registry):
    calls = {"list": 0, "resolve": 0}

    def list_names():
        calls["list"] += 1
        return ["fam-one", "fam-two"]

    def resolve(name):
        calls["resolve"] += 1
        if name not in ("fam-one", "fam-two"):
            raise KeyError(name)
        return EncoderSpec(name=name, description="family member", source="fam", origin="test", channels=(4,),
                           reductions=(2,), input_multiple=2, normalization=TUTORIAL, pretrained=(),
                           builder=_tiny_builder(name))

    zoo.register_family("fam-", list_names=list_names, resolve=resolve, featured=["fam-one"], source="fam")
    assert "fam-one" in zoo.list_encoders() and "fam-two" not in zoo.list_encoders()
    assert calls == {"list": 0, "resolve": 0}
    assert zoo.list_encoders("fam-*") == ["fam-one", "fam-two"] and calls["list"] == 1
    assert zoo.get_spec("fam-two") is zoo.get_spec("fam-two") and calls["resolve"] == 1
    assert zoo.create_model("fam-two", 2)(torch.zeros(1, 3, 4, 4)).shape == (1, 2, 4, 4)
    with pytest.raises(UnknownEncoderError, match="did you mean: fam-two"):
        zoo.get_spec("fam-tow")
    with pytest.raises(ZooError, match="do not start with"):
        zoo.register_family("gam-", list_names=list_names, resolve=resolve, featured=["fam-one"], source="g")


def test_family_failures_become_one_line_errors(registry):
    def resolve(name):
        raise RuntimeError("features_only not implemented\nlong traceback text")

    zoo.register_family("bad-", list_names=lambda: ["bad-x"], resolve=resolve, featured=(), source="bad")
    with pytest.raises(ZooError, match=r"^encoder 'bad-x' \(bad plugin\) cannot be used: RuntimeError: "
                                       r"features_only not implemented$"):
        zoo.get_spec("bad-x")
    assert "bad-x" in zoo.encoder_table("bad-*") and "unusable" in zoo.encoder_table("bad-*")


def test_create_model_option_errors():
    with pytest.raises(ZooError, match="does not accept these options"):
        zoo.create_model("mini", 2, alpha=0.5)
    with pytest.raises(ZooError, match=r"has no pretrained weights 'imagenet' \(available: none\)"):
        zoo.create_model("mini", 2, weights="imagenet")
    with pytest.raises(ZooError, match="weights file not found"):
        zoo.create_model("mini", 2, weights="no/such/file.pt")
    with pytest.raises(ZooError, match="at least 1"):
        zoo.create_model("mini", 0)


def test_encoder_table():
    table = zoo.encoder_table()
    lines = table.splitlines()
    assert lines[0].split() == ["NAME", "SOURCE", "PARAMS@2", "CHANNELS", "REDUCTIONS", "DESCRIPTION"]
    rows = {line.split()[0]: line.split() for line in lines[1:] if line and not line[0].isupper()}
    assert rows["mini"][1:5] == ["built-in", "471,586", "32,64,128", "1,2,4"]
    assert rows["mobilenet"][1:5] == ["built-in", "6,483,586", "64,128,256,512", "2,4,8,16"]
    assert {"resnet50", "vgg", "timm-resnet18", "smp-resnet18"} <= rows.keys()
    assert rows["timm-resnet18"][1:5] == ["timm", "14,328,098", "64,64,128,256,512", "2,4,8,16,32"]
    with pytest.raises(UnknownEncoderError, match="did you mean: mobilenet"):
        zoo.encoder_table("mobilnet")
    with pytest.raises(ZooError, match="no encoder matches"):
        zoo.encoder_table("zzz*")
    single = zoo.encoder_table("timm-resnet34").splitlines()[1].split()
    assert single[:2] == ["timm-resnet34", "timm"] and single[3] == "64,64,128,256,512"
