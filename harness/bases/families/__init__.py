"""The registry of model families: one module per family, each one `Family` (`family.py`) holding everything the
harness knows of it. Every table elsewhere (supported pipelines, embedded bases, single-file types, lineages,
blocks, reference targets, render keywords) is read from `FAMILIES` through the functions below.

Adding a family: a module here with its `FAMILY` (a `TinyTwin` built in `tiny_base.py`), listed in `FAMILIES`,
and its tests (see docs/families.md, "The family registry, and adding a family").
"""

from __future__ import annotations

from dataclasses import dataclass

from lora_harness.bases.families import (
    chroma,
    flux,
    flux2,
    generic,
    ltx2,
    qwen_image,
    sd1,
    sd2,
    sd3,
    sdxl,
    wan,
    z_image,
)
from lora_harness.bases.families.family import Family, TinyTwin, default_guidance

FAMILIES: tuple[Family, ...] = (
    sd1.FAMILY,
    sd2.FAMILY,
    sdxl.FAMILY,
    flux.FAMILY,
    chroma.FAMILY,
    sd3.FAMILY,
    qwen_image.FAMILY,
    z_image.FAMILY,
    flux2.FAMILY,
    wan.FAMILY,
    ltx2.FAMILY,
)

# The families made from LoRA-loadable pipeline classes no module covers (`generic.py`), by pipeline class,
# denoiser class and width: two bases of one class at two widths are two families.
_MADE: dict[tuple[str, str, int], Family] = {}


def _families() -> tuple[Family, ...]:
    return FAMILIES + tuple(_MADE.values())


UNET = sd1.FAMILY.denoiser.architecture
FLUX = flux.FAMILY.denoiser.architecture
SD3 = sd3.FAMILY.denoiser.architecture
EMBEDDED_TWINS: dict[str, TinyTwin] = {
    twin.name: twin for family in FAMILIES for twin in (family.tiny, *family.variants) if twin is not None
}
EMBEDDED: dict[str, Family] = {
    twin.name: family for family in FAMILIES for twin in (family.tiny, *family.variants) if twin is not None
}
EMBEDDED_BASES = tuple(EMBEDDED)  # built locally from configs with seeded weights
EMBEDDED_DEFAULT = sd1.FAMILY.tiny.name  # `--base-model`'s default: the one base with a self-test CLIP
# The pipeline attributes that hold a denoiser, in the order they are looked for; second experts last.
DENOISER_COMPONENTS = tuple(dict.fromkeys(family.denoiser.component for family in FAMILIES))
SECOND_EXPERTS = tuple(dict.fromkeys(f.denoiser.second_expert for f in FAMILIES if f.denoiser.second_expert))
# Per denoiser component, the module-name endings whose down matrix reads its width in an adapter.
WIDTH_MODULES = {
    component: tuple(
        dict.fromkeys(m for f in FAMILIES if f.denoiser.component == component for m in f.denoiser.width_modules)
    )
    for component in DENOISER_COMPONENTS
}

__all__ = [
    "DENOISER_COMPONENTS",
    "EMBEDDED",
    "EMBEDDED_BASES",
    "EMBEDDED_DEFAULT",
    "EMBEDDED_TWINS",
    "SECOND_EXPERTS",
    "FAMILIES",
    "FLUX",
    "SD3",
    "UNET",
    "Family",
    "Signature",
    "keys_signature",
    "architecture_family",
    "block_of",
    "claimed_lineage",
    "default_guidance",
    "denoiser_component",
    "denoiser_of",
    "family_of_pipeline",
    "is_denoiser",
    "pipeline_signature",
    "supported_pipelines",
    "WIDTH_MODULES",
]


def architecture_family(architecture: str) -> Family:
    """The first family of a denoiser architecture: what families of one architecture share (denoiser, blocks,
    reference) is read from it when the width names none of them."""
    return next(family for family in _families() if family.denoiser.architecture == architecture)


@dataclass(frozen=True)
class Signature:
    """A denoiser architecture and the width that decides every LoRA shape on it: what tells a base's family, and
    the family an adapter's keys were made for."""

    architecture: str  # a `Denoiser.architecture`: "unet", "flux", "sd3"
    width: int

    @property
    def _exact_family(self) -> Family | None:
        """The family of this architecture whose known widths hold this one."""
        return next(
            (f for f in _families() if f.denoiser.architecture == self.architecture and self.width in f.widths), None
        )

    @property
    def named_family(self) -> Family | None:
        """The family whose known widths hold this one, else the architecture's family when its lineage holds at
        any width (an MMDiT's); None for a U-Net of no known width."""
        any_width = (f for f in _families() if f.denoiser.architecture == self.architecture and f.any_width)
        return self._exact_family or next(any_width, None)

    @property
    def family(self) -> str:
        """What has this width: 'SD2.x', 'tiny SDXL', 'SD3.5 large'; 'unknown (cross-attention 320)'."""
        exact = self._exact_family
        return exact.widths[self.width] if exact else f"unknown ({self.width_label})"

    @property
    def width_label(self) -> str:
        return f"{architecture_family(self.architecture).denoiser.width_label} {self.width}"

    @property
    def lineage(self) -> str | None:
        """The family as trainers' metadata names it ('SD1.x', 'SDXL', 'Flux', ...); the tiny twins stand for the
        family they are shaped like."""
        family = self.named_family
        return family.name if family is not None else None

    def __str__(self) -> str:
        """'SD2.x (cross-attention 1024)'; 'unknown (cross-attention 320)'."""
        return f"{self.family} ({self.width_label})" if self._exact_family else self.family


