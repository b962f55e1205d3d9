"""Wan 2.2's two experts: a LoRA for its low-noise expert (`transformer_2`) is loaded there, as diffusers' loader
takes it when told; any other file lands on the first expert, where diffusers puts it by default."""

from __future__ import annotations

import dataclasses

from lora_harness.bases.families import family_of_pipeline
from lora_harness.loading.adapter_file import AdapterFile
from lora_harness.loading.normalized import NormalizedAdapter


def onto_expert(normalized: NormalizedAdapter, adapter: AdapterFile, pipeline) -> NormalizedAdapter:
    """The adapter as loaded into the expert it was made for: on a base with a second expert (Wan 2.2), a file
    named for the low-noise one goes there; any other stays on the first (high-noise) one, as diffusers' loader puts it."""
    denoiser = family_of_pipeline(pipeline).denoiser
    expert = denoiser.second_expert
    if expert is not None and getattr(pipeline, expert, None) is not None and for_second_expert(adapter):
        return _onto_component(normalized, denoiser.component, expert)
    return normalized


# How trainers name a Wan 2.2 LoRA for the low-noise expert: ai-toolkit's `<name>_low_noise.safetensors`, lightx2v's
# `low_noise_model.safetensors`. Its other file (`high_noise`) is the first expert's, as any file is by default.
SECOND_EXPERT_MARK = "low_noise"


def for_second_expert(adapter: AdapterFile) -> bool:
    return SECOND_EXPERT_MARK in adapter.weights_path.stem.lower()


def _onto_component(normalized: NormalizedAdapter, component: str, onto: str) -> NormalizedAdapter:
    """The same adapter, loaded into another component of the same class (a second expert)."""

    def moved(name: str) -> str:
        first, dot, rest = name.partition(".")
        return f"{onto}{dot}{rest}" if first == component else name

    return dataclasses.replace(
        normalized,
        state_dicts={moved(c): sd for c, sd in normalized.state_dicts.items()},
        file_keys={(moved(c), k): key for (c, k), key in normalized.file_keys.items()},
        targets={key: dataclasses.replace(t, component=moved(t.component)) for key, t in normalized.targets.items()},
        expected_scales={moved(n): v for n, v in normalized.expected_scales.items()},
        ranks={moved(n): v for n, v in normalized.ranks.items()},
        alphas={moved(n): v for n, v in normalized.alphas.items()},
        lora_configs={moved(c): config for c, config in normalized.lora_configs.items()},
        replaced={moved(n): saved for n, saved in normalized.replaced.items()},
        network_alphas=normalized.network_alphas and {moved(n): a for n, a in normalized.network_alphas.items()},
        flux_modules={
            moved(n): dataclasses.replace(m, component=moved(m.component)) for n, m in normalized.flux_modules.items()
        },
    )
