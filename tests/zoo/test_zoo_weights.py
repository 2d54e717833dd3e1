"""weights=PATH: state dicts of the encoder or the whole model, in .pt and .safetensors, written here."""

import warnings

import pytest
import torch
from safetensors.torch import save_file

import zoo
from zoo import ZooError
from zoo.weights import WeightsWarning, load_weights


class NotWeights:
    """Pickled objects are code, not weights: torch.load(weights_only=True) must refuse them."""


def save(state, path):
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


def same_tensors(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(("name", "suffix"), [("resnet50", ".pt"), ("resnet50", ".safetensors"), ("vgg", ".pth")])
def test_encoder_and_whole_model_files(tmp_path, name, suffix):
    source = zoo.create_model(name, 2)
    with torch.no_grad():  # make BN statistics differ from a fresh model's
        for m in source.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)

    whole = save(source.state_dict(), tmp_path / f"whole{suffix}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a complete file loads without a warning
        target = zoo.create_model(name, 2, weights=whole)
    assert same_tensors(target.state_dict(), source.state_dict())
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(target.eval()(x), source.eval()(x))

    encoder_only = save(source.encoder.state_dict(), tmp_path / f"encoder{suffix}")
    fresh = zoo.create_model(name, 2)
    decoder_before = {k: v.clone() for k, v in fresh.decoder.state_dict().items()}
    report = load_weights(fresh, encoder_only)
    assert report.target == "encoder" and report.complete
    assert same_tensors(fresh.encoder.state_dict(), source.encoder.state_dict())
    assert same_tensors(fresh.decoder.state_dict(), decoder_before)


def test_a_torchvision_style_file_reports_unexpected_and_missing_keys(tmp_path):
    source = zoo.create_model("resnet50", 2).encoder.state_dict()
    state = dict(source, **{"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)})
    del state["layer4.2.bn3.weight"]
    path = save(state, tmp_path / "resnet50-torchvision.pth")
    model = zoo.create_model("resnet50", 2)
    with pytest.warns(WeightsWarning, match=r"missing: layer4\.2\.bn3\.weight; unexpected: fc\.weight, fc\.bias"):
        report = load_weights(model, path)
    assert report.target == "encoder"
    assert report.missing == ["layer4.2.bn3.weight"] and sorted(report.unexpected) == ["fc.bias", "fc.weight"]
    assert torch.equal(model.encoder.conv1.weight, source["conv1.weight"])


def test_rgb_first_conv_is_adapted_to_other_channel_counts(tmp_path):
    source = zoo.create_model("resnet50", 2)
    path = save(source.encoder.state_dict(), tmp_path / "rgb.safetensors")
    rgb = source.encoder.conv1.weight.detach()

    grey = zoo.create_model("resnet50", 2, in_channels=1, weights=path)
    torch.testing.assert_close(grey.encoder.conv1.weight, rgb.sum(dim=1, keepdim=True))
    # a grey image through the adapted kernels = the same grey in all three RGB channels
    x = torch.rand(1, 1, 64, 64)
    torch.testing.assert_close(grey.encoder.eval()(x)[1], source.encoder.eval()(x.expand(1, 3, 64, 64))[1])

    four = zoo.create_model("resnet50", 2, in_channels=4, weights=path)
    torch.testing.assert_close(four.encoder.conv1.weight, rgb[:, [0, 1, 2, 0]] * 0.75)


def test_wrapped_checkpoints_and_other_heads(tmp_path):
    source = zoo.create_model("mini", 3)
    wrapped = {"epoch": 4, "model": {f"module.{k}": v for k, v in source.state_dict().items()}}
    path = tmp_path / "checkpoint.pt"
    torch.save(wrapped, path)
    with pytest.warns(WeightsWarning, match=r"shape mismatch: decoder\.head\.weight \(3, 32, 1, 1\) vs "
                                            r"\(2, 32, 1, 1\), decoder\.head\.bias"):
        report = load_weights(target := zoo.create_model("mini", 2), path)
    assert report.target == "model" and not report.missing and not report.unexpected
    assert torch.equal(target.encoder.level1[0].weight, source.encoder.level1[0].weight)


def test_unusable_files_are_clear_errors(tmp_path):
    model = zoo.create_model("mini", 2)
    foreign = save({"something.else": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(ZooError, match="no tensor in .*foreign.pt fits encoder 'mini'"):
        load_weights(model, foreign)

    torch.save({"obj": NotWeights()}, tmp_path / "pickle.pt")
    with pytest.raises(ZooError, match="cannot read .* as a plain state dict"):
        load_weights(model, tmp_path / "pickle.pt")
    (tmp_path / "w.h5").write_bytes(b"")
    with pytest.raises(ZooError, match="cannot read Keras .h5 weights"):
        load_weights(model, tmp_path / "w.h5")
    with pytest.raises(ZooError, match="unsupported weights file"):
        load_weights(model, tmp_path / "w.onnx")


def test_imagenet_without_internet_is_a_clear_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ZooError, match=r"could not load the 'imagenet' weights of encoder 'resnet50' .*"
                                       r"needs internet access: download them elsewhere and pass weights=PATH"):
        zoo.create_model("resnet50", 2, weights="imagenet")
