import pytest
import torch

from components.core.device import autocast_dtype, cpu_has_fast_bf16, needs_grad_scaler, pick_device


def test_explicit_precisions():
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, "fp32") is None
    assert autocast_dtype(cpu, "bf16") is torch.bfloat16
    assert autocast_dtype(cpu, "fp16") is torch.float16
    with pytest.raises(ValueError, match="precision"):
        autocast_dtype(cpu, "int8")


def test_auto_on_cpu_follows_the_hardware():
    expected = torch.bfloat16 if cpu_has_fast_bf16() else None
    assert autocast_dtype(torch.device("cpu")) is expected


def test_auto_dtype_runs_a_matmul():
    device = pick_device()
    dtype = autocast_dtype(device)
    a = torch.randn(8, 8, device=device)
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        out = a @ a
    assert torch.isfinite(out).all()
    assert not needs_grad_scaler(dtype, device) or device.type == "cuda"


def test_grad_scaler_only_for_fp16_on_gpu():
    assert needs_grad_scaler(torch.float16, torch.device("cuda"))
    assert not needs_grad_scaler(torch.bfloat16, torch.device("cuda"))
    assert not needs_grad_scaler(torch.float16, torch.device("cpu"))
