"""`tiny-ltx2`: LTX-2's audio-video pipeline (diffusers' `LTX2Pipeline`) at tiny widths with seeded weights, built
offline from diffusers' and transformers' own classes: a transformer of joint video and audio streams (each with
self-attention, cross-attention to the text, an MLP, and attention from each stream to the other), a causal video
VAE, an audio VAE and vocoder, the text connectors, and Gemma 3 with a locally trained tokenizer.

The widths that must agree, as diffusers' classes read them: the connectors take every Gemma hidden state stacked
(`TEXT_HIDDEN x (TEXT_LAYERS + 1)`) and work at `TEXT_HIDDEN`, the transformer's caption width; each stream's
cross-attention is as wide as the stream; an audio token is the audio latent's channels times its mel bins (the audio
VAE compresses mel bins 4x), which the audio VAE's statistics and the transformer's audio input both take; the
vocoder reads the audio VAE's mel output flattened over its channels."""

from __future__ import annotations

import json

import torch

from lora_harness.bases.tiny_base import NATIVE_SIZE, SEED

TEXT_HIDDEN, TEXT_LAYERS = 32, 2
VIDEO_HEADS, VIDEO_HEAD_DIM = 4, 12  # 48 wide: a width no other family's twin has
AUDIO_HEADS, AUDIO_HEAD_DIM = 2, 4
AUDIO_LATENT_CHANNELS, MEL_BINS = 2, 8
AUDIO_TOKEN = AUDIO_LATENT_CHANNELS * (MEL_BINS // 4)
SAMPLE_RATE, HOP_LENGTH = 16000, 160  # the audio VAE's and the transformer's must agree
# Gemma's special tokens, at its ids (pad 0, eos 1, bos 2), and the words its merges are trained on.
GEMMA_SPECIAL = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>")
GEMMA_CORPUS = (
    "a red cube on a table",
    "a blue sphere rolling across the floor",
    "the camera slowly pans over a city at night",
    "waves crash on a sandy beach",
)


def gemma_tokenizer():
    """A BPE `GemmaTokenizer` with byte fallback (unseen characters become bytes, never `<unk>`), its merges trained
    (by `tokenizers`) on a few captions. Nothing is downloaded."""
    from tokenizers import Tokenizer, models, normalizers, trainers
    from transformers import GemmaTokenizer

    backend = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    backend.normalizer = normalizers.Replace(" ", "▁")  # Gemma's own, so the merges apply when it encodes
    byte_tokens = [f"<0x{byte:02X}>" for byte in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=[*GEMMA_SPECIAL, *byte_tokens], show_progress=False)
    backend.train_from_iterator(GEMMA_CORPUS, trainer=trainer)
    trained = json.loads(backend.to_str())["model"]
    merges = [tuple(merge.split(" ")) if isinstance(merge, str) else tuple(merge) for merge in trained["merges"]]
    # transformers' backend does not prepend <bos> unless told; Gemma does.
    tokenizer = GemmaTokenizer(vocab=trained["vocab"], merges=merges, add_bos_token=True, model_max_length=1024)
    tokenizer.padding_side = "left"  # LTX-2's connectors take Gemma's states left-padded
    return tokenizer


def _gemma(vocab_size: int):
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

    text = Gemma3TextConfig(
        vocab_size=vocab_size,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=64,
        num_hidden_layers=TEXT_LAYERS,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        query_pre_attn_scalar=16,
        max_position_embeddings=1024,  # the pipeline pads prompts to 1024 tokens
        sliding_window=16,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    # The pipeline never runs the vision tower, but the class holds one; its image tokens inside the tiny vocabulary.
    vision = SiglipVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=4
    )
    config = Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=4,
        boi_token_index=4,
        eoi_token_index=4,
        image_token_index=3,
    )
    return Gemma3ForConditionalGeneration(config).eval()


