"""Which kind claims which file. The kinds are asked in turn and the first claim applies the file: its keys decide,
with the base's family (a family whose pipeline converts trainers' layouts takes musubi-tuner's and ai-toolkit's
files itself). Each file here is one its tool writes."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lora_harness.bases.families import flux, flux2, qwen_image, sd1, sd3, wan, z_image
from lora_harness.bases.tiny_base import build_tiny_pipeline
from lora_harness.fixtures.adapter_writers import LAYOUTS, write_lycoris
from lora_harness.loading.adapter_file import AdapterLoadError, read_adapter
from lora_harness.loading.kinds import KINDS, apply_adapter, kind_of

TRAINER_FILES = Path(__file__).parent.parent / "fixtures" / "trainer_files"
SUFFIX = {"peft": "", "diffusers": ""}


def _kind(path: Path, family) -> str:
    return kind_of(read_adapter(path), family).name


def test_every_kind_has_its_own_name():
    names = [kind.name for kind in KINDS]
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_peft_diffusers_and_kohya_files_are_claimed_by_their_kind(write_lora, layout):
    path = write_lora(layout, layout + SUFFIX.get(layout, ".safetensors"))
    expected = "Kohya LoRA" if layout == "kohya" else "LoRA in PEFT's or diffusers' names"
    assert _kind(path, sd1.FAMILY) == expected


def test_a_lycoris_file_is_lycoris_s_whatever_its_names(tmp_path):
    path = write_lycoris(build_tiny_pipeline(), tmp_path / "loha.safetensors", algo="loha")
    assert _kind(path, sd1.FAMILY) == "LyCORIS"


@pytest.mark.parametrize(
    ("trainer", "family"),
    [("musubi-qwen-image", qwen_image), ("musubi-wan", wan), ("ai-toolkit-z-image", z_image), ("musubi-flux2", flux2)],
)
def test_a_trainer_s_layout_is_the_converting_pipeline_s_and_named_elsewhere(trainer, family):
    """On its own family the pipeline converts it; on a family that converts none, a Kohya-named file is Kohya's
    (and fails as another family's there), a `diffusion_model.` one is named unconverted."""
    path = TRAINER_FILES / f"{trainer}.safetensors"
    assert _kind(path, family.FAMILY) == "a trainer's layout the base's pipeline converts"
    elsewhere = _kind(path, sd3.FAMILY)
    if family is flux2:  # BFL's names: Flux's community layout where no pipeline converts them
        assert elsewhere == "Flux's community layouts"
    elif trainer.startswith("musubi"):
        assert elsewhere == "Kohya LoRA"
    else:
        assert elsewhere == "a transformer's original names, unconverted"


def test_named_kinds_come_before_the_kinds_their_keys_would_also_match(tmp_path):
    """ai-toolkit's Wan 2.2 file with both experts has `diffusion_model.` keys, which the Wan pipeline converts: named,
    never half-applied."""
    both = {
        f"diffusion_model.transformer_{n}.blocks.0.self_attn.q.lora_{r}.weight": torch.zeros(4, 4)
        for n in (1, 2)
        for r in ("A", "B")
    }
    save_file(both, tmp_path / "both.safetensors")
    assert _kind(tmp_path / "both.safetensors", wan.FAMILY) == "a kind named, not applied"
    with pytest.raises(AdapterLoadError, match="holding both experts in one file"):
        apply_adapter(build_tiny_pipeline(), None, read_adapter(tmp_path / "both.safetensors"), "a")


def test_a_file_no_kind_claims_is_said_to_be_of_no_known_layout_or_damaged(tmp_path):
    save_file({"weights.a": torch.zeros(2, 2)}, tmp_path / "unknown.safetensors")
    with pytest.raises(AdapterLoadError, match="no known LoRA layout"):
        kind_of(read_adapter(tmp_path / "unknown.safetensors"), flux.FAMILY)
    save_file({"weights.alpha": torch.zeros(2)}, tmp_path / "damaged.safetensors")
    with pytest.raises(AdapterLoadError, match="an alpha is one number; the file is damaged"):
        kind_of(read_adapter(tmp_path / "damaged.safetensors"), flux.FAMILY)
