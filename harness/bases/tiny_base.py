"""The embedded bases: SD1.x-, SDXL-, Flux-, Chroma-, SD3-, Qwen-Image-, Z-Image-, Flux.2- and Wan-shaped pipelines
built from configs with seeded weights.

Module names follow the real models (`down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`, ...), so
every adapter layout that targets their attention loads onto them; only the widths are tiny. Nothing is downloaded.
"""

from __future__ import annotations

import gzip
import json
import warnings
from functools import lru_cache
from importlib import resources

import torch

SEED = 0
NATIVE_SIZE = 64
# SD1.x's block layout at tiny widths; the text width and attention heads are the caller's.
TINY_SD_UNET = dict(
    sample_size=NATIVE_SIZE // 8,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    norm_num_groups=32,
)


def build_tiny_pipeline():
    """SD1.x-shaped: one text encoder, cross-attention 32 wide, DDIM."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(**TINY_SD_UNET, cross_attention_dim=32, attention_head_dim=8)
    return sd_pipeline(unet, _vae(), _text_encoder(CLIPTextModel))


def sd_pipeline(unet, vae, text_encoder, prediction_type: str = "epsilon"):
    """A StableDiffusionPipeline with SD's own DDIM schedule and no safety checker (it would black out pixels)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )
    return StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_tiny_sdxl_pipeline():
    """SDXL-shaped: two text encoders whose hidden states are concatenated (cross-attention 64 wide), the pooled
    text embedding and size micro-conditioning added to the time embedding, SDXL's block layout, Euler."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(
        sample_size=NATIVE_SIZE // 8,
        block_out_channels=(64, 64),  # wide enough that the rank-4 reference (1.8%) is within the default 2% budget
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32,  # six size numbers, each embedded 8 wide, + pooled text
        cross_attention_dim=64,
        norm_num_groups=32,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    )
    return StableDiffusionXLPipeline(
        unet=unet,
        vae=_vae(),
        text_encoder=_text_encoder(CLIPTextModel),
        text_encoder_2=_text_encoder(CLIPTextModelWithProjection, seed=SEED + 1),
        tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(),
        scheduler=scheduler,
        add_watermarker=False,
    )


def build_tiny_flux_pipeline():
    """Flux-shaped: a transformer with double-stream (text and image) and single-stream blocks over packed 2x2
    latent patches, CLIP's pooled text and T5's token states, rectified-flow Euler sampling."""
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    torch.manual_seed(SEED)
    latent_channels = 4
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * latent_channels,  # the pipeline packs 2x2 latent pixels into one token
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=32,
        num_attention_heads=3,  # 96 wide: wide enough that the rank-4 reference is within the default budget
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=(8, 12, 12),  # sums to the head width
    )
    tokenizer_2 = t5_tokenizer()
    text_encoder_2 = _t5_encoder(len(tokenizer_2))
    return _flow_pipeline(
        FluxPipeline,
        transformer=transformer,
        vae=_flow_vae(),
        text_encoder=_text_encoder(CLIPTextModel),
        tokenizer=clip_tokenizer(),
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
    )


def build_tiny_chroma_pipeline():
    """Chroma-shaped: Flux's double- and single-stream blocks with their modulation pruned to one approximator
    network, T5's token states alone (masked), rectified-flow Euler sampling with classifier-free guidance."""
    from diffusers import ChromaPipeline, ChromaTransformer2DModel

    torch.manual_seed(SEED)
    with warnings.catch_warnings():  # diffusers' Chroma imports Flux's position embedding by a name it deprecated
        warnings.filterwarnings("ignore", message="`FluxPosEmbed` is deprecated", category=FutureWarning)
        transformer = ChromaTransformer2DModel(
            patch_size=1,
            in_channels=4 * 4,  # the pipeline packs 2x2 latent pixels into one token
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=32,
            num_attention_heads=5,  # 160 wide: another width than the tiny Flux's, so each tells the other apart
            joint_attention_dim=32,
            axes_dims_rope=(8, 12, 12),  # sums to the head width
            approximator_num_channels=16,
            approximator_hidden_dim=32,
            approximator_layers=1,
        )
    tokenizer = t5_tokenizer()
    return _flow_pipeline(
        ChromaPipeline,
        vae=_flow_vae(),
        text_encoder=_t5_encoder(len(tokenizer)),
        tokenizer=tokenizer,
        transformer=transformer,
    )


