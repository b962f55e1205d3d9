"""Every adapter is checked on the same base: one that rewrites it, or crashes half-way through loading, changes
no other adapter's verdict (issue 17)."""

import json

import pytest
import torch

from lora_harness.bases.digests import digest_parameters
from lora_harness.bases.families import pipeline_signature
from lora_harness.bases.tiny_base import build_tiny_pipeline
from lora_harness.fixtures.adapter_writers import ATTENTION_TARGETS
from lora_harness.loading.adapter_file import AdapterLoadError, read_adapter
from lora_harness.loading.kinds import apply_adapter
from tests.helpers import INTERLEAVING, modules_to_save_folder

# The reference is trained and the controls run: they are rendered on the base as first digested too.
MECHANICAL = "wiring or frozen_base or param_budget or pixel_diff or weight_health"
SETTINGS = ("--render-seeds", "1", "--render-steps", "2", "-k", MECHANICAL)


@pytest.fixture(scope="module")
def pissa_folder(tmp_path_factory):
    """As a user's PiSSA training saves it without conversion: peft's own get_peft_model and save_pretrained."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=4, target_modules=list(ATTENTION_TARGETS), init_lora_weights="pissa")
    model = get_peft_model(build_tiny_pipeline().unet, config)
    with torch.no_grad():  # a step of training: B moves off its initial value
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.mul_(1.5)
    folder = tmp_path_factory.mktemp("pissa") / "pissa"
    model.save_pretrained(folder)
    return folder


def _loaded_state(pipeline) -> dict:
    """Everything an injection can leave behind: LoRA layers, adapter names, peft configs, hooks."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    models = {name: model for name, model in pipeline.components.items() if isinstance(model, torch.nn.Module)}
    modules = {f"{c}.{n}": module for c, model in models.items() for n, module in model.named_modules()}
    return {
        "tuner_layers": sorted(name for name, module in modules.items() if isinstance(module, BaseTunerLayer)),
        "adapters": {c: names for c, names in pipeline.get_list_adapters().items() if names},
        "peft_configs": sorted(c for c, model in models.items() if getattr(model, "peft_config", None)),
        "hooks": sum(len(module._forward_hooks) + len(module._forward_pre_hooks) for module in modules.values()),
    }


def test_a_pissa_adapter_saved_without_conversion_is_refused_and_leaves_the_base_untouched(pissa_folder):
    assert json.loads((pissa_folder / "adapter_config.json").read_text())["init_lora_weights"] == "pissa"
    pipeline = build_tiny_pipeline()
    before, state = digest_parameters(pipeline), _loaded_state(pipeline)
    with pytest.raises(AdapterLoadError) as refused:
        apply_adapter(pipeline, pipeline_signature(pipeline), read_adapter(pissa_folder), "a")
    message = str(refused.value)
    assert str(pissa_folder / "adapter_config.json") in message
    assert "init_lora_weights='pissa' without conversion" in message and "residual" in message
    assert "path_initial_model_for_weight_conversion" in message
    assert digest_parameters(pipeline) == before and _loaded_state(pipeline) == state


def test_a_crash_half_way_through_injection_leaves_no_layer_adapter_name_or_hook(write_lora, monkeypatch):
    """The layers are in (peft built them) when the proof raises, as an unexpected layer type makes it."""
    import lora_harness.loading.peft_injection as peft_injection

    def crashing_prove(*args, **kwargs):
        raise AttributeError("'Conv2d' object has no attribute 'groups'")

    pipeline = build_tiny_pipeline()
    signature = pipeline_signature(pipeline)
    good = read_adapter(write_lora("peft", "good"))
    before, state = digest_parameters(pipeline), _loaded_state(pipeline)
    expected = apply_adapter(pipeline, signature, good, "first").record()
    assert _loaded_state(pipeline) != state  # what the state would show of an adapter left behind
    peft_injection.remove_adapter(pipeline, "first")
    monkeypatch.setattr(peft_injection, "_prove", crashing_prove)
    with pytest.raises(AttributeError, match="groups"):
        apply_adapter(pipeline, signature, read_adapter(write_lora("kohya", "crash.safetensors")), "crash")
    assert _loaded_state(pipeline) == state and digest_parameters(pipeline) == before
    monkeypatch.undo()
    assert apply_adapter(pipeline, signature, good, "after").record() == expected


