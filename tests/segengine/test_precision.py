"""Mixed precision where the CPU computes bf16 natively (segengine.precision): the logits stay close to fp32, come
back as fp32, and channels-last changes the layout only."""

import pytest
import torch

import zoo
from segengine.precision import Precision, autocast_dtype, cpu_computes_bf16

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return zoo.create_model("unet", 2, in_channels=1).eval()


def test_amp_off_is_fp32_and_channels_last_changes_nothing_but_layout(model):
    assert autocast_dtype(CPU, enabled=False) is None and Precision(CPU, amp=False).name == "fp32"
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        plain = model(x)
        nhwc = Precision(CPU, amp=False, channels_last=True)
        out = nhwc.forward(nhwc.model(model), x)
    model.to(memory_format=torch.contiguous_format)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, plain, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not cpu_computes_bf16(), reason="this CPU has no AMX: segengine.precision keeps fp32")
def test_bf16_autocast_on_an_amx_cpu_stays_close_to_fp32(model):
    precision = Precision(CPU)
    assert precision.dtype == torch.bfloat16 and precision.name == "bf16 autocast"
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        reference = model(x)
        out = precision.forward(model, x)
    model.to(memory_format=torch.contiguous_format)
    assert out.dtype == torch.float32
    relative = (out - reference).abs().max() / reference.abs().max()
    assert 0 < relative < 0.05, relative  # computed in bf16 (not identical), yet within bf16's 3 significant digits
