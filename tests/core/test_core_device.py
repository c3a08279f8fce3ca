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


# --- precision: auto on a CPU follows a measurement, cached per CPU and width ---------------

import json
import os

from components.core import device as device_mod


@pytest.fixture()
def precision_cache(tmp_path, monkeypatch):
    """An empty measurement cache of this test's own, and no answers kept in memory."""
    monkeypatch.setenv("VITPIPE_CACHE", str(tmp_path))
    return tmp_path


def _tiny_vit():
    from components.models import build_model

    return build_model("vit_demo", num_classes=3, img_size=32)


def test_speedup_measurement_leaves_the_model_and_rng_alone():
    model = _tiny_vit().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    speedup = device_mod.measure_bf16_speedup(model, min_pairs=2, max_pairs=2)
    assert 0.01 < speedup < 100
    assert torch.equal(torch.rand(3), expected_draw)  # the seeded stream did not move
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_measured_answer_is_cached_on_disk(precision_cache):
    model = _tiny_vit()
    dtype = autocast_dtype(torch.device("cpu"), "auto", model, train=True)
    files = list(precision_cache.glob("cpu-precision-*.json"))
    if not cpu_has_fast_bf16():  # no native bf16: fp32 without measuring anything
        assert dtype is None and not files
        return
    if not files:  # measured on a machine too busy to keep the answer
        assert os.getloadavg()[0] > 2 * (os.cpu_count() or 1)
        return
    (entry,) = json.loads(files[0].read_text()).values()
    assert (dtype is torch.bfloat16) == (entry["speedup"] >= device_mod.BF16_MIN_SPEEDUP)


@pytest.mark.parametrize("speedup", [0.7, 1.05, 3.0])
def test_auto_follows_the_cached_measurement(precision_cache, speedup):
    model = _tiny_vit()
    key = device_mod._model_key(model, 4, True)
    device_mod._cache_file().write_text(json.dumps({key: {"speedup": speedup}}))
    expected = torch.bfloat16 if cpu_has_fast_bf16() and speedup >= device_mod.BF16_MIN_SPEEDUP else None
    assert autocast_dtype(torch.device("cpu"), "auto", model, train=True) is expected
    assert autocast_dtype(torch.device("cpu"), "fp32", model) is None  # explicit always wins


def test_a_damaged_cache_is_measured_again(precision_cache):
    device_mod._cache_file().write_text("[not json")
    model = _tiny_vit()
    device_mod.cpu_bf16_is_faster(model)  # no exception; rewritten when bf16 is native here
    if cpu_has_fast_bf16() and os.getloadavg()[0] <= 2 * (os.cpu_count() or 1):
        assert device_mod._model_key(model, 4, True) in json.loads(device_mod._cache_file().read_text())