# Once loaded, fused.safetensors is fused into the base weights (as `fuse_lora` does) and crash.safetensors raises,
# its layers in.
REWRITING_AND_CRASHING = """
def pytest_lora_adapter_loaded(harness, adapter):
    if adapter.name == "fused.safetensors":
        harness.base.pipeline.fuse_lora(adapter_names=[adapter.spec.slot])
    if adapter.name == "crash.safetensors":
        raise AttributeError("'Conv2d' object has no attribute 'groups'")
"""


def _verdicts(pytester) -> tuple[dict, dict]:
    """(adapter, check) -> (status, value, message); and the controls, whose renders every verdict relies on."""
    document = json.loads((pytester.path / "lora-report" / "results.json").read_text())
    verdicts = {(r["adapter"], r["check"]): (r["status"], r["value"], r["message"]) for r in document["results"]}
    return verdicts, document["controls"]


def test_adapters_that_rewrite_the_base_or_crash_change_no_later_verdict(pytester, write_lora, pissa_folder, tmp_path):
    good = [write_lora("kohya", "good.safetensors"), write_lora("peft", "good-peft", rank=2, alpha=4)]
    bad = [pissa_folder, write_lora("kohya", "fused.safetensors"), write_lora("kohya", "crash.safetensors")]
    replacing, _, _ = modules_to_save_folder(tmp_path / "replacing", moved=0.2)  # swaps whole modules in and out

    def run(*paths):
        adapters = [argument for path in paths for argument in ("--adapter", path)]
        return pytester.runpytest_inprocess("-p", "no:cacheprovider", *adapters, *SETTINGS)

    run(*good).assert_outcomes(passed=10)
    alone, controls_alone = _verdicts(pytester)
    assert controls_alone["status"] == "passed"
    pytester.makeconftest(REWRITING_AND_CRASHING)
    result = run(replacing, *bad, *good)
    verdicts, controls = _verdicts(pytester)
    assert {key: verdicts[key] for key in alone} == alone and controls == controls_alone
    # PiSSA: refused before peft could initialise it, so nothing of the base changed
    assert {status for (adapter, _), (status, *_) in verdicts.items() if adapter == "pissa"} == {"failed"}
    assert "saved with init_lora_weights='pissa' without conversion" in verdicts[("pissa", "wiring")][2]
    # the fused adapter changed the weights it targets: named, then restored before the next adapter loaded
    status, changed, message = verdicts[("fused.safetensors", "frozen_base")]
    assert status == "failed" and changed == 64  # 32 weights, after rendering and after unloading
    first = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.weight"
    assert f"32 base parameters changed after unloading: {first}" in message
    result.stdout.fnmatch_lines(["*fused.safetensors changed 32 base parameters: restoring them from tiny*"])
    # the crash is an error of its own adapter's checks, nothing more
    assert {status for (adapter, _), (status, *_) in verdicts.items() if adapter == "crash.safetensors"} == {"error"}
    assert "no attribute 'groups'" in verdicts[("crash.safetensors", "wiring")][2]


def test_adapters_whose_checks_interleave_are_loaded_again_and_keep_their_verdicts(pytester, write_lora):
    adapters = [
        "--adapter",
        write_lora("kohya", "first.safetensors"),
        "--adapter",
        write_lora("peft", "second", rank=2),
    ]
    fast = ("-p", "no:cacheprovider", "--reference-steps", "0", *SETTINGS)
    pytester.runpytest_inprocess(*adapters, *fast).assert_outcomes(passed=10)
    together, _ = _verdicts(pytester)
    pytester.makeconftest(INTERLEAVING)
    result = pytester.runpytest_inprocess(*adapters, *fast)
    result.assert_outcomes(passed=10)
    interleaved, _ = _verdicts(pytester)
    assert interleaved == together
    result.stdout.fnmatch_lines(["*loading adapter second again: its checks did not run one after another*"])