def build_tiny_sd3_pipeline():
    """SD3-shaped: an MMDiT of joint (text and image) blocks, the last one image-only, over 2x2-free latent pixels;
    two CLIP encoders (pooled and token states) and T5, rectified-flow Euler sampling with classifier-free guidance."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(SEED)
    transformer = SD3Transformer2DModel(
        sample_size=NATIVE_SIZE // 8,
        patch_size=1,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=8,  # 128 wide: the rank-4 reference stays within the default budget
        joint_attention_dim=32,  # the text encoders' token width
        caption_projection_dim=128,
        pooled_projection_dim=64,  # both CLIPs' pooled embeddings, concatenated
    )
    tokenizer_3 = t5_tokenizer()
    return StableDiffusion3Pipeline(
        transformer=transformer,
        vae=_flow_vae(),
        text_encoder=_text_encoder(CLIPTextModelWithProjection),
        tokenizer=clip_tokenizer(),
        text_encoder_2=_text_encoder(CLIPTextModelWithProjection, seed=SEED + 1),
        tokenizer_2=clip_tokenizer(),
        text_encoder_3=_t5_encoder(len(tokenizer_3)),
        tokenizer_3=tokenizer_3,
        scheduler=FlowMatchEulerDiscreteScheduler(),
    )


def build_tiny_qwen_image_pipeline():
    """Qwen-Image-shaped: an MMDiT of joint (text and image) blocks with their own MLPs and modulation per stream over
    packed 2x2 latent patches, Qwen2.5-VL's token states (the chat template's system prompt dropped), a video VAE
    whose latents are normalized per channel, rectified-flow Euler sampling."""
    from diffusers import (
        AutoencoderKLQwenImage,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(SEED)
    latent_channels = 4
    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=4 * latent_channels,  # the pipeline packs 2x2 latent pixels into one token
        out_channels=latent_channels,
        # The last block's text query and output feed nothing (its text stream is discarded), as in the real 60:
        # three blocks keep those two of the reference's 24 projections under weight_health's 10% of zero ΔW.
        num_layers=3,
        attention_head_dim=64,
        num_attention_heads=3,  # 192 wide: a width no other twin has
        joint_attention_dim=16,  # the text encoder's width
        axes_dims_rope=(16, 24, 24),  # sums to the head width
    )
    torch.manual_seed(SEED)
    vae = AutoencoderKLQwenImage(
        base_dim=24,
        z_dim=latent_channels,
        dim_mult=[1, 2, 4],
        num_res_blocks=1,
        temperal_downsample=[False, True],
        latents_mean=[0.0] * latent_channels,
        latents_std=[1.0] * latent_channels,
    )
    tokenizer = qwen_tokenizer()
    torch.manual_seed(SEED + 2)
    text_encoder = Qwen2_5_VLForConditionalGeneration(
        Qwen2_5_VLConfig(
            text_config=dict(
                vocab_size=len(tokenizer),
                rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
                **QWEN_TEXT,
            ),
            vision_config=dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=16),
            vocab_size=len(tokenizer),
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
        )
    )
    return _flow_pipeline(
        QwenImagePipeline, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer
    )


def build_tiny_z_image_pipeline():
    """Z-Image-shaped: a single-stream transformer over the image and caption tokens together (each refined by its
    own blocks first), Qwen3's token states through the chat template, Flux's 16-channel VAE, rectified-flow Euler
    sampling with classifier-free guidance."""
    from diffusers import ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(SEED)
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=16,
        dim=224,  # 7 heads of 32: a width no other twin has
        n_layers=2,
        n_refiner_layers=1,
        n_heads=7,
        n_kv_heads=7,
        cap_feat_dim=16,  # the text encoder's width
        rope_theta=256.0,
        axes_dims=(8, 12, 12),  # sums to the head width
        axes_lens=(256, 32, 32),
    )
    with torch.no_grad():  # the padding tokens are left uninitialized (`torch.empty`) by the constructor
        transformer.x_pad_token.normal_()
        transformer.cap_pad_token.normal_()
    tokenizer = qwen_tokenizer()
    torch.manual_seed(SEED + 2)
    text_encoder = Qwen3Model(
        Qwen3Config(
            vocab_size=len(tokenizer),
            head_dim=8,
            **QWEN_TEXT,
        )
    )
    vae = _vae(
        latent_channels=16, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1159, scaling_factor=0.3611
    )
    return _flow_pipeline(
        ZImagePipeline, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer
    )


def build_tiny_flux2_pipeline():
    """Flux.2-Klein-shaped: double-stream blocks with modulation shared across blocks, single-stream blocks whose q,
    k, v and MLP input are one fused projection, packed 2x2 patches of a VAE whose latents are normalized by its
    batch norm, three of Qwen3's hidden states stacked per token, rectified-flow Euler sampling with guidance."""
    from diffusers import Flux2KleinPipeline
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = qwen_tokenizer()
    torch.manual_seed(SEED + 2)
    # 27 layers: the pipeline stacks hidden states 9, 18 and 27, as Klein 4B's has them.
    text_encoder = Qwen3ForCausalLM(
        Qwen3Config(vocab_size=len(tokenizer), head_dim=8, **{**QWEN_TEXT, "num_hidden_layers": 27})
    )
    return _flux2_pipeline(Flux2KleinPipeline, text_encoder, tokenizer, guidance_embeds=False)  # undistilled guidance


