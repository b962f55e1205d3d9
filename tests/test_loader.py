"""One loader for every layout, proving values and scale; what it cannot apply it names."""

import pytest
import torch

from lora_harness.bases.families import UNET, Signature
from lora_harness.bases.tiny_base import build_tiny_pipeline
from lora_harness.fixtures.adapter_writers import LAYOUTS
from lora_harness.loading.adapter_file import AdapterLoadError, FamilyMismatch, read_adapter
from lora_harness.loading.kinds import apply_adapter

TINY = Signature(UNET, 32)  # the embedded tiny base
TENSORS = 64  # 16 attention projections x (A, B) in the tiny U-Net
SUFFIX = {"peft": "", "diffusers": ""}


@pytest.fixture
def pipeline():
    return build_tiny_pipeline()


def _path(layout):
    return layout + SUFFIX.get(layout, ".safetensors")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_lands_whole_at_the_declared_scale(pipeline, write_lora, layout):
    path = write_lora(layout, _path(layout), rank=4, alpha=16)
    application = apply_adapter(pipeline, TINY, read_adapter(path), "a")
    assert application.tensors == TENSORS
    assert application.tensors_applied == TENSORS
    assert application.lora_params == 9984
    assert not application.unmatched and not application.scale_mismatches and not application.value_mismatches
    # The attention-processor layout never stored an alpha: diffusers applies it at scale 1.
    assert application.scale == (1.0 if layout == "attn-procs" else 4.0)


def test_half_misspelled_file_is_caught_by_values_not_counts(pipeline, write_lora):
    def misspell(lora):
        return {(k.replace("attn1", "attn_1") if i % 2 else k): v for i, (k, v) in enumerate(sorted(lora.items()))}

    application = apply_adapter(
        pipeline, TINY, read_adapter(write_lora("kohya", "half.safetensors", edit=misspell)), "a"
    )
    assert application.tensors == TENSORS
    assert application.tensors_applied < TENSORS
    assert application.unmatched and any("attn1" in n for n in application.unmatched[0][2])


def test_keys_matching_nothing_name_the_file_and_nearest_modules(pipeline, write_lora):
    def rename(lora):
        return {k.replace("transformer_blocks", "blocks"): v for k, v in lora.items()}

    path = write_lora("peft-file", "nothing.safetensors", edit=rename)
    with pytest.raises(AdapterLoadError, match="none of its 64 LoRA tensors matches") as error:
        apply_adapter(pipeline, TINY, read_adapter(path), "a")
    assert str(path) in str(error.value) and "nearest: " in str(error.value)


def test_another_family_is_named(pipeline, write_lora):
    def sd2_width(lora):
        return {
            k: (torch.randn(a.shape[0], 1024), b) if k.endswith(("attn2.to_k", "attn2.to_v")) else (a, b)
            for k, (a, b) in lora.items()
        }

    path = write_lora("diffusers", "sd2", edit=sd2_width)
    with pytest.raises(FamilyMismatch, match=r"SD2.x \(cross-attention 1024\).*tiny SD1.x \(cross-attention 32\)"):
        apply_adapter(pipeline, TINY, read_adapter(path), "a")


def test_scale_that_differs_from_the_file_is_reported(pipeline, write_lora, monkeypatch):
    """A loader that drops the file's LoraConfig (as `load_lora_adapter(path)` does for such files) applies 1.0."""
    from lora_harness.loading.kinds import peft_lora

    real_normalize = peft_lora.normalize

    def drop_config(adapter, pipeline):
        normalized = real_normalize(adapter, pipeline)
        normalized.lora_configs = {}
        return normalized

    monkeypatch.setattr(peft_lora, "normalize", drop_config)
    path = write_lora("peft-file", "scaled.safetensors", rank=4, alpha=16)
    application = apply_adapter(pipeline, TINY, read_adapter(path), "a")
    assert application.tensors_applied == TENSORS  # the values are right...
    module, declared, applied = application.scale_mismatches[0]
    assert (declared, applied) == (4.0, 1.0)  # ...the scale is not


