"""The training objectives the reference overfit uses, one per kind of denoiser: the family modules encode the
image and caption as their pipeline does and hand the latents and conditioning to one of these."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class NoisePrediction:
    """A U-Net's objective: latents noised by the pipeline's scheduler, predicting the noise, or the velocity where
    the scheduler says `v_prediction` (SD2.x 768-v and its kin)."""

    latents: torch.Tensor
    conditioning: dict
    scheduler: object

    def noised(self, noise, generator):
        """(noisy latents, timestep, target) at a random training timestep."""
        device = self.latents.device
        timestep = torch.randint(0, self.scheduler.config.num_train_timesteps, (1,), generator=generator, device=device)
        noisy = self.scheduler.add_noise(self.latents, noise, timestep)
        if self.scheduler.config.get("prediction_type") == "v_prediction":
            return noisy, timestep, self.scheduler.get_velocity(self.latents, noise, timestep)
        return noisy, timestep, noise

    def predict(self, model, noisy, timestep):
        return model(noisy, timestep, **self.conditioning).sample


@dataclass
class RectifiedFlow:
    """An MMDiT's objective: x_t = (1 - t) x_0 + t noise, predicting noise - x_0, as diffusers' Flux and SD3
    training scripts do."""

    latents: torch.Tensor  # as the transformer takes them (Flux: packed 2x2 patches)
    conditioning: dict
    timestep_scale: float = 1.0  # Flux's transformer takes t in [0, 1], SD3's in [0, 1000]

    def noised(self, noise, generator):
        sigma = torch.rand((1,), generator=generator, device=self.latents.device, dtype=self.latents.dtype)
        weight = sigma.reshape(-1, *[1] * (self.latents.ndim - 1))
        return (1 - weight) * self.latents + weight * noise, sigma, noise - self.latents

    def predict(self, model, noisy, sigma):
        return model(hidden_states=noisy, timestep=sigma * self.timestep_scale, **self.conditioning).sample


def scaled_latents(pipeline, pixels: torch.Tensor, device: str) -> torch.Tensor:
    """The VAE's latent mean of `pixels` ([H, W, 3] in [0, 1]) as the denoiser sees it: shifted (where the VAE has
    a shift) and scaled by the VAE's factors."""
    image = pixels.permute(2, 0, 1)[None].to(device, pipeline.vae.dtype)
    shift = pipeline.vae.config.get("shift_factor") or 0.0
    return (pipeline.vae.encode(image * 2 - 1).latent_dist.mean - shift) * pipeline.vae.config.scaling_factor


def still_video_latents(pipeline, pixels: torch.Tensor, device: str) -> torch.Tensor:
    """A video VAE's latent mean of `pixels` ([H, W, 3] in [0, 1]) as a one-frame video, not yet normalized."""
    video = pixels.permute(2, 0, 1)[None, :, None].to(device, pipeline.vae.dtype)  # [1, 3, 1 frame, H, W]
    return pipeline.vae.encode(video * 2 - 1).latent_dist.mean


def normalized_video_latents(pipeline, pixels: torch.Tensor, device: str) -> torch.Tensor:
    """`still_video_latents`, normalized per channel by the VAE's `latents_mean` and `latents_std` (Qwen-Image's and
    Wan's VAEs), as their pipelines' decode undoes."""
    vae = pipeline.vae
    latents = still_video_latents(pipeline, pixels, device)
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1).to(latents)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1).to(latents)
    return (latents - mean) / std
