"""LTX-2 (Lightricks' audio-video model): transformer blocks of a video and an audio stream, each with
self-attention, cross-attention to Gemma 3's states (through the pipeline's text connectors) and an MLP, and
attention from each stream to the other; a causal video VAE, an audio VAE and a vocoder; trained by rectified flow.
A render is a stack of frames (`--render-frames`) and a soundtrack, which the checks do not judge; the reference
overfit trains the video stream on a still, the audio stream given noise."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lora_harness.bases import tiny_ltx2
from lora_harness.bases.families.family import (
    Blocks,
    Denoiser,
    Family,
    Reference,
    Rendering,
    TinyTwin,
    attention_inner_width,
)
from lora_harness.bases.families.objectives import RectifiedFlow, still_video_latents

# The video stream's self-attention, where a still's look is learned (the loss is the video stream's alone).
VIDEO_ATTENTION = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0")
FRAME_RATE = 24.0  # its pipeline's default


@dataclass
class AudioVideoFlow(RectifiedFlow):
    """LTX-2's rectified flow on a still: the video stream's latents noised and `noise - x_0` predicted; the audio
    stream, which a still has no soundtrack for, given pure noise at t = 1, where the pipeline's audio starts."""

    def predict(self, model, noisy, sigma):
        timestep = sigma * self.timestep_scale
        video, _audio = model(
            hidden_states=noisy, timestep=timestep, sigma=timestep, **self.conditioning, return_dict=False
        )
        return video


@torch.no_grad()
def training_example(pipeline, pixels, caption: str, device: str) -> AudioVideoFlow:
    """The training image as a one-frame video, encoded, normalized and packed as `LTX2Pipeline` prepares latents;
    the caption through Gemma and the text connectors; the audio stream's noise seeded."""
    vae = pipeline.vae
    latents = still_video_latents(pipeline, pixels, device)
    latents = pipeline._normalize_latents(latents, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)
    _, _, frames, height, width = latents.shape
    transformer = pipeline.transformer
    packed = pipeline._pack_latents(latents, transformer.config.patch_size, transformer.config.patch_size_t)
    prompt_embeds, mask, _, _ = pipeline.encode_prompt(caption, do_classifier_free_guidance=False, device=device)
    video_text, audio_text, text_mask = pipeline.connectors(prompt_embeds, mask, padding_side="left")
    # As many audio latents as the pipeline makes for the clip's duration (one frame: at least one).
    per_second = (
        pipeline.audio_sampling_rate / pipeline.audio_hop_length / pipeline.audio_vae_temporal_compression_ratio
    )
    audio_frames = max(1, round(frames / FRAME_RATE * per_second))
    mel_bins = pipeline.audio_vae.config.mel_bins // pipeline.audio_vae_mel_compression_ratio
    audio_shape = (1, pipeline.audio_vae.config.latent_channels, audio_frames, mel_bins)
    audio = torch.randn(audio_shape, generator=torch.Generator().manual_seed(0)).to(device, packed.dtype)
    conditioning = {
        "audio_hidden_states": pipeline._pack_audio_latents(audio),
        "audio_timestep": torch.full((1,), 1000.0, device=device),
        "audio_sigma": torch.full((1,), 1000.0, device=device),
        "encoder_hidden_states": video_text,
        "audio_encoder_hidden_states": audio_text,
        "encoder_attention_mask": text_mask,
        "audio_encoder_attention_mask": text_mask,
        "num_frames": frames,
        "height": height,
        "width": width,
        "fps": FRAME_RATE,
        "audio_num_frames": audio_frames,
        "video_coords": transformer.rope.prepare_video_coords(1, frames, height, width, device, fps=FRAME_RATE),
        "audio_coords": transformer.audio_rope.prepare_audio_coords(1, audio_frames, device),
    }
    return AudioVideoFlow(packed, conditioning, timestep_scale=1000.0)  # its transformer takes t in [0, 1000]


FAMILY = Family(
    name="LTX-2",
    pipelines=("LTX2Pipeline",),
    denoiser=Denoiser(
        architecture="ltx2",
        component="transformer",
        classes=("LTX2VideoTransformer3DModel",),
        width=attention_inner_width,
        width_label="video stream width",
        width_modules=("attn1.to_q",),
        distinctive_modules=("audio_attn1.", "audio_to_video_attn.", "video_to_audio_attn."),
    ),
    widths={4096: "LTX-2", 48: "tiny LTX-2"},
    any_width=True,
    reference=Reference(targets=VIDEO_ATTENTION, example=training_example),
    rendering=Rendering(scale_keyword="attention_kwargs", native_size=512, video=True),
    blocks=Blocks(
        stages={"transformer_blocks": "av"},
        kinds={
            "attn1": "attn",
            "attn2": "attn-text",
            "audio_attn1": "audio-attn",
            "audio_attn2": "audio-attn-text",
            "audio_to_video_attn": "audio-to-video",
            "video_to_audio_attn": "video-to-audio",
            "ff": "ff",
            "audio_ff": "audio-ff",
        },
    ),
    lineage_prefixes=("ltx-2", "ltx2", "ltx_2", "ltxv2"),
    # Its `lora_state_dict` converts Lightricks' trainer's and ComfyUI's `diffusion_model.` names.
    converts_trainer_layouts=True,
    tiny=TinyTwin("tiny-ltx2", "tiny (LTX-2-shaped)", tiny_ltx2.build_tiny_ltx2_pipeline),
)