def build_tiny_ltx2_pipeline():
    """LTX-2-shaped (text to video with audio): two transformer blocks of joint video (48 wide) and audio (8 wide)
    streams, 2x spatial and temporal video compression, rectified-flow Euler sampling with classifier-free and
    spatio-temporal guidance."""
    from diffusers import (
        AutoencoderKLLTX2Audio,
        AutoencoderKLLTX2Video,
        FlowMatchEulerDiscreteScheduler,
        LTX2Pipeline,
        LTX2VideoTransformer3DModel,
    )
    from diffusers.pipelines.ltx2.connectors import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder

    tokenizer = gemma_tokenizer()
    torch.manual_seed(SEED)
    text_encoder = _gemma(len(tokenizer))
    torch.manual_seed(SEED + 1)
    vae = AutoencoderKLLTX2Video(
        latent_channels=4,
        block_out_channels=(8,),
        decoder_block_out_channels=(8,),
        layers_per_block=(1,),
        decoder_layers_per_block=(1, 1),
        spatio_temporal_scaling=(True,),
        decoder_spatio_temporal_scaling=(True,),
        decoder_inject_noise=(False, False),
        downsample_type=("spatiotemporal",),  # the encoder compresses time as the decoder expands it
        upsample_residual=(False,),
        upsample_factor=(1,),
        timestep_conditioning=False,
        patch_size=1,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
    )
    torch.manual_seed(SEED + 2)
    audio_vae = AutoencoderKLLTX2Audio(
        base_channels=AUDIO_TOKEN,  # its latent statistics are applied to packed audio tokens
        output_channels=2,
        ch_mult=(1,),
        num_res_blocks=1,
        attn_resolutions=None,
        in_channels=2,
        resolution=32,
        latent_channels=AUDIO_LATENT_CHANNELS,
        norm_type="pixel",
        causality_axis="height",
        dropout=0.0,
        mid_block_add_attention=False,
        sample_rate=SAMPLE_RATE,
        mel_hop_length=HOP_LENGTH,
        is_causal=True,
        mel_bins=MEL_BINS,
    )
    torch.manual_seed(SEED + 3)
    connectors = LTX2TextConnectors(
        caption_channels=TEXT_HIDDEN,
        text_proj_in_factor=TEXT_LAYERS + 1,  # every hidden state, the embeddings' included
        video_connector_num_attention_heads=4,
        video_connector_attention_head_dim=TEXT_HIDDEN // 4,
        video_connector_num_layers=1,
        video_connector_num_learnable_registers=None,  # registers would fix the prompt length to their multiple
        audio_connector_num_attention_heads=4,
        audio_connector_attention_head_dim=TEXT_HIDDEN // 4,
        audio_connector_num_layers=1,
        audio_connector_num_learnable_registers=None,
        connector_rope_base_seq_len=32,
        rope_double_precision=False,
        rope_type="split",
    )
    torch.manual_seed(SEED + 4)
    ratios = (vae.temporal_compression_ratio, vae.spatial_compression_ratio, vae.spatial_compression_ratio)
    transformer = LTX2VideoTransformer3DModel(
        in_channels=4,
        out_channels=4,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=VIDEO_HEADS,
        attention_head_dim=VIDEO_HEAD_DIM,
        cross_attention_dim=VIDEO_HEADS * VIDEO_HEAD_DIM,
        vae_scale_factors=ratios,  # its rotary positions map latent coordinates back to pixels
        audio_in_channels=AUDIO_TOKEN,
        audio_out_channels=AUDIO_TOKEN,
        audio_num_attention_heads=AUDIO_HEADS,
        audio_attention_head_dim=AUDIO_HEAD_DIM,
        audio_cross_attention_dim=AUDIO_HEADS * AUDIO_HEAD_DIM,
        audio_sampling_rate=SAMPLE_RATE,
        audio_hop_length=HOP_LENGTH,
        num_layers=2,
        caption_channels=TEXT_HIDDEN,
        rope_double_precision=False,
        rope_type="split",
        perturbed_attn=True,  # the attention spatio-temporal guidance perturbs; without it, STG changes nothing
    )
    torch.manual_seed(SEED + 5)
    vocoder = LTX2Vocoder(
        in_channels=2 * MEL_BINS,
        hidden_channels=32,
        out_channels=2,
        upsample_kernel_sizes=[4, 4],
        upsample_factors=[2, 2],
        resnet_kernel_sizes=[3],
        resnet_dilations=[[1, 3, 5]],
        leaky_relu_negative_slope=0.1,
        output_sampling_rate=SAMPLE_RATE,
    )
    pipeline = LTX2Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        audio_vae=audio_vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        connectors=connectors,
        transformer=transformer,
        vocoder=vocoder,
    )
    pipeline.default_sample_size = NATIVE_SIZE // pipeline.vae_spatial_compression_ratio  # its `__call__`: 512 x 768
    return pipeline
