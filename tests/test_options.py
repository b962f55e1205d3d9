import pytest

from lora_harness.config.options import (
    ParamBudget,
    parse_device,
    parse_non_negative_float,
    parse_non_negative_int,
    parse_param_budget,
    parse_render_size,
)


@pytest.mark.parametrize("value, size", [("64", 64), (" 512 ", 512), ("8", 8)])
def test_render_size_accepts_multiples_of_8(value, size):
    assert parse_render_size(value) == size


@pytest.mark.parametrize("value", ["30", "0", "-8", "64px", ""])
def test_render_size_rejects_other_values_quoting_them(value):
    with pytest.raises(ValueError, match="render size") as error:
        parse_render_size(value)
    assert repr(value) in str(error.value)


def test_param_budget_count_and_percent():
    assert parse_param_budget("1_000_000") == ParamBudget(count=1_000_000)
    assert parse_param_budget("2%") == ParamBudget(percent=2.0)
    assert parse_param_budget("2%").limit(859_520_964) == 17_190_419
    assert parse_param_budget("5000").limit(859_520_964) == 5000


@pytest.mark.parametrize("value", ["lots", "-3", "120%", "-1%"])
def test_param_budget_rejects(value):
    with pytest.raises(ValueError, match="budget"):
        parse_param_budget(value)


def test_numbers_and_devices():
    assert parse_non_negative_int("0", "steps") == 0
    assert parse_non_negative_float("0.5", "floor") == 0.5
    with pytest.raises(ValueError, match="steps must be 0 or more"):
        parse_non_negative_int("-1", "steps")
    with pytest.raises(ValueError, match="floor"):
        parse_non_negative_float("nan", "floor")
    assert parse_device("CUDA:1") == "cuda:1"
    with pytest.raises(ValueError, match="device"):
        parse_device("tpu")


@pytest.mark.parametrize(
    "device, worker, gpus, expected",
    [
        ("auto", None, 4, "cuda"),  # a plain run leaves the choice to torch
        ("auto", 5, 4, "cuda:1"),  # xdist worker gw5 on a 4-GPU machine
        ("cuda", 2, 4, "cuda:2"),
        ("cuda", 3, 1, "cuda"),  # one GPU: every worker shares it
        ("cuda:0", 3, 4, "cuda:0"),  # an explicit index is kept
        ("cpu", 3, 4, "cpu"),
    ],
)
def test_each_xdist_worker_takes_its_own_gpu(monkeypatch, device, worker, gpus, expected):
    import torch

    from lora_harness.config.config import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    assert resolve_device(device, worker) == expected
