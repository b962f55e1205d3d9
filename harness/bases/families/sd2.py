"""SD2.x (SD 2.0, 2.1, 512 and 768-v): a U-Net whose cross-attention reads OpenCLIP ViT-H's 1024-wide states."""

from lora_harness.bases.families import unet
from lora_harness.bases.families.family import Family, SingleFile

FAMILY = Family(
    name="SD2.x",
    pipelines=("StableDiffusionPipeline",),
    **unet.PARTS,
    widths={1024: "SD2.x"},
    lineage_prefixes=("sd_v2", "stable-diffusion-v2"),
    model_types=("v2",),
    single_file=SingleFile(
        configs="sd2",
        parts={
            unet.LDM_UNET: "U-Net",
            "first_stage_model.": "VAE",
            "cond_stage_model.model.": "OpenCLIP ViT-H text encoder",
        },
        tokenizers={"tokenizer": "!"},
        pipeline_kwargs=unet.NO_SAFETY_CHECKER,
    ),
)