def test_nan_tensors_are_found(pipeline, write_lora):
    def poison(lora):
        first = sorted(lora)[0]
        a, b = lora[first]
        return {**lora, first: (a, torch.full_like(b, float("nan")))}

    application = apply_adapter(pipeline, TINY, read_adapter(write_lora("peft", "nan", edit=poison)), "a")
    assert len(application.nonfinite) == 1 and application.tensors_applied == TENSORS


def test_text_encoder_keys_land_too(pipeline, tiny_unet, tmp_path):
    """Kohya `lora_te_…` tensors go to the text encoder, with their own alpha."""
    from safetensors.torch import save_file

    from lora_harness.fixtures.adapter_writers import make_lora

    tensors = {}
    text_lora = make_lora(pipeline.text_encoder, seed=2, targets=("q_proj", "k_proj", "v_proj", "out_proj"))
    for prefix, lora, alpha in (
        ("lora_unet_", make_lora(tiny_unet, seed=1), 4.0),
        ("lora_te_text_model_", text_lora, 8.0),
    ):
        for module, (down, up) in lora.items():
            name = prefix + module.replace(".", "_")
            tensors |= {
                f"{name}.lora_down.weight": down,
                f"{name}.lora_up.weight": up,
                f"{name}.alpha": torch.tensor(alpha),
            }
    save_file(tensors, tmp_path / "with_te.safetensors")
    application = apply_adapter(pipeline, TINY, read_adapter(tmp_path / "with_te.safetensors"), "a")
    assert application.tensors == application.tensors_applied == TENSORS + 16
    text_scales = {v for k, v in application.scales.items() if k.startswith("text_encoder.")}
    assert text_scales == {2.0} and not application.scale_mismatches


@pytest.fixture
def dora_folder(tiny_unet, tmp_path):
    from lora_harness.fixtures.adapter_writers import write_dora_folder

    return write_dora_folder(tiny_unet, tmp_path / "dora")


def test_a_dora_adapter_lands_whole_with_its_magnitudes(pipeline, dora_folder):
    application = apply_adapter(pipeline, TINY, read_adapter(dora_folder), "a")
    assert application.tensors_applied == application.tensors == TENSORS + TENSORS // 2  # A, B and a magnitude each
    assert application.dora_modules == TENSORS // 2 and application.record()["kind"] == "DoRA"
    assert application.record()["details"]["target_modules"] == TENSORS // 2


def test_a_loader_that_applies_dora_as_plain_lora_is_caught(pipeline, dora_folder, monkeypatch):
    """diffusers reads DoRA from the magnitude keys; a load without them runs a plain LoRA silently."""
    import lora_harness.loading.peft_injection as peft_injection

    real_inject = peft_injection.inject

    def drop_magnitudes(pipeline, normalized, accepted, adapter_name):
        for state_dict in normalized.state_dicts.values():
            for key in [k for k in state_dict if "lora_magnitude_vector" in k]:
                del state_dict[key]
        config = normalized.lora_configs.get("unet")
        if config:
            config["use_dora"] = False
        real_inject(pipeline, normalized, accepted, adapter_name)

    monkeypatch.setattr(peft_injection, "inject", drop_magnitudes)
    application = apply_adapter(pipeline, TINY, read_adapter(dora_folder), "a")
    assert application.tensors_applied == TENSORS and len(application.value_mismatches) == TENSORS // 2
    assert all(key.endswith("lora_magnitude_vector") for key in application.value_mismatches)


def test_a_dora_magnitude_of_the_wrong_length_matches_no_module(pipeline, dora_folder):
    from safetensors.torch import load_file, save_file

    weights = dora_folder / "adapter_model.safetensors"
    tensors = load_file(weights)
    first = sorted(k for k in tensors if k.endswith("lora_magnitude_vector"))[0]
    tensors[first] = tensors[first][:-1].clone()
    save_file(tensors, weights)
    application = apply_adapter(pipeline, TINY, read_adapter(dora_folder), "a")
    assert [key for key, _, _ in application.shape_mismatches] == [first]
