"""Kohya's names, shared by the layouts that use them (sd-scripts' LoRA, LyCORIS's Kohya network): the prefix that
says which component a module is in, and the U-Net block names sd-scripts' own SDXL U-Net has (SGM's) beside
diffusers'."""

from __future__ import annotations

KOHYA_COMPONENTS = {
    "lora_unet_": "unet",
    "lora_te_": "text_encoder",
    "lora_te1_": "text_encoder",
    "lora_te2_": "text_encoder_2",
}
SGM_BLOCKS = ("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_")
DIFFUSERS_BLOCKS = ("lora_unet_down_blocks_", "lora_unet_mid_block_", "lora_unet_up_blocks_")
