"""The reference tiny overfit (positive control) and its untrained twin (negative control).

A rank-4 LoRA on every attention projection of the denoiser (the modules per family are in `families`), trained
with peft on one image and one caption with the family's own objective.
Both are saved with peft's `save_pretrained` and checked through the same loader as any user's adapter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lora_harness.bases.families import FLUX, REFERENCE_TARGETS, SD3, UNET, denoiser_of, pipeline_signature
from lora_harness.rendering.renders import default_guidance

RANK = 4
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
    """Train in place on the pipeline's denoiser and restore it: the base is wrapped, trained, saved and unloaded."""
    from peft import LoraConfig, get_peft_model

    run = ReferenceRun(reference_dir=out_dir / "reference", control_dir=out_dir / "control-untrained")
    architecture = pipeline_signature(pipeline).architecture
    denoiser = denoiser_of(pipeline)
    # Only the family's targets this base has (a Flux cut down to single-stream blocks has no text-stream projections).
    names = [name for name, _ in denoiser.named_modules()]
    targets = [t for t in REFERENCE_TARGETS[architecture] if any(name.endswith(f".{t}") for name in names)]
    config = LoraConfig(r=RANK, lora_alpha=RANK, target_modules=targets, init_lora_weights=True)
    torch.manual_seed(SEED)
    model = get_peft_model(denoiser, config)
    try:
        model.save_pretrained(run.control_dir)  # peft's default init: B = 0, so it cannot change an image
        run.trainable = [name for name, p in model.named_parameters() if p.requires_grad]
        example = EXAMPLES[architecture](pipeline, size, device)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LEARNING_RATE)
        generator = torch.Generator(device).manual_seed(SEED)
        model.train()
        for step in range(steps):
            # In the base's dtype: float32 noise would promote a float16 base's inputs (`--dtype`).
            noise = torch.randn(example.latents.shape, generator=generator, device=device, dtype=example.latents.dtype)
            noisy, timestep, target = example.noised(noise, generator)
            loss = torch.nn.functional.mse_loss(example.predict(model, noisy, timestep).float(), target.float())
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
    denoiser.requires_grad_(False)
    return run


@dataclass
class DiffusionExample:
    """The training image and caption for a U-Net: noised by the scheduler, predicting noise or velocity."""

    latents: torch.Tensor
    conditioning: dict
    scheduler: object

    @classmethod
    @torch.no_grad()
    def encode(cls, pipeline, size: int, device: str):
        """The image's latents and the caption's conditioning, as the pipeline itself encodes a prompt."""
        latents = _vae_latents(pipeline, size, device)
        encoded = pipeline.encode_prompt(
            prompt=CAPTION, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        conditioning = {"encoder_hidden_states": encoded[0]}
        if pipeline.unet.config.addition_embed_type == "text_time":  # SDXL: pooled text and size micro-conditioning
            original_size, crop_top_left, target_size = (size, size), (0, 0), (size, size)
            time_ids = torch.tensor(
                [[*original_size, *crop_top_left, *target_size]], device=device, dtype=encoded[0].dtype
            )
            conditioning["added_cond_kwargs"] = {"text_embeds": encoded[2], "time_ids": time_ids}
        return cls(latents * pipeline.vae.config.scaling_factor, conditioning, pipeline.scheduler)

    def noised(self, noise, generator):
        """(noisy latents, timestep, target) at a random training timestep."""
        device = self.latents.device
        timestep = torch.randint(0, self.scheduler.config.num_train_timesteps, (1,), generator=generator, device=device)
        noisy = self.scheduler.add_noise(self.latents, noise, timestep)
        if self.scheduler.config.get("prediction_type") == "v_prediction":  # SD2.x 768-v and its kin
            return noisy, timestep, self.scheduler.get_velocity(self.latents, noise, timestep)
        return noisy, timestep, noise

    def predict(self, model, noisy, timestep):
        return model(noisy, timestep, **self.conditioning).sample


@dataclass
class FlowExample:
    """The training image and caption for an MMDiT: rectified flow, x_t = (1 - t) x_0 + t noise, predicting
    noise - x_0, as diffusers' Flux and SD3 training scripts do."""

    latents: torch.Tensor  # Flux: packed 2x2 patches [1, patches, 4 * channels]; SD3: [1, channels, h, w]
    conditioning: dict
    timestep_scale: float = 1.0  # Flux's transformer takes t in [0, 1], SD3's in [0, 1000]

    @classmethod
    @torch.no_grad()
    def for_flux(cls, pipeline, size: int, device: str):
        latents = _flow_latents(pipeline, size, device)
        batch, channels, height, width = latents.shape
        packed = pipeline._pack_latents(latents, batch, channels, height, width)
        prompt_embeds, pooled, text_ids = pipeline.encode_prompt(
            prompt=CAPTION, prompt_2=None, device=device, num_images_per_prompt=1
        )
        conditioning = {
            "encoder_hidden_states": prompt_embeds,
            "pooled_projections": pooled,
            "txt_ids": text_ids,
            "img_ids": pipeline._prepare_latent_image_ids(batch, height // 2, width // 2, device, prompt_embeds.dtype),
        }
        if pipeline.transformer.config.guidance_embeds:  # guidance-distilled (FLUX.1-dev): its default guidance
            conditioning["guidance"] = torch.full((1,), default_guidance(pipeline), device=device)
        return cls(packed, conditioning)

    @classmethod
    @torch.no_grad()
    def for_sd3(cls, pipeline, size: int, device: str):
        prompt_embeds, _, pooled, _ = pipeline.encode_prompt(
            prompt=CAPTION,
            prompt_2=None,
            prompt_3=None,
            device=device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
        )
        conditioning = {"encoder_hidden_states": prompt_embeds, "pooled_projections": pooled}
        return cls(_flow_latents(pipeline, size, device), conditioning, timestep_scale=1000.0)

    def noised(self, noise, generator):
        sigma = torch.rand((1,), generator=generator, device=self.latents.device, dtype=self.latents.dtype)
        weight = sigma.reshape(-1, *[1] * (self.latents.ndim - 1))
        return (1 - weight) * self.latents + weight * noise, sigma, noise - self.latents

    def predict(self, model, noisy, sigma):
        return model(hidden_states=noisy, timestep=sigma * self.timestep_scale, **self.conditioning).sample


EXAMPLES = {UNET: DiffusionExample.encode, FLUX: FlowExample.for_flux, SD3: FlowExample.for_sd3}


def _flow_latents(pipeline, size: int, device: str) -> torch.Tensor:
    return (
        _vae_latents(pipeline, size, device) - pipeline.vae.config.shift_factor
    ) * pipeline.vae.config.scaling_factor


def _vae_latents(pipeline, size: int, device: str) -> torch.Tensor:
    pixels = torch.from_numpy(reference_image(size)).permute(2, 0, 1)[None].to(device, pipeline.vae.dtype)
    return pipeline.vae.encode(pixels * 2 - 1).latent_dist.mean
