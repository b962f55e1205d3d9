"""The family registry (`harness/bases/families/`): each family's facts hold for the pipeline its tiny twin builds,
and the tables the harness reads (supported pipelines, embedded bases, lineages, single-file types) come from it."""

import inspect

import diffusers
import pytest

from lora_harness.bases import families
from lora_harness.bases.families import EMBEDDED, FAMILIES

TWINS = [family for family in FAMILIES if family.tiny is not None]


@pytest.mark.parametrize("family", TWINS, ids=[family.tiny.name for family in TWINS])
def test_each_tiny_twin_is_its_family_as_the_registry_describes_it(family):
    pipeline = family.tiny.build()
    assert type(pipeline).__name__ in family.pipelines
    assert families.family_of_pipeline(pipeline) is family
    signature = families.pipeline_signature(pipeline)
    assert signature.width in family.widths and signature.lineage == family.name
    denoiser = getattr(pipeline, family.denoiser.component)
    assert type(denoiser).__name__ in family.denoiser.classes and families.denoiser_of(pipeline) is denoiser
    # Every reference target and width-reading module is a module the twin has; its scale keyword is a parameter
    # of its pipeline's own call.
    names = [name for name, _ in denoiser.named_modules()]
    for target in (*family.reference.targets, *family.denoiser.width_modules):
        assert any(name.endswith(f".{target}") for name in names), target
    assert family.rendering.scale_keyword in inspect.signature(type(pipeline).__call__).parameters
    # Every stage the blocks name is one of the twin's.
    assert {stage for stage in family.blocks.stages if any(f".{stage}." in f".{n}." for n in names)} == set(
        family.blocks.stages
    )


def test_every_family_s_pipeline_is_a_diffusers_pipeline_with_a_lora_loader():
    from diffusers.loaders.lora_base import LoraBaseMixin

    for family in FAMILIES:
        for name in family.pipelines:
            assert issubclass(getattr(diffusers, name), LoraBaseMixin), name


def test_the_embedded_bases_and_supported_pipelines_are_the_registry_s():
    assert families.EMBEDDED_BASES == (
        "tiny",
        "tiny-sdxl",
        "tiny-flux",
        "tiny-chroma",
        "tiny-sd3",
        "tiny-qwen-image",
        "tiny-z-image",
        "tiny-flux2",
        "tiny-flux2-dev",
        "tiny-wan",
        "tiny-wan22",
        "tiny-ltx2",
    )
    assert EMBEDDED["tiny-chroma"].name == "Chroma" and families.EMBEDDED_DEFAULT == "tiny"
    assert EMBEDDED["tiny-wan22"] is EMBEDDED["tiny-wan"]  # Wan 2.2's two experts: one family
    assert families.supported_pipelines()["StableDiffusionPipeline"] == ["SD1.x", "SD2.x"]
    assert families.supported_pipelines()["ChromaPipeline"] == ["Chroma"]
    assert families.supported_pipelines()["QwenImagePipeline"] == ["Qwen-Image"]
    assert families.supported_pipelines()["ZImagePipeline"] == ["Z-Image"]
    assert families.supported_pipelines()["Flux2KleinPipeline"] == ["Flux.2"]
    assert families.supported_pipelines()["Flux2Pipeline"] == ["Flux.2"] and EMBEDDED["tiny-flux2-dev"].name == "Flux.2"
    assert families.supported_pipelines()["WanPipeline"] == ["Wan"]
    assert families.supported_pipelines()["LTX2Pipeline"] == ["LTX-2"]


@pytest.mark.parametrize(
    "recorded, lineage",
    [
        ("sd_v1", "SD1.x"),
        ("stable-diffusion-v1/lora", "SD1.x"),
        ("stable-diffusion-v2-768-v/lora", "SD2.x"),
        ("sdxl_base_v1-0", "SDXL"),
        ("stable-diffusion-xl-v1-base/lora", "SDXL"),
        ("sd3", "SD3"),
        ("stable-diffusion-3-medium/lora", "SD3"),  # sd-scripts' modelspec for SD3 and SD3.5
        ("flux1", "Flux"),
        ("flux-1-dev/lora", "Flux"),
        ("chroma/lora", "Chroma"),  # sd-scripts' modelspec for Chroma
        ("Qwen-Image/lora", "Qwen-Image"),  # musubi-tuner's modelspec
        ("Z-Image/lora", "Z-Image"),
        ("Flux.2-klein-4b/lora", "Flux.2"),  # musubi-tuner's modelspec: Flux.2, not Flux.1, by the longer prefix
        ("Flux.1-dev/lora", "Flux"),
        ("wan2.1/lora", "Wan"),  # musubi-tuner's modelspec for Wan 2.1 and 2.2
        ("Stable-Diffusion-XL-v1-base", "SDXL"),
        ("hunyuan-image-2.1", None),
    ],
)
def test_trainers_lineage_names_map_to_a_family(recorded, lineage):
    assert families.claimed_lineage(recorded) == lineage


def test_an_adapter_s_keys_are_given_the_base_s_family_when_they_fit_it_and_a_known_one_else():
    flux, chroma = families.Signature(families.FLUX, 3072), families.Signature("chroma", 3072)
    queries = ["transformer_blocks.0.attn.to_q", "single_transformer_blocks.0.attn.to_q"]
    # Flux and Chroma share width and names: keys of either fit the other's base.
    assert families.keys_signature("transformer", 3072, queries, chroma) == chroma
    assert families.keys_signature("transformer", 3072, queries, flux) == flux
    # On another base, a known width names its family; an unknown one is told by Flux's single-stream blocks.
    tiny_sd1 = families.Signature(families.UNET, 32)
    assert families.keys_signature("transformer", 128, queries[:1], tiny_sd1) == families.Signature(families.SD3, 128)
    assert families.keys_signature("transformer", 160, queries, tiny_sd1) == families.Signature("chroma", 160)
    assert families.keys_signature("transformer", 200, queries, tiny_sd1).architecture == families.FLUX
    assert families.keys_signature("transformer", 200, queries[:1], tiny_sd1).architecture == families.SD3
    assert str(families.Signature(families.UNET, 320)) == "unknown (cross-attention 320)"


def test_single_file_tables_are_the_registry_s():
    from lora_harness.bases import single_file

    assert set(single_file.CARRIED) == {"SD1.x", "SD2.x", "SDXL"}
    assert single_file.MODEL_TYPES["xl_base"] == "SDXL" and single_file.MODEL_TYPES["flux-dev"] == "Flux"
    assert single_file.PIPELINES["SDXL"] == "StableDiffusionXLPipeline"


@pytest.mark.parametrize("family", [f for f in FAMILIES if f.model_types], ids=lambda family: family.name)
def test_every_single_file_type_has_a_repository_its_other_parts_come_from_or_says_it_has_none(family):
    """A file of a family's denoiser alone takes its pipeline's other parts from --base-components, by default the
    family's repository for its model type or diffusers' (`DIFFUSERS_DEFAULT_PIPELINE_PATHS`); None only where the
    family says no published repository serves (then --base-components must be given)."""
    from lora_harness.bases.single_file import SingleFileBase

    for model_type in family.model_types:
        base = SingleFileBase(path=None, family=family.name, model_type=model_type, dtype="bfloat16", whole=False)
        if family.components_repos.get(model_type, "") is None:
            assert base.default_components is None
        else:
            assert base.default_components.count("/") == 1, f"{family.name}'s `{model_type}`"
