"""The reference tiny overfit (positive control) and its untrained twin (negative control).

A rank-4 LoRA on every attention projection of the U-Net, trained with peft on one image and one caption.
Both are saved with peft's `save_pretrained` and checked through the same loader as any user's adapter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

RANK = 4
TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0"]
CAPTION = "a red sun over blue hills, lora-harness reference style"
LEARNING_RATE = 1e-2  # a deliberate overfit: a few steps must visibly change the image
SEED = 0


@dataclass
class ReferenceRun:
    reference_dir: Path
    control_dir: Path
    losses: list[float] = field(default_factory=list)
    trainable: list[str] = field(default_factory=list)  # parameters with requires_grad during training


def reference_image(size: int) -> np.ndarray:
    """A fixed picture to overfit: a red disc over two blue hills, HxWx3 in [0, 1]."""
    y, x = np.mgrid[0:size, 0:size] / size
    image = np.stack([0.2 + 0.5 * y, 0.4 + 0.3 * y, 0.9 - 0.2 * y], axis=-1)
    hills = y > 0.65 + 0.1 * np.sin(6 * x)
    image[hills] = (0.1, 0.2, 0.6)
    sun = (x - 0.3) ** 2 + (y - 0.3) ** 2 < 0.03
    image[sun] = (0.9, 0.15, 0.1)
    return image.astype(np.float32)


def train_reference(pipeline, steps: int, size: int, device: str, out_dir: Path, progress=None) -> ReferenceRun:
    """Train in place on `pipeline.unet` and restore it: the base is wrapped, trained, saved and unloaded."""
    from peft import LoraConfig, get_peft_model

    run = ReferenceRun(reference_dir=out_dir / "reference", control_dir=out_dir / "control-untrained")
    config = LoraConfig(r=RANK, lora_alpha=RANK, target_modules=TARGET_MODULES, init_lora_weights=True)
    torch.manual_seed(SEED)
    model = get_peft_model(pipeline.unet, config)
    try:
        model.save_pretrained(run.control_dir)  # peft's default init: B = 0, so it cannot change an image
        run.trainable = [name for name, p in model.named_parameters() if p.requires_grad]
        latents, conditioning = _encode_example(pipeline, size, device)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LEARNING_RATE)
        scheduler = pipeline.scheduler
        generator = torch.Generator(device).manual_seed(SEED)
        model.train()
        for step in range(steps):
            noise = torch.randn(latents.shape, generator=generator, device=device)
            timestep = torch.randint(0, scheduler.config.num_train_timesteps, (1,), generator=generator, device=device)
            noisy = scheduler.add_noise(latents, noise, timestep)
            target = noise
            if scheduler.config.get("prediction_type") == "v_prediction":
                target = scheduler.get_velocity(latents, noise, timestep)
            prediction = model(noisy, timestep, **conditioning).sample
            loss = torch.nn.functional.mse_loss(prediction.float(), target.float())
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            run.losses.append(loss.item())
            if progress is not None:
                progress(step + 1, steps, run.losses[-1])
        model.eval()
        model.save_pretrained(run.reference_dir)
    finally:
        model.unload()  # removes the LoRA layers and leaves the base module as it was
    pipeline.unet.requires_grad_(False)
    return run


@torch.no_grad()
def _encode_example(pipeline, size: int, device: str):
    """The training image's latents and the caption's conditioning, as the pipeline itself encodes a prompt."""
    pixels = torch.from_numpy(reference_image(size)).permute(2, 0, 1)[None].to(device, pipeline.vae.dtype)
    latent_dist = pipeline.vae.encode(pixels * 2 - 1).latent_dist
    latents = latent_dist.mean * pipeline.vae.config.scaling_factor
    encoded = pipeline.encode_prompt(prompt=CAPTION, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False)
    conditioning = {"encoder_hidden_states": encoded[0]}
    if pipeline.unet.config.addition_embed_type == "text_time":  # SDXL: pooled text and size micro-conditioning
        original_size, crop_top_left, target_size = (size, size), (0, 0), (size, size)
        time_ids = torch.tensor([[*original_size, *crop_top_left, *target_size]], device=device, dtype=encoded[0].dtype)
        conditioning["added_cond_kwargs"] = {"text_embeds": encoded[2], "time_ids": time_ids}
    return latents, conditioning
