"""`mobilenet`: the tutorial's Keras `mobilenet_unet`, ported layer for layer (6,483,586 trainable parameters at
2 classes; Keras reports 6,500,482 because it counts the BN moving statistics).

Encoder: MobileNetV1 up to the 11th depthwise-separable block (stride 16); the 1024-wide blocks 12-13 feed
nothing in the decoder and are left out. Padding follows the tutorial's encoder (keras_segmentation): every 3x3
conv, stride 2 included, is ZeroPadding2D((1, 1)) + 'valid', i.e. PyTorch padding=1. (keras.applications'
MobileNet pads stride-2 layers by ((0, 1), (0, 1)) instead, as TF 'same' does; the tutorial loads the same
ImageNet weights into its symmetric padding, and so does this port.) BN layers use Keras' epsilon 1e-3.

`weights=` accepts the Keras file `mobilenet_1_0_224_tf_no_top.h5` (layers conv1, conv1_bn, conv_dw_N,
conv_dw_N_bn, conv_pw_N, conv_pw_N_bn) and maps it onto the encoder; reading it needs h5py (extra `keras`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._errors import ZooError
from ._keras import glorot_init_, keras_batch_norm
from ._layers import NearestUpsample
from ._registry import get_spec, register_encoder
from ._spec import TUTORIAL
from .model import SegmentationModel
from .weights import load_weights

KERAS_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/"
_KERAS_ALPHAS = {1.0: "1_0", 0.75: "7_5", 0.5: "5_0", 0.25: "2_5"}

# (width, stride) of the depthwise-separable blocks conv_dw_1/conv_pw_1 .. conv_dw_11/conv_pw_11
_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)) + ((512, 1),) * 5
_FEATURE_BLOCKS = (1, 3, 5, 11)  # f1..f4 at strides 2, 4, 8, 16


class _DepthwiseSeparable(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(in_channels, in_channels, 3, stride, padding=1, groups=in_channels, bias=False)
        self.dw_bn = keras_batch_norm(in_channels)
        self.pw = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.pw_bn = keras_batch_norm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.dw_bn(self.dw(x)))
        return F.relu6(self.pw_bn(self.pw(x)))


class MobileNetV1Encoder(nn.Module):
    """Returns f1..f4 (strides 2, 4, 8, 16); `blocks[i]` is Keras' conv_dw_{i+1}/conv_pw_{i+1}."""

    def __init__(self, in_channels: int = 3, alpha: float = 1.0) -> None:
        super().__init__()
        width = int(32 * alpha)
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=2, padding=1, bias=False)
        self.conv1_bn = keras_batch_norm(width)
        blocks = []
        for channels, stride in _BLOCKS:
            blocks.append(_DepthwiseSeparable(width, int(channels * alpha), stride))
            width = int(channels * alpha)
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = tuple(int(_BLOCKS[i - 1][0] * alpha) for i in _FEATURE_BLOCKS)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.relu6(self.conv1_bn(self.conv1(x)))
        features = []
        for i, block in enumerate(self.blocks, start=1):
            x = block(x)
            if i in _FEATURE_BLOCKS:
                features.append(x)
        return features

    def keras_state_dict(self, path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
        """This encoder's state dict from a Keras MobileNet .h5 file (kernels transposed to PyTorch layout)."""
        layers = _read_keras_layers(path)
        state: dict[str, torch.Tensor] = {}

        def conv(key: str, layer: str, depthwise: bool = False) -> None:
            kernel = layers.get(layer, {}).get("depthwise_kernel" if depthwise else "kernel")
            if kernel is not None:  # Keras (kh, kw, in, out) and depthwise (kh, kw, channels, 1)
                state[key] = torch.from_numpy(np.ascontiguousarray(
                    kernel.transpose(2, 3, 0, 1) if depthwise else kernel.transpose(3, 2, 0, 1)))

        def batch_norm(prefix: str, layer: str) -> None:
            arrays = layers.get(layer, {})
            for ours, theirs in (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"),
                                 ("running_var", "moving_variance")):
                if theirs in arrays:
                    state[f"{prefix}.{ours}"] = torch.from_numpy(np.ascontiguousarray(arrays[theirs]))

        conv("conv1.weight", "conv1")
        batch_norm("conv1_bn", "conv1_bn")
        for i in range(1, len(self.blocks) + 1):
            conv(f"blocks.{i - 1}.dw.weight", f"conv_dw_{i}", depthwise=True)
            batch_norm(f"blocks.{i - 1}.dw_bn", f"conv_dw_{i}_bn")
            conv(f"blocks.{i - 1}.pw.weight", f"conv_pw_{i}")
            batch_norm(f"blocks.{i - 1}.pw_bn", f"conv_pw_{i}_bn")
        if not state:
            raise ZooError(f"{path} holds none of the Keras MobileNet layers (conv1, conv1_bn, conv_dw_N, "
                           "conv_pw_N, ...)")
        return state


def _read_keras_layers(path: str | os.PathLike[str]) -> dict[str, dict[str, np.ndarray]]:
    """{layer: {weight name: array}} of a Keras 2 .h5 file (save_weights, or model.save under model_weights)."""
    try:
        import h5py
    except ImportError:
        raise ZooError("reading Keras .h5 weights needs h5py: pip install 'unet-zoo[keras]'") from None
    layers: dict[str, dict[str, np.ndarray]] = {}
    with h5py.File(path, "r") as f:
        root = f.get("model_weights", f)
        for layer, group in root.items():
            if not isinstance(group, h5py.Group):
                continue
            arrays: dict[str, np.ndarray] = {}

            def collect(key: str, obj: object, arrays: dict[str, np.ndarray] = arrays) -> None:
                if isinstance(obj, h5py.Dataset):  # "conv1/kernel:0" -> "kernel"
                    arrays[key.rsplit("/", 1)[-1].split(":")[0]] = np.asarray(obj[()], dtype=np.float32)

            group.visititems(collect)
            layers[layer] = arrays
    return layers


def _conv_relu_bn(in_channels: int, out_channels: int) -> nn.Sequential:
    """Keras Conv2D(activation='relu') then BatchNormalization, as the tutorial's decoder stacks them."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(inplace=True),
                         keras_batch_norm(out_channels))


class MobileNetUNetDecoder(nn.Module):
    def __init__(self, num_classes: int, feature_channels: tuple[int, ...]) -> None:
        super().__init__()
        c1, c2, c3, c4 = feature_channels
        self.up = NearestUpsample(2)
        self.block4 = _conv_relu_bn(c4, 512)
        self.block3 = _conv_relu_bn(512 + c3, 256)
        self.block2 = _conv_relu_bn(256 + c2, 128)
        self.block1 = _conv_relu_bn(128 + c1, 128)
        self.block0 = _conv_relu_bn(128, 64)
        self.head = nn.Conv2d(64, num_classes, 3, padding=1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        f1, f2, f3, f4 = features
        x = self.block4(f4)
        x = self.block3(torch.cat([self.up(x), f3], dim=1))
        x = self.block2(torch.cat([self.up(x), f2], dim=1))
        x = self.block1(torch.cat([self.up(x), f1], dim=1))
        return self.head(self.block0(self.up(x)))


def _download_keras_weights(alpha: float) -> Path:
    """Keras' own download of the ImageNet file, cached in torch's hub folder."""
    if alpha not in _KERAS_ALPHAS:
        raise ZooError(f"Keras ImageNet weights exist for alpha {sorted(_KERAS_ALPHAS)} only, not {alpha}")
    name = f"mobilenet_{_KERAS_ALPHAS[alpha]}_224_tf_no_top.h5"
    target = Path(torch.hub.get_dir()) / "checkpoints" / name
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(KERAS_WEIGHTS_URL + name, str(target))
    return target


@register_encoder("mobilenet", description="the tutorial's mobilenet_unet: MobileNetV1 (alpha) to stride 16, "
                  "Keras decoder", channels=(64, 128, 256, 512), reductions=(2, 4, 8, 16), input_multiple=32,
                  normalization=TUTORIAL, origin="tutorial keras mobilenet_unet", pretrained=("imagenet",))
def mobilenet(num_classes: int, in_channels: int = 3, weights: str | None = None,
              alpha: float = 1.0) -> SegmentationModel:
    """`channels` in the spec are those of alpha=1.0; other widths scale them by alpha."""
    if alpha <= 0:
        raise ZooError(f"mobilenet alpha must be positive, got {alpha}")
    encoder = MobileNetV1Encoder(in_channels, alpha)
    model = SegmentationModel(encoder, MobileNetUNetDecoder(num_classes, encoder.out_channels),
                              get_spec("mobilenet"), num_classes, in_channels, {"alpha": alpha})
    glorot_init_(model)
    if weights == "imagenet":
        load_weights(model, _download_keras_weights(alpha))
    return model
