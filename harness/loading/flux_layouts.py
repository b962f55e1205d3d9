"""Flux LoRAs in the community's layouts, and what each of their modules means in diffusers' Flux.

Kohya's sd-scripts (`lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight`), ComfyUI
(`diffusion_model.double_blocks.0.img_attn.qkv.lora_down.weight`) and XLabs
(`double_blocks.0.processor.qkv_lora1.down.weight`) name Flux's original modules, where a block's q, k and v (in a
single-stream block also the MLP's input) are one fused linear. diffusers' conversion splits them and bakes alpha
into the values, so the tensors that land are not the file's. What a module of the file means is its update
up · down · alpha / rank: this table says which rows of which diffusers layers it fills, so the proof can compare
updates instead of tensors. Row widths come from the base's own layers, never from Flux.1's sizes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from lora_harness.loading.kohya_names import module_names

KOHYA_FLUX = "kohya-flux"
COMFYUI_FLUX = "comfyui-flux"
# ComfyUI's names with PEFT's factor names and no alpha, as diffusion-pipe saves Chroma's and Flux's ("ComfyUI format")
COMFYUI_FLUX_PEFT = "comfyui-flux-peft"
XLABS_FLUX = "xlabs-flux"
LAYOUTS = (KOHYA_FLUX, COMFYUI_FLUX, COMFYUI_FLUX_PEFT, XLABS_FLUX)

# A double-stream block's original modules (Kohya spelling) -> the diffusers layers their output rows fill, in order.
DOUBLE_BLOCK = {
    "img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "img_attn_proj": ("attn.to_out.0",),
    "img_mlp_0": ("ff.net.0.proj",),
    "img_mlp_2": ("ff.net.2",),
    "img_mod_lin": ("norm1.linear",),
    "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "txt_attn_proj": ("attn.to_add_out",),
    "txt_mlp_0": ("ff_context.net.0.proj",),
    "txt_mlp_2": ("ff_context.net.2",),
    "txt_mod_lin": ("norm1_context.linear",),
}
SINGLE_BLOCK = {
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "linear2": ("proj_out",),
    "modulation_lin": ("norm.linear",),
}
OUTSIDE_BLOCKS = {
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in_in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in_out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in_in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in_out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in_in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in_out_layer": "time_text_embed.guidance_embedder.linear_2",
    "final_layer_linear": "proj_out",
    "final_layer_adaLN_modulation_1": "norm_out.linear",
}
# Flux's final modulation is (shift, scale); diffusers' AdaLayerNormContinuous reads (scale, shift).
SWAPPED_HALVES = {"final_layer_adaLN_modulation_1"}
# XLabs' LoRA processors, by the original module each one adds to (single blocks: only linear1's q, k, v rows).
XLABS_DOUBLE = {
    "qkv_lora1": "img_attn_qkv",
    "qkv_lora2": "txt_attn_qkv",
    "proj_lora1": "img_attn_proj",
    "proj_lora2": "txt_attn_proj",
}
XLABS_SINGLE = {"qkv_lora": ("attn.to_q", "attn.to_k", "attn.to_v"), "proj_lora": ("proj_out",)}

FACTOR_SUFFIXES = {
    KOHYA_FLUX: (".lora_down.weight", ".lora_up.weight"),
    COMFYUI_FLUX: (".lora_down.weight", ".lora_up.weight"),
    COMFYUI_FLUX_PEFT: (".lora_A.weight", ".lora_B.weight"),
    XLABS_FLUX: (".down.weight", ".up.weight"),
}
TEXT_ENCODER_PREFIXES = ("lora_te1_", "lora_te_", "text_encoders.clip_l.transformer.")


@dataclass(frozen=True)
class FluxModule:
    """One module of the file: its factors' keys and scale, and the diffusers layers its update's rows fill."""

    down: str  # file key
    up: str  # file key
    scale: float  # alpha / rank as the file declares it (XLabs keeps no alpha: 1)
    component: str
    layers: tuple[str, ...]  # module paths in `component`, in row order
    swapped_halves: bool = False

    @property
    def name(self) -> str:
        """'transformer.transformer_blocks.0.attn.to_q+to_k+to_v' for a fused module."""
        rest = "".join(f"+{layer.rsplit('.', 1)[-1]}" for layer in self.layers[1:])
        return f"{self.component}.{self.layers[0]}{rest}"

    def split(self, rows: torch.Tensor, widths: list[int]) -> tuple[torch.Tensor, ...]:
        """`rows` (the update's, or the up matrix's, which decide them) cut into each layer's share."""
        if self.swapped_halves:
            shift, scale = rows.chunk(2)
            rows = torch.cat([scale, shift])
        return torch.split(rows, widths)


