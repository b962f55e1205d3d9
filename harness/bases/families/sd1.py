"""SD1.x (SD 1.4, 1.5 and their fine-tunes): a U-Net whose cross-attention reads CLIP ViT-L's 768-wide states."""

from lora_harness.bases import tiny_base
from lora_harness.bases.families import unet
from lora_harness.bases.families.family import Family, SingleFile, TinyTwin

FAMILY = Family(
    name="SD1.x",
    pipelines=("StableDiffusionPipeline",),
    **unet.PARTS,
    widths={768: "SD1.x", 32: "tiny SD1.x"},
    lineage_prefixes=("sd_v1", "stable-diffusion-v1"),
    tiny=TinyTwin("tiny", "tiny (SD1.x-shaped)", tiny_base.build_tiny_pipeline),
    model_types=("v1",),
    single_file=SingleFile(
        configs="sd1",
        parts={
            unet.LDM_UNET: "U-Net",
            "first_stage_model.": "VAE",
            "cond_stage_model.transformer.": "CLIP ViT-L text encoder",
        },
        tokenizers={"tokenizer": None},
        pipeline_kwargs=unet.NO_SAFETY_CHECKER,
    ),
)
