"""LTX-2 (Lightricks' audio-video model): transformer blocks of a video and an audio stream, each with
self-attention, cross-attention to Gemma 3's states (through the pipeline's text connectors) and an MLP, and
attention from each stream to the other; a causal video VAE, an audio VAE and a vocoder; trained by rectified flow.
A render is a stack of frames (`--render-frames`) and a soundtrack, which the checks do not judge."""

from __future__ import annotations

from lora_harness.bases import tiny_ltx2
from lora_harness.bases.families.family import Blocks, Denoiser, Family, Rendering, TinyTwin

FAMILY = Family(
    name="LTX-2",
    pipelines=("LTX2Pipeline",),
    denoiser=Denoiser(
        architecture="ltx2",
        component="transformer",
        classes=("LTX2VideoTransformer3DModel",),
        width=lambda transformer: transformer.config.num_attention_heads * transformer.config.attention_head_dim,
        width_label="video stream width",
        width_modules=("attn1.to_q",),
        distinctive_modules=("audio_attn1.", "audio_to_video_attn.", "video_to_audio_attn."),
    ),
    widths={4096: "LTX-2", 48: "tiny LTX-2"},
    any_width=True,
    reference=None,
    without_reference=(
        "LTX-2's module in lora-harness does not yet encode a training example for its joint audio-video objective, "
        "so no reference overfit is trained on it: the reference and its controls were not run"
    ),
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