def flux_layout(keys) -> str | None:
    keys = list(keys)
    if any(".processor." in k and k.startswith(("double_blocks.", "single_blocks.", "diffusion_model.")) for k in keys):
        return XLABS_FLUX
    if any(k.startswith(("lora_unet_double_blocks_", "lora_unet_single_blocks_")) for k in keys):
        return KOHYA_FLUX
    blocks = [k for k in keys if k.startswith(("diffusion_model.double_blocks.", "diffusion_model.single_blocks."))]
    if any(k.endswith(".lora_down.weight") for k in blocks):
        return COMFYUI_FLUX
    if any(k.endswith(".lora_A.weight") for k in blocks):
        return COMFYUI_FLUX_PEFT
    return None


def flux_modules(tensors: dict[str, torch.Tensor], layout: str, text_encoder_layers) -> dict[str, FluxModule]:
    """Every module of the file whose meaning is known -> its FluxModule; keys of other modules are left out."""
    down_suffix, up_suffix = FACTOR_SUFFIXES[layout]
    text_encoder_names = _text_encoder_names(text_encoder_layers)
    modules = {}
    for key in tensors:
        if not key.endswith(down_suffix):
            continue
        module = key.removesuffix(down_suffix)
        up = module + up_suffix
        meaning = _meaning(module, layout, text_encoder_names)
        if meaning is None or up not in tensors:
            continue
        component, layers, swapped = meaning
        alpha = tensors.get(f"{module}.alpha")
        rank = tensors[key].shape[0]
        scale = 1.0 if alpha is None else float(alpha) / rank  # Kohya: no alpha means alpha = rank
        modules[module] = FluxModule(key, up, scale, component, layers, swapped)
    return modules


def _meaning(module: str, layout: str, text_encoder_names: dict[str, str]):
    """(component, layers, swapped halves) for one of the file's modules, or None when it names nothing known."""
    if layout == XLABS_FLUX:
        match = re.fullmatch(r"(?:diffusion_model\.)?(double|single)_blocks\.(\d+)\.processor\.(\w+)", module)
        if match is None:
            return None
        stream, index, processor = match.groups()
        if stream == "double":
            original = XLABS_DOUBLE.get(processor)
            return None if original is None else _block_layers("transformer_blocks", index, DOUBLE_BLOCK[original])
        return _block_layers("single_transformer_blocks", index, XLABS_SINGLE.get(processor))
    if module.startswith(TEXT_ENCODER_PREFIXES):
        prefix = next(p for p in TEXT_ENCODER_PREFIXES if module.startswith(p))
        kohya = module.removeprefix(prefix).replace(".", "_")
        # A name the base's CLIP lacks keeps its Kohya spelling, so validation reports it with the nearest layers.
        return "text_encoder", (text_encoder_names.get(kohya, kohya),), False
    name = module.removeprefix("lora_unet_").removeprefix("diffusion_model.").replace(".", "_")
    match = re.fullmatch(r"(double|single)_blocks_(\d+)_(\w+)", name)
    if match is not None:
        stream, index, original = match.groups()
        table = DOUBLE_BLOCK if stream == "double" else SINGLE_BLOCK
        return _block_layers(
            "transformer_blocks" if stream == "double" else "single_transformer_blocks", index, table.get(original)
        )
    layer = OUTSIDE_BLOCKS.get(name)
    return None if layer is None else ("transformer", (layer,), name in SWAPPED_HALVES)


def _block_layers(blocks: str, index: str, layers):
    return None if layers is None else ("transformer", tuple(f"{blocks}.{index}.{layer}" for layer in layers), False)


def _text_encoder_names(layer_names) -> dict[str, str]:
    """Kohya spelling (without prefix) -> layer path; published files keep transformers 4's `text_model.`."""
    return module_names("text_encoder", "", layer_names)


def convert(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers' own conversion, as `FluxPipeline.load_lora_weights` runs it, on copies: it scales some of the
    tensors it is given in place (measured: a Kohya file's text-encoder factors). ComfyUI's names with PEFT's factor
    names reach it as ComfyUI's own (`lora_down` / `lora_up`, which ComfyUI reads alike): diffusers' Flux conversion
    reads only those, and returns the others unconverted (measured: 0.42.1), so that nothing would land."""
    from diffusers import FluxPipeline

    if flux_layout(tensors) == COMFYUI_FLUX_PEFT:
        tensors = {_comfyui_factor_name(key): tensor for key, tensor in tensors.items()}
    return FluxPipeline.lora_state_dict({key: tensor.clone() for key, tensor in tensors.items()})


def _comfyui_factor_name(key: str) -> str:
    down, up = FACTOR_SUFFIXES[COMFYUI_FLUX_PEFT]
    if key.endswith(down):
        return key.removesuffix(down) + FACTOR_SUFFIXES[COMFYUI_FLUX][0]
    return key.removesuffix(up) + FACTOR_SUFFIXES[COMFYUI_FLUX][1] if key.endswith(up) else key