def build_tiny_flux2_dev_pipeline():
    """FLUX.2-dev-shaped: Klein's transformer and VAE, guidance-distilled (the scale embedded, one pass per step),
    under three of Mistral 3's hidden states stacked per token, its chat template's system prompt first."""
    from diffusers import Flux2Pipeline
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration, MistralConfig, PixtralVisionConfig

    tokenizer = mistral_tokenizer()
    torch.manual_seed(SEED + 2)
    # 30 layers: the pipeline stacks hidden states 10, 20 and 30, as Mistral Small 3.1's has them. The vision tower
    # (Mistral 3 reads images too) is there because the class has one; text prompts never reach it.
    text = MistralConfig(vocab_size=len(tokenizer), head_dim=8, **MISTRAL_TEXT)
    vision = PixtralVisionConfig(
        hidden_size=16, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, head_dim=8, image_size=32
    )
    text_encoder = Mistral3ForConditionalGeneration(Mistral3Config(text_config=text, vision_config=vision))
    return _flux2_pipeline(Flux2Pipeline, text_encoder, tokenizer, guidance_embeds=True)


def _flux2_pipeline(pipeline_class, text_encoder, tokenizer, guidance_embeds: bool):
    from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel

    torch.manual_seed(SEED)
    latent_channels = 4
    transformer = Flux2Transformer2DModel(
        patch_size=1,
        in_channels=4 * latent_channels,  # the VAE's latents are patchified 2x2 into channels
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=32,
        num_attention_heads=8,  # 256 wide: a width no other twin has
        joint_attention_dim=3 * QWEN_TEXT["hidden_size"],  # three hidden states of the text encoder, stacked
        axes_dims_rope=(8, 8, 8, 8),  # sums to the head width
        guidance_embeds=guidance_embeds,
    )
    torch.manual_seed(SEED)
    vae = AutoencoderKLFlux2(
        sample_size=NATIVE_SIZE,
        block_out_channels=(32, 32, 64, 64),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=32,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    return _flow_pipeline(
        pipeline_class, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer
    )


def build_tiny_wan_pipeline():
    """Wan-2.1-shaped (text to video): blocks of self-attention over 1x2x2 patches of every latent frame,
    cross-attention to UMT5's token states and an MLP, a causal video VAE (8x spatial, 4x temporal) whose latents are
    normalized per channel, rectified-flow Euler sampling with classifier-free guidance."""
    return _wan_pipeline()


def build_tiny_wan22_pipeline():
    """Wan-2.2-A14B-shaped: Wan 2.1's pipeline with two experts, `transformer` for the high-noise steps (t ≥ 875 of
    1000, Wan 2.2's text-to-video boundary) and `transformer_2` for the rest; at two steps each runs one."""
    return _wan_pipeline(transformer_2=_wan_transformer(SEED + 3), boundary_ratio=0.875)


def _wan_transformer(seed: int):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=9,  # 288 wide: a width no other family's twin has
        attention_head_dim=32,
        in_channels=16,
        out_channels=16,
        text_dim=32,  # the text encoder's width
        freq_dim=256,
        ffn_dim=64,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )


def _wan_pipeline(**experts):
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline
    from transformers import UMT5Config, UMT5EncoderModel

    transformer = _wan_transformer(SEED)
    torch.manual_seed(SEED)
    # 16 channels at every level: fewer decode random weights to nearly flat frames that no adapter visibly moves.
    vae = AutoencoderKLWan(
        base_dim=16, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    tokenizer = t5_tokenizer()  # UMT5's tokenizer is T5's, over a larger vocabulary
    torch.manual_seed(SEED + 2)
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer),
            d_model=32,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
        )
    )
    pipeline = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0),  # Wan's default flow shift for 480p
        transformer=transformer,
        **experts,
    )
    pipeline.default_sample_size = NATIVE_SIZE // pipeline.vae_scale_factor_spatial  # its `__call__` renders 480p
    return pipeline


def _flow_pipeline(pipeline_class, **components):
    """A rectified-flow pipeline with Euler sampling, rendering the twins' native size by default."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    pipeline = pipeline_class(scheduler=FlowMatchEulerDiscreteScheduler(), **components)
    pipeline.default_sample_size = NATIVE_SIZE // pipeline.vae_scale_factor  # Z-Image's `__call__` defaults to 1024
    return pipeline


def _flow_vae():
    """The VAE of the rectified-flow families: no quant convs, latents shifted as well as scaled."""
    return _vae(
        latent_channels=4, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035
    )


def _t5_encoder(vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(SEED + 2)
    config = T5Config(
        vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, relative_attention_num_buckets=8
    )
    return T5EncoderModel(config)


def _vae(**overrides):
    from diffusers import AutoencoderKL

    torch.manual_seed(SEED)
    # Four blocks, as in SD and Flux: the VAE downsamples by 8.
    config = dict(
        block_out_channels=(32, 32, 64, 64),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=NATIVE_SIZE,
    )
    return AutoencoderKL(**{**config, **overrides})


def _text_encoder(model_class, seed: int = SEED):
    torch.manual_seed(seed)
    return model_class(
        clip_text_config(
            hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, projection_dim=32
        )
    )


def clip_text_config(**widths):
    """A CLIP text encoder's config with the real vocabulary and special tokens, so `clip_tokenizer` fits it."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=49408,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        **widths,
    )


@lru_cache(maxsize=1)
def clip_tokenizer():
    """The real CLIP tokenizer (49,408 tokens), built from the BPE merges that open_clip_torch ships."""
    from transformers import CLIPTokenizer

    with resources.files("open_clip").joinpath("bpe_simple_vocab_16e6.txt.gz").open("rb") as packed:
        lines = gzip.decompress(packed.read()).decode("utf-8").split("\n")
    # The same slice and vocabulary order as CLIP's own SimpleTokenizer.
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    byte_symbols = list(_bytes_to_unicode().values())
    vocab = byte_symbols + [s + "</w>" for s in byte_symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={token: i for i, token in enumerate(vocab)}, merges=merges, model_max_length=77)


@lru_cache(maxsize=1)
def t5_tokenizer():
    """A T5 tokenizer (SentencePiece unigram) over single characters: every prompt tokenizes, nothing is downloaded."""
    import string

    from transformers import T5TokenizerFast

    characters = string.ascii_letters + string.digits + string.punctuation
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [("\u2581" + c, -3.0) for c in characters] + [(c, -4.0) for c in characters]  # \u2581: a word's start
    return T5TokenizerFast(vocab=pieces, extra_ids=0)


