"""Built-in models: exact parameter counts, input checks, the generic decoder, and the plugin kit on every
built-in and a curated handful of timm / smp names."""

import pytest
import torch

import zoo
from zoo import InputSizeError, UNetDecoder
from zoo.mini import MiniDecoder, MiniEncoder
from zoo.testing import check_encoder


def trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_mini_matches_the_keras_summary():
    assert trainable(zoo.create_model("mini", 21)) == 472_213
    assert trainable(zoo.create_model("mini", 2)) == 471_586
    assert zoo.get_spec("mini").params_at(21) == 472_213


def test_mobilenet_matches_the_keras_summary():
    model = zoo.create_model("mobilenet", 2)
    assert trainable(model) == 6_483_586
    stats = sum(b.numel() for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var")))
    assert trainable(model) + stats == 6_500_482  # what Keras reports, moving statistics included
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.eps == 1e-3 for m in bns)
    assert model.model_kwargs == {"alpha": 1.0}


def test_mobilenet_alpha_scales_the_encoder():
    model = zoo.create_model("mobilenet", 2, alpha=0.5)
    features = model.encoder(torch.zeros(1, 3, 64, 64))
    assert [f.shape[1] for f in features] == [32, 64, 128, 256]
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 2, 64, 64)
    assert model.model_kwargs == {"alpha": 0.5}


def test_mini_dropout_is_active_in_training_only():
    model = zoo.create_model("mini", 2)
    x = torch.randn(1, 3, 16, 16)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def test_input_checks_say_what_to_do():
    model = zoo.create_model("mobilenet", 2)
    with pytest.raises(InputSizeError) as info:
        model(torch.zeros(1, 3, 100, 100))
    assert str(info.value) == ("input 100x100 is not a multiple of 32 for encoder 'mobilenet'; "
                               "use e.g. --input-size 96 96 or 128 128")
    with pytest.raises(InputSizeError, match="--input-size 32 64 or 64 64"):
        model(torch.zeros(1, 3, 40, 64))
    with pytest.raises(InputSizeError, match="has 1 channels .* in_channels=3"):
        model(torch.zeros(1, 1, 64, 64))
    with pytest.raises(InputSizeError, match="4-D"):
        model(torch.zeros(3, 64, 64))


@pytest.mark.parametrize(("channels", "reductions", "size"), [
    ((8, 16), (4, 8), 32),          # upsampled 4x without skips below the shallowest feature
    ((6, 6, 6), (16, 16, 16), 32),  # transformer-like: equal strides are concatenated as they are
    ((5,), (3,), 9),                # a stride that is not a power of two
])
def test_generic_decoder_returns_the_input_resolution(channels, reductions, size):
    decoder = UNetDecoder(channels, reductions, num_classes=4)
    features = [torch.randn(2, c, size // r, size // r) for c, r in zip(channels, reductions, strict=True)]
    extra = torch.randn(2, 3, size, size)  # leading features beyond the declared ones are ignored
    assert decoder([extra, *features]).shape == (2, 4, size, size)


@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
def test_upsample_nearest_is_interpolate_with_the_gradient_in_the_input_layout(layout):
    """The decoders' upsampling: F.interpolate's numbers forward and back; the gradient it hands on (a channel
    slice of a concatenation's, strided) comes back in the layout the forward had, which torch's CPU backward
    otherwise turns into an NCHW copy of a channels-last map."""
    from zoo._layers import upsample_nearest

    x = torch.randn(2, 6, 5, 7).contiguous(memory_format=layout).requires_grad_(True)
    reference = x.detach().clone().requires_grad_(True)
    skip = torch.randn(2, 3, 10, 14).contiguous(memory_format=layout)
    weight = torch.randn(2, 9, 10, 14)
    ours = torch.cat([upsample_nearest(x, scale_factor=2), skip], dim=1)
    theirs = torch.cat([torch.nn.functional.interpolate(reference, scale_factor=2, mode="nearest"), skip], dim=1)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    (ours * weight).sum().backward()
    (theirs * weight).sum().backward()
    torch.testing.assert_close(x.grad, reference.grad)
    assert x.grad.is_contiguous(memory_format=layout)
    with torch.no_grad():  # inference and export see plain interpolate
        assert upsample_nearest(x, size=(9, 9)).grad_fn is None


SMALL = [(32, 64), (64, 32)]  # the smallest non-square multiples of 32 keep VGG & co. quick on a CPU


def test_mini_passes_the_kit():
    check_encoder("mini")  # default sizes: 64x64 and 64x68


@pytest.mark.parametrize("name", ["mobilenet", "unet", "resnet50", "vgg", "vgg16_bn"])
def test_builtins_pass_the_kit(name):
    check_encoder(name, sizes=SMALL)


@pytest.mark.parametrize("name", ["timm-resnet18", "timm-efficientnet_b0", "timm-mobilenetv3_large_100",
                                  "smp-resnet18", "smp-mobilenet_v2", "smp-efficientnet-b0"])
def test_featured_plugin_encoders_pass_the_kit(name):
    check_encoder(name, sizes=SMALL)


def test_the_kit_catches_a_wrong_declaration(registry):
    spec = zoo.get_spec("mini")
    zoo.register_encoder("mini-misdeclared", description="d", channels=(32, 64, 256), reductions=(1, 2, 4),
                         input_multiple=4)(lambda num_classes, in_channels=3: _respec(
                             spec.builder(num_classes, in_channels), "mini-misdeclared"))
    with pytest.raises(AssertionError, match="fix channels/reductions in register_encoder"):
        check_encoder("mini-misdeclared", in_channels=(3,), sizes=[(16, 16)])


def _respec(model, name):
    model.spec = zoo.get_spec(name)
    return model


class _Noisy(torch.nn.Module):
    def __init__(self, decoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, features):
        out = self.decoder(features)
        return out + torch.randn_like(out)


def test_the_kit_catches_a_random_eval_mode(registry):
    @zoo.register_encoder("mini-noisy", description="d", channels=(32, 64, 128), reductions=(1, 2, 4),
                          input_multiple=4)
    def build(num_classes, in_channels=3):
        return zoo.SegmentationModel(MiniEncoder(in_channels), _Noisy(MiniDecoder(num_classes)),
                                     zoo.get_spec("mini-noisy"), num_classes, in_channels)

    with pytest.raises(AssertionError, match="two eval-mode passes differ"):
        check_encoder("mini-noisy", in_channels=(3,), sizes=[(16, 16)])


def test_unet_base_width_scales_the_network_and_is_recorded_for_rebuilding():
    """`base_width` (the paper's 64, the zoo's default 32) doubles per level; checkpoints rebuild it from
    `model_kwargs`, and a nonsense width is a ZooError naming the option."""
    small, default = zoo.create_model("unet", 2, in_channels=1, base_width=16), zoo.create_model("unet", 2, 1)
    ratio = sum(p.numel() for p in default.parameters()) / sum(p.numel() for p in small.parameters())
    assert 2.5 < ratio < 4.5  # most weights scale with the width squared (the first and last layers do not)
    assert small.model_kwargs == {"base_width": 16} and default.model_kwargs == {}
    rebuilt = zoo.create_model("unet", 2, 1, **small.model_kwargs)
    rebuilt.load_state_dict(small.state_dict())
    assert small(torch.zeros(1, 1, 32, 32)).shape == (1, 2, 32, 32)
    with pytest.raises(zoo.ZooError, match="base_width"):
        zoo.create_model("unet", 2, 1, base_width=0)
