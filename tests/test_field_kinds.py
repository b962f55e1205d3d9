"""Valid files of kinds the harness does not apply, written by the library that makes them (peft), named for what
they are and what applies them, never called damaged; and field kinds that are applied: DyLoRA, which is
LoRA-shaped, PEFT's `lora_bias` and `modules_to_save`."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.helpers import FAST, MECHANICAL, modules_to_save_folder, records, results

DAMAGED = ("damaged", "export it again", "written wrongly")


@pytest.fixture(scope="module")
def unapplied_files(tmp_path_factory):
    """file name -> (path, the kind its message must name)."""
    from peft import OFTConfig, get_peft_model

    from lora_harness.bases.tiny_base import build_tiny_pipeline

    folder = tmp_path_factory.mktemp("unapplied")
    files = {}
    targets = ["to_q", "to_k", "to_v", "to_out.0"]
    for name, config, kind in (
        # LoHa and LoKr are applied (tests/test_peft_tuners.py); OFT rotates the weights, which peft alone applies
        (
            "peft-oft",
            OFTConfig(r=0, oft_block_size=8, target_modules=targets),
            "a PEFT adapter of a kind other than LoRA",
        ),
    ):
        get_peft_model(build_tiny_pipeline().unet, config).save_pretrained(folder / name)
        files[name] = (folder / name, kind)
    return files


def test_valid_files_of_unapplied_kinds_are_named_never_called_damaged(pytester, unapplied_files, write_lora):
    adapters = [a for path, _ in unapplied_files.values() for a in ("--adapter", path)]
    good = write_lora("kohya", "good.safetensors")
    result = pytester.runpytest_inprocess("--adapter", good, *adapters, *FAST, "-k", "wiring")
    result.assert_outcomes(passed=1, failed=len(unapplied_files))
    found = records(pytester)
    for name, (_, kind) in unapplied_files.items():
        message = found[(name, "wiring")]["message"]
        assert kind in message and "a valid file of a kind lora-harness does not apply yet" in message, message
        assert "it is applied by" in message and not any(word in message for word in DAMAGED), message


def test_a_dylora_file_with_an_integer_alpha_is_applied_at_its_scale(pytester, tiny_unet, tmp_path):
    """kohya sd-scripts' `networks/dylora.py` saves `torch.tensor(alpha)` with alpha = the rank when none was given:
    an int64 alpha beside LoRA-shaped `lora_down` / `lora_up`. LyCORIS's own DyLoRA saves a float alpha."""
    from lora_harness.fixtures.adapter_writers import make_lora, write_adapter

    kohya = write_adapter("kohya", make_lora(tiny_unet, rank=4, seed=1), tmp_path / "kohya.safetensors", 4, 2)
    tensors = load_file(kohya)
    dylora = {k: (torch.tensor(4) if k.endswith(".alpha") else v) for k, v in tensors.items()}
    save_file(dylora, tmp_path / "dylora.safetensors", metadata={"ss_network_module": "networks.dylora"})
    pytester.runpytest_inprocess("--adapter", tmp_path / "dylora.safetensors", *FAST, *MECHANICAL).assert_outcomes(
        passed=5
    )
    (adapter,) = results(pytester)["adapters"]
    assert adapter["tensors_applied"] == adapter["tensors"] == 64 and adapter["scale"] == 1.0  # alpha 4 / rank 4


def test_a_lycoris_dylora_file_is_applied(pytester, tmp_path):
    from lora_harness.bases.tiny_base import build_tiny_pipeline
    from lora_harness.fixtures.adapter_writers import write_lycoris

    dylora = write_lycoris(build_tiny_pipeline(), tmp_path / "dylora.safetensors", "dylora", rank=4, alpha=2)
    pytester.runpytest_inprocess("--adapter", dylora, *FAST, *MECHANICAL).assert_outcomes(passed=5)
    (adapter,) = results(pytester)["adapters"]
    assert adapter["tensors_applied"] == adapter["tensors"] == 2 * (32 + 8) and adapter["scale"] == 0.5


