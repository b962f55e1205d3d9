"""What the harness knows of a model family, as one declarative object per family (`Family`), and its parts.

A family is a lineage trainers name (SD1.x, SDXL, Flux, ...). Families that share a denoiser architecture (the
SD U-Nets) are told apart by the width that decides every LoRA shape: the text width a U-Net's cross-attention
reads, or a transformer's inner width. An adapter's family is read the same way from its keys.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Denoiser:
    """The model an adapter mostly targets, and how its width is read from the model and from adapter keys."""

    architecture: str  # shared by the families of one denoiser design: "unet", "flux", "sd3"
    component: str  # the pipeline's attribute holding it
    classes: tuple[str, ...]  # its diffusers model classes
    width: Callable[[object], int]  # the width, from the model's config
    width_label: str  # what the width is: "cross-attention", "transformer width"
    width_modules: tuple[str, ...]  # module-name endings whose down matrix reads that width in an adapter
    # Module-name fragments only this architecture has among those on the same component: they tell an adapter's
    # architecture when its width is not a known one.
    distinctive_modules: tuple[str, ...] = ()
    # A second expert of the same class for the low-noise steps (Wan 2.2's `transformer_2`), where a base has one:
    # a file made for it (`…low_noise…`) is loaded into it, as diffusers' `load_into_transformer_2=True` does.
    second_expert: str | None = None


def attention_inner_width(transformer) -> int:
    """A transformer's attention inner width (heads x head dim), which its query projections read."""
    return transformer.config.num_attention_heads * transformer.config.attention_head_dim


@dataclass(frozen=True)
class Blocks:
    """How `param_budget` and `weight_health` group the denoiser's modules: 'stage/kind' in the family's own names."""

    stages: dict[str, str]  # module-path part -> stage ("down_blocks" -> "down")
    kinds: dict[str, str]  # module-path part -> kind of layer ("attn2" -> "attn2", "add_q_proj" -> "attn-text")

    def of(self, denoiser_path: list[str]) -> str:
        stage = next((self.stages[p] for p in denoiser_path if p in self.stages), "other")
        kinds = [p.split("+")[0] for p in reversed(denoiser_path)]  # a fused module 'attn.add_q_proj+add_k_proj'
        kind = next((self.kinds[p] for p in kinds if p in self.kinds), "other")
        return f"{stage}/{kind}"


@dataclass(frozen=True)
class Reference:
    """The reference overfit: a rank-4 LoRA on `targets` (those the base has), trained on the family's objective.

    `example(pipeline, pixels, caption, device)` encodes the training image and caption as the pipeline itself
    would and returns a `TrainingExample` (`families/objectives.py`) that noises latents and predicts the target.
    """

    targets: tuple[str, ...]
    example: Callable


@dataclass(frozen=True)
class Rendering:
    """How the family's pipeline renders. Guidance is always the pipeline's own `__call__` default
    (`default_guidance`)."""

    scale_keyword: str  # the `__call__` argument carrying `{"scale": s}` to the LoRA layers
    native_size: int = 1024  # what `__call__` renders at by default, where neither pipeline nor denoiser says
    call_arguments: dict = field(default_factory=dict)  # given to every `__call__` besides the render plan's
    video: bool = False  # its `__call__` takes `num_frames` and returns `.frames`


GUIDANCE_SCALE = 7.5  # diffusers' default for Stable Diffusion


def default_guidance(pipeline) -> float | None:
    """The guidance scale the pipeline's own `__call__` defaults to (SD 7.5, SDXL 5.0, Flux 3.5, SD3 7.0); None
    where it defaults to none (Qwen-Image guides only when given a negative prompt)."""
    default = inspect.signature(type(pipeline).__call__).parameters["guidance_scale"].default
    return float(default) if isinstance(default, (int, float)) else None


@dataclass(frozen=True)
class TinyTwin:
    """An embedded base: the family's pipeline at tiny widths with seeded weights, built offline."""

    name: str  # what `--base-model` takes: "tiny-sdxl"
    label: str  # the base's family in results.json: "tiny (SDXL-shaped)"
    build: Callable[[], object]


@dataclass(frozen=True)
class SingleFile:
    """What lora-harness carries to build the family's pipeline from one checkpoint file, and what it must hold."""

    configs: str  # its folder in base_configs/
    parts: dict[str, str]  # what the file must hold: a name per key prefix
    tokenizers: dict[str, str | None]  # each CLIP tokenizer by component, with its padding token (OpenCLIP: "!")
    # What its pipeline class is given besides: no safety checker (it would black out the pixels judged), no
    # invisible watermark (it changes pixels, and needs another package).
    pipeline_kwargs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Family:
    name: str  # the lineage, as the docs and trainers' metadata name it: "SDXL"
    pipelines: tuple[str, ...]  # the diffusers pipeline classes it covers
    denoiser: Denoiser
    widths: dict[int, str]  # width -> the name of what has it ({2048: "SDXL", 64: "tiny SDXL"})
    reference: Reference | None  # None: no reference overfit (a family made from a pipeline class, `generic.py`)
    rendering: Rendering
    blocks: Blocks
    # Prefixes of what trainers write in `ss_base_model_version` / `modelspec.architecture` for it ("sdxl").
    lineage_prefixes: tuple[str, ...] = ()
    any_width: bool = False  # the lineage holds at any width (an MMDiT's), not only at `widths`
    tiny: TinyTwin | None = None
    variants: tuple[TinyTwin, ...] = ()  # more embedded twins of it (Wan 2.2's two experts beside Wan 2.1's one)
    model_types: tuple[str, ...] = ()  # diffusers' single-file detection names (`infer_diffusers_model_type`)
    # Keys a file of its denoiser holds (all of them; ComfyUI's `model.diffusion_model.` may stand before each) where
    # diffusers' detection names no model type for it: the file is then `model_types[0]`.
    file_marks: tuple[str, ...] = ()
    # Where a file of its denoiser alone takes the pipeline's other parts from by default, by model type, where
    # diffusers' `from_single_file` names none (`DIFFUSERS_DEFAULT_PIPELINE_PATHS`) or names one the harness cannot
    # render with (None: --base-components must say).
    components_repos: dict[str, str | None] = field(default_factory=dict)
    # Key prefixes (without ComfyUI's `model.diffusion_model.`) marking a file of its denoiser as a model the
    # harness does not render (an image-to-video one), with what it is.
    other_models: dict[str, str] = field(default_factory=dict)
    # Its pipeline's own `lora_state_dict` converts its trainers' layouts (musubi-tuner's `lora_unet_…`, ai-toolkit's
    # `diffusion_model.…`): such files are converted by it and traced back by value (`loading/traced_conversion.py`).
    converts_trainer_layouts: bool = False
    # ... and LoKr files named after its modules (`….lokr_w1`), loaded into peft's LoKr layers (`kinds/diffusers_lokr.py`).
    converts_lokr: bool = False
    single_file: SingleFile | None = None  # None: single files of it are detected, not built offline
