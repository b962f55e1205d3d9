"""`--offload` (ini `lora_offload`): the pipeline runs with diffusers' model CPU offload on CUDA, so a base larger than
GPU memory fits. No GPU was lent, so no offloaded run is tested: what is tested is what holds without one (the option,
its ini twin, what results.json records and says when there is no CUDA device, a run that asked for it checking as
usual) and the placement diffusers makes, which needs no device until a model runs."""

import shutil

import pytest
import torch

from tests.helpers import FAST, MECHANICAL, offloaded_config, results

NOT_USED = "requested; not used: no CUDA device (--device cpu)"


@pytest.mark.parametrize(
    "requested, device, used, choice",
    [
        (False, "cpu", False, "not requested: every model on cpu"),
        (False, "cuda", False, "not requested: every model on cuda"),
        (True, "cuda", True, "requested; used: diffusers' model CPU offload onto cuda (each model on the CPU"),
        (True, "cuda:1", True, "requested; used: diffusers' model CPU offload onto cuda:1"),
        (True, "cpu", False, NOT_USED + "; model CPU offload moves each model onto a CUDA device while it runs"),
        (True, "mps", False, "requested; not used: no CUDA device (--device mps)"),
    ],
)
def test_offload_is_used_only_onto_a_cuda_device(requested, device, used, choice):
    from lora_harness.bases.base import resolve_offload

    resolved, why = resolve_offload(requested, device)
    assert resolved is used and why.startswith(choice)


@pytest.mark.parametrize("device, execution", [("cuda", "cuda:0"), ("cuda:1", "cuda:1")])
def test_an_offloaded_base_waits_on_the_cpu_hooked_to_run_on_the_cuda_device(tmp_path, device, execution):
    """diffusers' `enable_model_cpu_offload` places hooks and moves nothing until a model runs, so the placement is
    checkable here: every model on the CPU with accelerate's `CpuOffload` hook, the pipeline computing on the device
    given (a `pipeline.to("cuda")` instead would raise here, having no CUDA)."""
    from lora_harness.bases.base import load_base

    pipeline = load_base(offloaded_config(tmp_path, device)).pipeline
    assert pipeline._execution_device == torch.device(execution)
    for name in ("text_encoder", "unet", "vae"):
        model = getattr(pipeline, name)
        assert type(getattr(model, "_hf_hook", None)).__name__ == "CpuOffload", name
        assert {parameter.device.type for parameter in model.parameters()} == {"cpu"}, name


def test_offload_without_cuda_says_so_and_the_run_checks_as_usual(pytester, write_lora):
    adapter = write_lora("kohya", "style.safetensors")
    result = pytester.runpytest_inprocess("--adapter", adapter, "--offload", *FAST, *MECHANICAL)
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines([f"*loading base model tiny, float32 (*); offload {NOT_USED}*"])
    settings = results(pytester)["settings"]
    assert settings["offload_requested"] is True and settings["offload"] is False
    assert settings["offload_choice"].startswith(NOT_USED)


def test_the_ini_twin_requests_offload_and_without_either_it_is_off(pytester, write_lora):
    # Inside the run's folder, or pytest takes the files' common ancestor as its rootdir and never sees the ini.
    adapter = shutil.copy(write_lora("kohya", "a.safetensors"), pytester.path)
    pytester.runpytest_inprocess("--adapter", adapter, *FAST, "-k", "param_budget").assert_outcomes(passed=1)
    settings = results(pytester)["settings"]
    assert (settings["offload_requested"], settings["offload"]) == (False, False)
    assert settings["offload_choice"] == "not requested: every model on cpu"
    pytester.makeini("[pytest]\nlora_offload = true\n")
    pytester.runpytest_inprocess("--adapter", adapter, *FAST, "-k", "param_budget").assert_outcomes(passed=1)
    settings = results(pytester)["settings"]
    assert (settings["offload_requested"], settings["offload"]) == (True, False)
    assert settings["offload_choice"].startswith(NOT_USED)


def test_help_lists_the_option(pytester):
    result = pytester.runpytest_inprocess("--help")
    result.stdout.fnmatch_lines(["*--offload*Run the pipeline with diffusers' model CPU offload*", "*lora_offload*"])
