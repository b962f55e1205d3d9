"""SDXL: a U-Net whose cross-attention reads two CLIP encoders' states side by side (768 + 1280 = 2048), with the
pooled text and the size micro-conditioning added to its time embedding."""

from lora_harness.bases import tiny_base
from lora_harness.bases.families import unet
from lora_harness.bases.families.family import Family, SingleFile, TinyTwin

FAMILY = Family(
    name="SDXL",
    pipelines=("StableDiffusionXLPipeline",),
    **unet.PARTS,
    widths={2048: "SDXL", 64: "tiny SDXL"},
    lineage_prefixes=("sdxl", "stable-diffusion-xl"),
    tiny=TinyTwin("tiny-sdxl", "tiny (SDXL-shaped)", tiny_base.build_tiny_sdxl_pipeline),
    model_types=("xl_base",),
    # Its U-Net alone, which diffusers' detection (by a text encoder's key) does not name: its size conditioning.
    file_marks=(unet.LDM_UNET + "label_emb.0.0.weight", unet.LDM_UNET + "input_blocks.4.1.proj_in.weight"),
    single_file=SingleFile(
        configs="sdxl",
        parts={
            unet.LDM_UNET: "U-Net",
            "first_stage_model.": "VAE",
            "conditioner.embedders.0.transformer.": "CLIP ViT-L text encoder",
            "conditioner.embedders.1.model.": "OpenCLIP ViT-bigG text encoder",
        },
        tokenizers={"tokenizer": None, "tokenizer_2": "!"},
        pipeline_kwargs={"add_watermarker": False},
    ),
)