def test_a_peft_lora_with_lora_bias_is_applied_with_every_bias_proven(pytester, tmp_path):
    """peft's `lora_bias=True` puts a bias on each B (scaled with it); diffusers' loader takes it (`lora_B.bias`)."""
    from peft import LoraConfig, get_peft_model

    from lora_harness.bases.tiny_base import build_tiny_pipeline

    config = LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0"], lora_bias=True)
    model = get_peft_model(build_tiny_pipeline().unet, config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # B and its bias start at zero: move them as training would
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    model.save_pretrained(tmp_path / "lora-bias")
    pytester.runpytest_inprocess("--adapter", tmp_path / "lora-bias", *FAST, *MECHANICAL).assert_outcomes(passed=5)
    (adapter,) = results(pytester)["adapters"]
    assert adapter["tensors_applied"] == adapter["tensors"] == 3 * 32  # A, B and B's bias on 32 projections
    trained = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert adapter["scale"] == 2.0 and adapter["lora_params"] == trained


def test_a_peft_lora_with_modules_to_save_is_applied_with_every_saved_module_proven_and_counted(pytester, tmp_path):
    folder, saved_params, lora_params = modules_to_save_folder(tmp_path / "mts", lora_b=0.5)
    result = pytester.runpytest_inprocess("--adapter", folder, *FAST, *MECHANICAL, "--param-budget", "10%")
    result.assert_outcomes(passed=5)
    (adapter,) = results(pytester)["adapters"]
    # A and B on 32 projections, and conv_out's and time_embedding's two linears' weights and biases
    assert adapter["tensors_applied"] == adapter["tensors"] == 2 * 32 + 2 + 4
    assert adapter["details"]["replaced_modules"] == ["unet.conv_out", "unet.time_embedding"]
    assert adapter["lora_params"] == lora_params + saved_params
    budget = records(pytester)[("mts", "param_budget")]
    assert budget["details"]["replaced_module_params"] == saved_params
    html = (pytester.path / "lora-report" / "report.html").read_text()
    assert "modules replaced whole" in html and "unet.time_embedding" in html


def test_the_saved_modules_alone_change_the_renders_and_the_base_keeps_its_own(pytester, tmp_path):
    """With every B at zero only the replaced modules can move a render: pixel_diff passing proves they are in; the
    scale-0 control (wiring) and frozen_base that they are out, and the base's own modules untouched, otherwise.
    All-zero B, a defect of a plain LoRA (it changes nothing), is none here."""
    folder, _, _ = modules_to_save_folder(tmp_path / "mts", moved=0.2)
    pytester.runpytest_inprocess("--adapter", folder, *FAST, "-k", "pixel_diff or frozen_base or wiring")
    found = records(pytester)
    assert {found[("mts", check)]["status"] for check in ("pixel_diff", "frozen_base", "wiring")} == {"passed"}
    assert found[("mts", "pixel_diff")]["value"] > 1
    assert found[("mts", "wiring")]["details"]["scale_zero_mean_abs_diff"] == 0


@pytest.mark.parametrize(
    ("edit", "wanted"),
    [
        (
            lambda t: {**t, "base_model.model.conv_out.weight": t["base_model.model.conv_out.weight"][:2]},
            "shapes disagree",
        ),
        (lambda t: {k: v for k, v in t.items() if k != "base_model.model.conv_out.bias"}, "lacks 1 of the module's"),
        (
            lambda t: {**t, "base_model.model.conv_out.weight": t["base_model.model.conv_out.weight"] * float("nan")},
            "hold NaN or Inf",
        ),
    ],
    ids=["wrong-shape", "incomplete", "nan"],
)
def test_a_saved_module_that_cannot_replace_the_bases_fails_naming_its_key(pytester, tmp_path, edit, wanted):
    folder, _, _ = modules_to_save_folder(tmp_path / "mts", lora_b=0.5)
    weights = folder / "adapter_model.safetensors"
    save_file(edit(load_file(weights)), weights)
    pytester.runpytest_inprocess("--adapter", folder, *FAST, "-k", "wiring")
    message = records(pytester)[("mts", "wiring")]["message"]
    assert wanted in message and "conv_out" in message, message