# What the Qwen chat templates hold besides the prompt: Qwen-Image's system prompt (the pipeline drops its 34 tokens
# by position) and the turns Qwen3's template adds for Z-Image.
QWEN_TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, spatial "
    "relationships of the objects and background:<|im_end|>\n<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n"
    "<think>\n\n</think>\n\n"
)
QWEN_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# The tiny Qwen text encoders' widths, and their special tokens' ids ("<|endoftext|>": the BPE trainer puts it first).
QWEN_TEXT = dict(
    hidden_size=16,
    intermediate_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
    bos_token_id=0,
    eos_token_id=0,
    pad_token_id=0,
)
# Qwen3's chat template for one user turn (its tool and system branches left out), thinking on unless disabled.
QWEN3_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


@lru_cache(maxsize=1)
def qwen_tokenizer():
    """A byte-level BPE `Qwen2Tokenizer` with Qwen's special tokens and chat template: its merges are trained (by
    `tokenizers`) on the templates' words, so each template splits into the tokens Qwen's own vocabulary gives
    (Qwen-Image's 34 dropped tokens are the system prompt); prompts fall back to bytes. Nothing is downloaded."""
    from transformers import Qwen2Tokenizer

    bytes_only = Qwen2Tokenizer(vocab={symbol: i for i, symbol in enumerate(_bytes_to_unicode().values())}, merges=[])
    backend = bytes_only.backend_tokenizer  # Qwen2's pre-tokenizer (its split pattern, then bytes)
    trainer = _byte_level_trainer(QWEN_SPECIAL)
    backend.train_from_iterator([QWEN_TEMPLATE], trainer)
    model = json.loads(backend.to_str())["model"]
    tokenizer = Qwen2Tokenizer(vocab=model["vocab"], merges=[tuple(merge) for merge in model["merges"]])
    tokenizer.add_tokens(list(QWEN_SPECIAL), special_tokens=True)
    tokenizer.chat_template = QWEN3_CHAT_TEMPLATE
    return tokenizer


# Mistral's special tokens (the ids its tokenizer gives the first four) and its chat template for a system prompt and
# one user turn, each message's text parts joined, as FLUX.2 dev's pipeline formats them.
MISTRAL_SPECIAL = ("<unk>", "<s>", "</s>", "<pad>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]")
MISTRAL_TEXT = dict(
    hidden_size=QWEN_TEXT["hidden_size"],
    intermediate_size=16,
    num_hidden_layers=30,
    num_attention_heads=2,
    num_key_value_heads=2,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=3,
)
MISTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message.content is string %}{% set text = message.content %}{% else %}"
    "{% set text = message.content | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') %}"
    "{% endif %}"
    "{% if message.role == 'system' %}[SYSTEM_PROMPT]{{ text }}[/SYSTEM_PROMPT]"
    "{% elif message.role == 'user' %}[INST]{{ text }}[/INST]"
    "{% else %}{{ text }}{{ eos_token }}{% endif %}{% endfor %}"
)


@lru_cache(maxsize=1)
def mistral_tokenizer():
    """A byte-level BPE tokenizer with Mistral's special tokens and chat template (Mistral 3's tekken is a byte-level
    BPE): its merges are trained (by `tokenizers`) on FLUX.2 dev's system prompt; prompts fall back to bytes.
    Nothing is downloaded."""
    from diffusers.pipelines.flux2.pipeline_flux2 import SYSTEM_MESSAGE
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = _byte_level_trainer(MISTRAL_SPECIAL)
    backend.train_from_iterator([SYSTEM_MESSAGE], trainer)
    unknown, begin, end, pad, *markers = MISTRAL_SPECIAL
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token=unknown,
        bos_token=begin,
        eos_token=end,
        pad_token=pad,
        additional_special_tokens=markers,
    )
    tokenizer.chat_template = MISTRAL_CHAT_TEMPLATE
    return tokenizer


def _byte_level_trainer(special_tokens):
    """A BPE trainer over every byte, with `special_tokens` first (ids 0, 1, …), as small as the twins need."""
    from tokenizers import pre_tokenizers, trainers

    return trainers.BpeTrainer(
        vocab_size=1024,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=list(special_tokens),
        show_progress=False,
    )


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))
