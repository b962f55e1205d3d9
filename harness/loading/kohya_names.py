"""Kohya's names, shared by the layouts that use them (sd-scripts' LoRA, LyCORIS's Kohya network): the prefix that
says which component a module is in, and the U-Net block names sd-scripts' own SDXL U-Net has (SGM's) beside
diffusers'."""

from __future__ import annotations

from lora_harness.bases.families import is_denoiser

KOHYA_COMPONENTS = {
    "lora_unet_": "unet",
    "lora_te_": "text_encoder",
    "lora_te1_": "text_encoder",
    "lora_te2_": "text_encoder_2",
}
SGM_BLOCKS = ("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_")
DIFFUSERS_BLOCKS = ("lora_unet_down_blocks_", "lora_unet_mid_block_", "lora_unet_up_blocks_")


def module_names(component: str, prefix: str, layer_names) -> dict[str, str]:
    """Kohya name -> module path, for every layer of `component`. A CLIP text encoder's layers are named both as
    transformers 4 had them (`text_model.encoder…`, most published files) and as the loaded model has them."""
    names = {}
    for name in layer_names:
        paths = {name}
        if not is_denoiser(component):
            paths.add(name if name.startswith("text_model.") else f"text_model.{name}")
        names.update({prefix + path.replace(".", "_"): name for path in paths})
    return names


# A U-Net's top-level modules: a file naming them was saved from a U-Net, whatever the base is.
UNET_PARTS = ("down_blocks", "mid_block", "up_blocks", "conv_in", "conv_out", "time_embedding", "add_embedding")


def names_a_unet(keys) -> bool:
    """A Kohya file of an SD U-Net (diffusers' names, or SGM's as sd-scripts writes SDXL): converted as SD's loaders
    do, whatever the base, so a wrong-family file is named for the family it was made for."""
    parts = tuple(
        f"lora_unet_{part}_"
        for part in (*UNET_PARTS, "input_blocks", "middle_block", "output_blocks", "time_embed", "label_emb")
    )
    unet_keys = [key for key in keys if key.startswith("lora_unet_")]
    return bool(unet_keys) and all(key.startswith(parts) for key in unet_keys)
