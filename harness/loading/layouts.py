"""The layouts an adapter file's keys come in, as results.json's `format` names them (a contract: extended, never
renamed). Flux's community layouts are named in `flux_layouts`, LyCORIS's two in `lycoris_modules`."""

KOHYA = "kohya"  # sd-scripts' and musubi-tuner's `lora_unet_…` / `lora_te_…` with `.alpha`
PEFT_FOLDER = "peft"  # peft's save_pretrained: a folder, `base_model.model.…`, adapter_config.json
PEFT_FILE = "peft-file"  # PEFT key layout in one file, no component prefix, LoraConfig in its metadata
DIFFUSERS = "diffusers"  # save_lora_weights: `unet.…` / `transformer.…` / `text_encoder.…`
ATTN_PROCS = "diffusers-attn-procs"  # the older attention-processor layout
DIFFUSION_MODEL = "diffusion-model"  # ai-toolkit's and ComfyUI's: the transformer's names under `diffusion_model.`
DIFFUSION_MODEL_PREFIX = "diffusion_model."
MODULE_PATHS = "module-paths"  # the denoiser's own module paths, no prefix (SimpleTuner's LoKr files)
