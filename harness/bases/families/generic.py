"""Any diffusers pipeline with a LoRA loader that no family module describes: a family made from the pipeline
itself. Its adapters are converted and injected by the pipeline class's own loader and get the checks that need
no family knowledge (wiring, frozen_base, param_budget, pixel_diff, weight_health, release_metadata, and the CLIP
checks when a CLIP is given). There is no reference overfit (encoding a training example for the objective is a
family module's knowledge), so no controls, and no width names: an adapter is checked on the base it is given."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field

import torch

from lora_harness.bases.families.family import Blocks, Denoiser, Family, Rendering

SCALE_KEYWORDS = ("attention_kwargs", "joint_attention_kwargs", "cross_attention_kwargs")
DENOISERS = ("transformer", "unet")  # the attributes diffusers' pipelines hold their denoiser in
# diffusers' `Attention` modules as transformers name them: the query reads the width an attention LoRA's A does.
WIDTH_MODULES = ("attn.to_q", "attn1.to_q", "attention.to_q")


@dataclass(frozen=True)
class ModulePathBlocks(Blocks):
    """Blocks by module path, in the model's own names: its top-level part and the layer's parent module
    ('transformer.joint_transformer_blocks.0.attn.to_q' -> 'joint_transformer_blocks/attn')."""

    stages: dict[str, str] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)

    def of(self, denoiser_path: list[str]) -> str:
        parts = [part for part in denoiser_path[1:] if not part.isdigit()]
        return f"{parts[0]}/{parts[-2]}" if len(parts) > 1 else (parts[0] if parts else "other")


def family_for(pipeline, known: tuple[Family, ...]) -> Family | None:
    """The family of a LoRA-loadable pipeline class no family module covers; None when it holds no denoiser. A
    class whose denoiser a known family has (LCM, PAG or panorama pipelines of SD's U-Net) is that family, rendered
    through its own call; any other is named after its class."""
    pipeline_class = type(pipeline)
    component = denoiser_component(pipeline)
    if component is None:
        return None
    denoiser = getattr(pipeline, component)
    name = pipeline_class.__name__.removesuffix("Pipeline")
    call = inspect.signature(pipeline_class.__call__).parameters
    height = call["height"].default if "height" in call else None
    rendering = Rendering(
        scale_keyword=next((k for k in SCALE_KEYWORDS if k in call), SCALE_KEYWORDS[0]),
        native_size=height if isinstance(height, int) else 1024,
        video="num_frames" in call,
    )
    same_class = [f for f in known if type(denoiser).__name__ in f.denoiser.classes]
    # Of those, the one whose widths hold this denoiser's (an SDXL PAG pipeline is SDXL's, not SD1.x's).
    same = next(
        (f for f in same_class if f.denoiser.width(denoiser) in f.widths), same_class[0] if same_class else None
    )
    if same is not None:
        # Its adapters are the known family's; its reference overfit encodes examples for that family's pipeline.
        return dataclasses.replace(
            same, pipelines=(pipeline_class.__name__,), reference=None, rendering=rendering, tiny=None, single_file=None
        )
    width = attention_width(denoiser)
    return Family(
        name=name,
        pipelines=(pipeline_class.__name__,),
        denoiser=Denoiser(
            architecture=f"{name} (no family module)",
            component=component,
            classes=(type(denoiser).__name__,),
            width=attention_width,
            width_label="attention width",
            width_modules=WIDTH_MODULES,
        ),
        widths={width: name},
        reference=None,
        rendering=rendering,
        blocks=ModulePathBlocks(),
    )


def denoiser_component(pipeline) -> str | None:
    """The attribute holding the pipeline's denoiser; None for a pipeline without one."""
    return next((c for c in DENOISERS if isinstance(getattr(pipeline, c, None), torch.nn.Module)), None)


def attention_width(denoiser) -> int:
    """The width its attention queries read (0 where it has no diffusers `Attention`)."""
    return next(
        (m.in_features for n, m in denoiser.named_modules() if n.endswith(WIDTH_MODULES) and hasattr(m, "in_features")),
        0,
    )
