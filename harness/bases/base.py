"""The base pipeline: an embedded tiny one, a local diffusers folder, a single-file checkpoint, or a hub id from the
local cache."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from lora_harness.bases.families import (
    DENOISER_COMPONENTS,
    EMBEDDED_TWINS,
    Signature,
    default_guidance,
    denoiser_of,
    family_of_pipeline,
    pipeline_signature,
)
from lora_harness.config.config import ConfigError, HarnessConfig
from lora_harness.safetensors_file import FLOAT_DTYPES


@dataclass
class BaseModel:
    pipeline: object
    model: str  # as the user named it
    family: str
    signature: Signature
    denoiser_params: int  # the U-Net's or transformer's parameters
    native_size: int
    guidance_scale: float | None  # the pipeline's own default, used for every render (None: it has none)
    dtype: str  # what the denoiser computes in, as loaded
    single_file: dict | None = None  # a checkpoint file's path, detected family and hashes; None for other bases

    def summary(self, fingerprint: str) -> dict:
        return {
            "model": self.model,
            "family": self.family,
            "fingerprint": fingerprint,
            "unet_params": self.denoiser_params,  # results.json's first name for it, kept for the scripts that read it
            "denoiser_params": self.denoiser_params,
            "guidance_scale": self.guidance_scale,
            "dtype": self.dtype,
            "single_file": self.single_file,
        }


def resolve_dtype(choice: str, device: str, base_model: str, base_path: Path | None) -> tuple[str, str]:
    """(the dtype the base and every adapter's layers compute in, why): `auto` is the folder's own dtype on CUDA,
    float32 elsewhere (CPU kernels in float16 and bfloat16 are slow, and a base stored in them upcasts exactly)."""
    stored = "float32" if base_path is None else stored_dtype(base_model, base_path)  # embedded bases: built in fp32
    if choice != "auto":
        return choice, f"--dtype {choice}; the base is stored in {stored}"
    if device.startswith("cuda"):
        return stored, f"--dtype auto on {device}: the base's stored dtype"
    return "float32", f"--dtype auto on {device}: float32; the base is stored in {stored}"


def resolve_offload(requested: bool, device: str) -> tuple[bool, str]:
    """(whether the pipeline runs with diffusers' model CPU offload, why). Offload keeps every model on the CPU and
    moves each onto the accelerator while the pipeline runs it, so a base larger than GPU memory fits; with no CUDA
    device there is nothing to move onto, and the run says so rather than ignoring the option."""
    if not requested:
        return False, f"not requested: every model on {device}"
    if device.startswith("cuda"):
        return True, (
            f"requested; used: diffusers' model CPU offload onto {device} (each model on the CPU until the pipeline "
            "runs it)"
        )
    return False, (
        f"requested; not used: no CUDA device (--device {device}); model CPU offload moves each model onto a CUDA "
        f"device while it runs, so every model stays on {device}"
    )


def stored_dtype(base_model: str, folder: Path) -> str:
    """The dtype most of the denoiser's stored tensors hold, read from the safetensors headers (no weights read)."""
    from safetensors import safe_open

    if folder.is_file():
        from lora_harness.bases.single_file import inspect_single_file

        return inspect_single_file(base_model, folder).dtype
    index = json.loads((folder / "model_index.json").read_text())
    component = next((component for component in DENOISER_COMPONENTS if component in index), None)
    if component is None:
        raise ConfigError(
            f"--base-model {base_model}: {folder / 'model_index.json'} names no denoiser ({' or '.join(DENOISER_COMPONENTS)}); "
            "the folder is incomplete: save the whole pipeline with `save_pretrained` or download it again"
        )
    files = sorted((folder / component).glob("*.safetensors"), key=lambda path: (path.name.count(".") > 1, path.name))
    if not files:
        raise ConfigError(
            f"--base-model {base_model}: {folder / component} holds no .safetensors weights; lora-harness reads "
            "safetensors only: save the pipeline with `save_pretrained(..., safe_serialization=True)`"
        )
    counted = Counter()
    with safe_open(files[0], framework="pt") as weights:  # without a variant (`.fp16.`) first, as from_pretrained reads
        for key in weights.keys():
            counted[weights.get_slice(key).get_dtype()] += 1
    stored = next((FLOAT_DTYPES[d] for d, _ in counted.most_common() if d in FLOAT_DTYPES), None)
    if stored is None:
        raise ConfigError(
            f"--base-model {base_model}: {files[0]} holds no floating-point weights ({dict(counted)}); "
            "save the pipeline again"
        )
    return stored


def load_base(config: HarnessConfig) -> BaseModel:
    import torch

    dtype = getattr(torch, config.dtype)
    single_file = None
    if config.base_path is None:
        # Built in float32; diffusers warns on every cast, even to it.
        pipeline = EMBEDDED_TWINS[config.base_model].build()
        if dtype != torch.float32:
            pipeline.to(dtype=dtype)
    elif config.base_path.is_file():
        from lora_harness.bases.single_file import (
            checkpoint_hashes,
            inspect_single_file,
            load_denoiser,
            load_single_file,
        )

        detected = inspect_single_file(config.base_model, config.base_path)
        single_file = {**detected.record(), **checkpoint_hashes(config.base_path)}
        if config.components_path is None:
            pipeline = load_single_file(detected, dtype)
        else:
            denoiser = load_denoiser(detected, config.components_path, dtype)
            pipeline = _load_around(config.components_path, detected.component, denoiser, dtype)
            single_file["components"] = config.base_components or detected.default_components
            single_file["components_path"] = str(config.components_path)
    else:
        # Every component in the one dtype: left alone, diffusers loads its models in float32 and transformers its
        # text encoders in the stored dtype, and a float16 folder's text states then meet a float32 U-Net.
        pipeline = _load_folder(config.base_path, dtype)
    if config.offload:
        # diffusers places the models itself (each on the CPU, hooked to move onto the device while it runs): a
        # `pipeline.to(device)` after this would undo the offload.
        pipeline.enable_model_cpu_offload(device=config.device)
    else:
        pipeline.to(config.device)
    for component in pipeline.components.values():
        if isinstance(component, torch.nn.Module):  # built from configs they start in training mode: T5's dropout
            component.eval()
    pipeline.set_progress_bar_config(disable=True)
    denoiser = denoiser_of(pipeline)
    signature = pipeline_signature(pipeline)
    # Flux's transformer has no sample size; its pipeline holds the default; Z-Image's holds none either.
    latent_size = denoiser.config.get("sample_size") or getattr(pipeline, "default_sample_size", None)
    # A video pipeline's VAE also compresses time: its spatial factor is the one a frame's size is divided by.
    vae_factor = next(
        getattr(pipeline, name)
        for name in ("vae_scale_factor", "vae_scale_factor_spatial", "vae_spatial_compression_ratio")  # LTX-2's
        if getattr(pipeline, name, None)
    )
    native_size = latent_size * vae_factor if latent_size else family_of_pipeline(pipeline).rendering.native_size
    return BaseModel(
        pipeline=pipeline,
        model=config.base_model,
        family=EMBEDDED_TWINS[config.base_model].label if config.base_path is None else signature.family,
        signature=signature,
        denoiser_params=sum(p.numel() for p in denoiser.parameters()),
        native_size=native_size,
        guidance_scale=default_guidance(pipeline),
        dtype=str(denoiser.dtype).removeprefix("torch."),
        single_file=single_file,
    )


def _load_around(path: Path, component: str, model, dtype):
    """The pipeline of the folder at `path` around `model` (loaded elsewhere) as its `component`. diffusers loads
    a component its pipeline takes as an optional argument (WanPipeline's transformer) from the folder even when
    one is passed, so the pipeline is read from a view of the folder whose model_index names none."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="lora-harness-components-") as view:
        for entry in path.iterdir():
            if entry.name != "model_index.json":
                (Path(view) / entry.name).symlink_to(entry)
        index = json.loads((path / "model_index.json").read_text())
        (Path(view) / "model_index.json").write_text(json.dumps({**index, component: [None, None]}))
        return _load_folder(Path(view), dtype, **{component: model})


def _load_folder(path, dtype, **components):
    """A diffusers folder's pipeline; `components`: models loaded elsewhere (a single file's denoiser)."""
    from diffusers import DiffusionPipeline

    index = json.loads((path / "model_index.json").read_text())
    if "safety_checker" in index:
        # A validation run judges the adapter's pixels, not content; the checker would black out images.
        components |= {"safety_checker": None, "requires_safety_checker": False}
    return DiffusionPipeline.from_pretrained(
        path, local_files_only=True, use_safetensors=True, dtype=dtype, **components
    )
