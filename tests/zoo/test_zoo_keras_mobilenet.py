"""Keras MobileNet .h5 weights for `mobilenet`, checked against numpy arithmetic on the h5 arrays themselves."""

import warnings

import h5py
import numpy as np
import pytest
import torch

import zoo
from zoo import ZooError
from zoo.weights import WeightsWarning

KERAS_BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]


def write_keras_mobilenet(path, blocks=13, seed=0):
    """A file laid out like mobilenet_1_0_224_tf_no_top.h5 (Keras 2 save_weights), with random values; BN
    variances are small so that Keras' epsilon 1e-3 matters."""
    rng = np.random.default_rng(seed)
    arrays = {}
    with h5py.File(path, "w") as f:
        names = []

        def layer(name, **weights):
            group = f.create_group(name)
            inner = group.create_group(name) if weights else group
            for key, value in weights.items():
                inner.create_dataset(f"{key}:0", data=value.astype(np.float32))
            group.attrs["weight_names"] = [f"{name}/{k}:0".encode() for k in weights]
            names.append(name.encode())
            arrays[name] = {k: v.astype(np.float32).astype(np.float64) for k, v in weights.items()}

        def bn(name, c):
            layer(name, gamma=rng.uniform(0.5, 1.5, c), beta=rng.normal(0, 0.1, c),
                  moving_mean=rng.normal(0, 0.1, c), moving_variance=rng.uniform(0.002, 0.02, c))

        layer("conv1_pad")  # weightless layers are stored as empty groups
        layer("conv1", kernel=rng.normal(0, 0.3, (3, 3, 3, 32)))
        bn("conv1_bn", 32)
        cin = 32
        for i, (cout, _) in enumerate(KERAS_BLOCKS[:blocks], start=1):
            layer(f"conv_dw_{i}", depthwise_kernel=rng.normal(0, 0.3, (3, 3, cin, 1)))
            bn(f"conv_dw_{i}_bn", cin)
            layer(f"conv_pw_{i}", kernel=rng.normal(0, 0.3, (1, 1, cin, cout)) / np.sqrt(cin))
            bn(f"conv_pw_{i}_bn", cout)
            cin = cout
        f.attrs["layer_names"] = names
    return arrays


def keras_conv(x, kernel, stride, depthwise=False):
    """ZeroPadding2D((1, 1)) then a 'valid' conv, as the tutorial's MobileNet does; x is H x W x C."""
    k = kernel.shape[0]
    if k == 3:
        x = np.pad(x, ((1, 1), (1, 1), (0, 0)))
    oh, ow = (x.shape[0] - k) // stride + 1, (x.shape[1] - k) // stride + 1
    out = 0
    for i in range(k):
        for j in range(k):
            window = x[i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride]
            out = out + (window * kernel[i, j, :, 0] if depthwise else window @ kernel[i, j])
    return out


def keras_bn_relu6(x, p):
    y = (x - p["moving_mean"]) / np.sqrt(p["moving_variance"] + 1e-3) * p["gamma"] + p["beta"]
    return np.clip(y, 0, 6)


def keras_features(arrays, x):
    """f1 (after block 1, stride 2) and f2 (after blocks 2-3, stride 4) of an H x W x 3 image."""
    x = keras_bn_relu6(keras_conv(x, arrays["conv1"]["kernel"], 2), arrays["conv1_bn"])
    features = []
    for i in (1, 2, 3):
        stride = KERAS_BLOCKS[i - 1][1]
        x = keras_bn_relu6(keras_conv(x, arrays[f"conv_dw_{i}"]["depthwise_kernel"], stride, depthwise=True),
                           arrays[f"conv_dw_{i}_bn"])
        x = keras_bn_relu6(keras_conv(x, arrays[f"conv_pw_{i}"]["kernel"], 1), arrays[f"conv_pw_{i}_bn"])
        if i in (1, 3):
            features.append(x)
    return features


def to_hwc(t):
    return t[0].permute(1, 2, 0).double().numpy()


def test_keras_h5_maps_onto_the_encoder(tmp_path):
    arrays = write_keras_mobilenet(tmp_path / "mobilenet_1_0_224_tf_no_top.h5")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every encoder tensor is in the file; blocks 12-13 are not ours
        model = zoo.create_model("mobilenet", 2, weights=tmp_path / "mobilenet_1_0_224_tf_no_top.h5").eval()
    image = np.random.default_rng(1).uniform(-1, 1, (32, 32, 3))
    expected = keras_features(arrays, image)
    with torch.no_grad():
        got = model.encoder(torch.from_numpy(image).permute(2, 0, 1)[None].float())
    assert got[0].shape == (1, 64, 16, 16) and got[1].shape == (1, 128, 8, 8)
    # float32 against float64; a wrong padding, kernel layout or BN epsilon is off by far more (>1e-2)
    np.testing.assert_allclose(to_hwc(got[0]), expected[0], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(to_hwc(got[1]), expected[1], rtol=1e-3, atol=1e-3)


def test_keras_h5_into_a_grey_model_sums_the_rgb_kernels(tmp_path):
    arrays = write_keras_mobilenet(tmp_path / "w.h5", blocks=3)
    with pytest.warns(WeightsWarning, match=r"missing: blocks\.3\.dw\.weight"):
        model = zoo.create_model("mobilenet", 2, in_channels=1, weights=tmp_path / "w.h5").eval()
    grey = np.random.default_rng(2).uniform(-1, 1, (32, 32, 1))
    expected = keras_features(arrays, np.repeat(grey, 3, axis=2))
    with torch.no_grad():
        got = model.encoder(torch.from_numpy(grey).permute(2, 0, 1)[None].float())
    np.testing.assert_allclose(to_hwc(got[0]), expected[0], rtol=1e-3, atol=1e-3)


def test_h5_without_mobilenet_layers_is_refused(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.create_group("dense_1").create_group("dense_1").create_dataset("kernel:0", data=np.zeros((2, 2)))
    with pytest.raises(ZooError, match="none of the Keras MobileNet layers"):
        zoo.create_model("mobilenet", 2, weights=tmp_path / "other.h5")


def test_imagenet_download_failure_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(zoo.mobilenet, "KERAS_WEIGHTS_URL", "http://127.0.0.1:9/")
    with pytest.raises(ZooError, match=r"could not load the 'imagenet' weights of encoder 'mobilenet' \(URLError"):
        zoo.create_model("mobilenet", 2, weights="imagenet")
    with pytest.raises(ZooError, match="alpha"):
        zoo.create_model("mobilenet", 2, weights="imagenet", alpha=0.6)
