"""Sliding-window inference: windows cover every pixel, blending is seamless, and a window that covers the whole
image gives exactly whole-image inference."""

import pytest
import torch

import zoo
from segengine.windows import sliding_probabilities, window_starts, window_weights


def test_window_starts_cover_the_axis_and_end_flush():
    assert window_starts(170, 64, 0.25) == [0, 48, 96, 106]
    assert window_starts(50, 64, 0.25) == [0]
    assert window_starts(128, 64, 0.0) == [0, 64]
    weights = window_weights(64, 64, 0.25)
    assert weights.min() > 0 and weights.max() == 1.0


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return zoo.create_model("unet", 3, in_channels=1).eval()


def test_a_window_covering_the_image_equals_whole_image_inference(model):
    image = torch.randn(1, 64, 96)
    with torch.no_grad():
        direct = torch.softmax(model(image[None]), 1)[0]
    for window in ((64, 96), (128, 128)):  # exactly the image, and larger (padded, then cut)
        probs = sliding_probabilities(model, image, window, 0.25, 3, pad_value=[0.0])
        assert probs.shape == (3, 64, 96)
        if window == (64, 96):
            torch.testing.assert_close(probs, direct, atol=1e-6, rtol=0)
    # windows smaller than the image: a proper distribution per pixel, close to whole-image inference inside
    tiled = sliding_probabilities(model, image, (32, 48), 0.5, 3, pad_value=[0.0])
    torch.testing.assert_close(tiled.sum(0), torch.ones(64, 96))


def test_blending_constant_windows_gives_the_constant():
    """A model whose output does not depend on position: any tiling blends back to the same probabilities."""

    class Constant(torch.nn.Module):
        def forward(self, x):
            logits = torch.tensor([0.3, -1.0])[None, :, None, None]
            return logits.expand(x.shape[0], 2, x.shape[2], x.shape[3])

    probs = sliding_probabilities(Constant(), torch.zeros(1, 100, 75), (32, 32), 0.25, 2, pad_value=[0.0])
    expected = torch.softmax(torch.tensor([0.3, -1.0]), 0)
    torch.testing.assert_close(probs, expected[:, None, None].expand(2, 100, 75))


def test_mirrored_windows_average_the_four_flips(model):
    """Test-time mirroring: the mean of the softmax of the image, flipped left-right, up-down and both, each
    flipped back."""
    image = torch.randn(1, 64, 96)
    mirrored = sliding_probabilities(model, image, (64, 96), 0.25, 3, pad_value=[0.0], mirror=True)
    with torch.no_grad():
        flips = [torch.softmax(model(image[None].flip(f)), 1).flip(f)[0] for f in ((), (3,), (2,), (2, 3))]
    torch.testing.assert_close(mirrored, sum(flips) / 4, atol=1e-6, rtol=0)
    plain = sliding_probabilities(model, image, (64, 96), 0.25, 3, pad_value=[0.0])
    assert (mirrored - plain).abs().max() > 1e-4  # an untrained net is not flip-equivariant: mirroring changed it