def is_denoiser(component: str) -> bool:
    return component in DENOISER_COMPONENTS + SECOND_EXPERTS


def denoiser_component(pipeline) -> str | None:
    """The pipeline attribute holding its denoiser ("unet", "transformer"), as a made family finds it too."""
    return generic.denoiser_component(pipeline)


def denoiser_of(pipeline):
    """The pipeline's denoiser (U-Net or transformer)."""
    return getattr(pipeline, denoiser_component(pipeline))


def pipeline_signature(pipeline) -> Signature:
    """The base's signature, from its denoiser's class and config."""
    made = _made_family(pipeline)
    if made is not None:
        return Signature(made.denoiser.architecture, made.denoiser.width(getattr(pipeline, made.denoiser.component)))
    for family in FAMILIES:
        denoiser = family.denoiser
        model = getattr(pipeline, denoiser.component, None)
        if model is not None and type(model).__name__ in denoiser.classes:
            return Signature(denoiser.architecture, int(denoiser.width(model)))
    raise ValueError(f"{type(pipeline).__name__}: its denoiser is none of the classes lora-harness knows")


def _made_family(pipeline) -> Family | None:
    """The family made from the pipeline's class when no module covers that class (`generic.py`)."""
    from diffusers.loaders.lora_base import LoraBaseMixin

    name = type(pipeline).__name__
    component = generic.denoiser_component(pipeline)
    if name in supported_pipelines() or not isinstance(pipeline, LoraBaseMixin) or component is None:
        return None
    denoiser = getattr(pipeline, component)
    key = (name, type(denoiser).__name__, generic.attention_width(denoiser))
    if key not in _MADE:
        _MADE[key] = generic.family_for(pipeline, FAMILIES)
    return _MADE[key]


def family_of_pipeline(pipeline) -> Family:
    """The base's family: the one made from its class where no module covers it; else by the width where it names
    one, else by the pipeline class, else by the architecture."""
    made = _made_family(pipeline)
    if made is not None:
        return made
    signature = pipeline_signature(pipeline)
    named = signature.named_family
    if named is not None:
        return named
    by_class = [f for f in FAMILIES if type(pipeline).__name__ in f.pipelines]
    return by_class[0] if by_class else architecture_family(signature.architecture)


def keys_signature(component: str, width: int, module_names, base: Signature) -> Signature | None:
    """The signature an adapter's keys on `component` were made for, from the width its width-reading modules
    take: the base's when its denoiser sits there with that width (Flux and Chroma share 3072 and their attention
    names: such keys fit either), else the architecture whose families know that width, else the one whose
    distinctive modules the keys name, else the one architecture on that component with no distinctive modules.
    None when nothing tells them apart."""
    # The registry's families and the base's own when it was made from its class: never another run's.
    relevant = FAMILIES + tuple(f for f in _MADE.values() if f.denoiser.architecture == base.architecture)
    candidates = list(dict.fromkeys(f.denoiser for f in relevant if f.denoiser.component == component))
    if width == base.width and base.architecture in [d.architecture for d in candidates]:
        return base
    known = [d for d in candidates if any(width in f.widths for f in relevant if f.denoiser == d)]
    if len(known) == 1:
        return Signature(known[0].architecture, width)
    marked = [d for d in candidates if any(m in name for m in d.distinctive_modules for name in module_names)]
    plain = [d for d in candidates if not d.distinctive_modules]
    chosen = marked if marked else plain
    return Signature(chosen[0].architecture, width) if len(chosen) == 1 else None


def block_of(module: str, architecture: str = UNET) -> str:
    """'unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k' -> 'down/attn2';
    'transformer.single_transformer_blocks.3.attn.to_q' (Flux) -> 'single/attn'; a text encoder's -> its component."""
    parts = module.split(".")
    if not is_denoiser(parts[0]):
        return parts[0]
    return architecture_family(architecture).blocks.of(parts)


def claimed_lineage(value: str) -> str | None:
    """The family a trainer's `ss_base_model_version` or `modelspec.architecture` value names ('sdxl_base_v1-0' ->
    'SDXL'), by the longest prefix any family claims."""
    value = value.lower()
    claims = sorted(
        ((prefix, family.name) for family in FAMILIES for prefix in family.lineage_prefixes),
        key=lambda claim: -len(claim[0]),
    )
    return next((name for prefix, name in claims if value.startswith(prefix)), None)


def supported_pipelines() -> dict[str, list[str]]:
    """Each diffusers pipeline class lora-harness checks, with the families it covers."""
    supported: dict[str, list[str]] = {}
    for family in FAMILIES:
        for pipeline in family.pipelines:
            supported.setdefault(pipeline, []).append(family.name)
    return supported
