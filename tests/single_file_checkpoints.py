"""Whole single-file checkpoints for tests: an SD1.x/SD2.x/SDXL file of its family's real layout (the original
LDM/SGM key names, `fixtures/family_bases.py`'s `original_checkpoint`) at narrow widths, the narrow configs that load
it, and Kohya adapters for it with the hashes sd-scripts records."""

import hashlib
import json
import struct
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors.torch import load_file, save_file

# The carried configs with narrow widths: everything else (block types, layers, scheduler, model_index) is the
# carried one. diffusers' `from_single_file` builds each model from the config it is given, not from the file, so a
# narrow file loads with its narrow configs put in the carried ones' place (`narrow_family`).
NARROW_VAE = {"block_out_channels": [32, 32, 64, 64], "sample_size": 64}
NARROW_CLIP = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "projection_dim": 32,
}
NARROW = {
    "SD1.x": {
        "unet/config.json": {"block_out_channels": [32, 32, 64, 64], "cross_attention_dim": 32, "sample_size": 8},
        "vae/config.json": NARROW_VAE,
        "text_encoder/config.json": NARROW_CLIP,
    },
    "SD2.x": {  # the text states stay 1024 wide: diffusers tells SD2.x from SD1.x by its cross-attention's width
        "unet/config.json": {
            "block_out_channels": [32, 32, 64, 64],
            "attention_head_dim": [2, 2, 4, 4],
            "sample_size": 8,
        },
        "vae/config.json": NARROW_VAE,
        "text_encoder/config.json": {"intermediate_size": 64, "num_hidden_layers": 2},
    },
    "SDXL": {
        "unet/config.json": {
            "block_out_channels": [32, 64, 64],
            "attention_head_dim": [2, 2, 4],
            "cross_attention_dim": 16 + 48,  # both text encoders' states, concatenated: the tiny SDXL's width
            "addition_time_embed_dim": 8,
            "projection_class_embeddings_input_dim": 6 * 8 + 48,  # six size numbers + the second encoder's pooled text
            "sample_size": 8,
        },
        "vae/config.json": NARROW_VAE,
        "text_encoder/config.json": {**NARROW_CLIP, "hidden_size": 16, "projection_dim": 16},
        # Another width than the first encoder's: diffusers loads `text_encoder_2` from `conditioner.embedders.0` when
        # that one's width fits it (as CLIP-L's 768 never fits bigG's 1280). Ten layers: diffusers detects SDXL by
        # `conditioner.embedders.1.model.transformer.resblocks.9`.
        "text_encoder_2/config.json": {
            "hidden_size": 48,
            "intermediate_size": 64,
            "num_attention_heads": 4,
            "num_hidden_layers": 10,
            "projection_dim": 48,
        },
    },
}


def narrow_configs(folder: Path, family: str) -> Path:
    """The carried configs of `family` with `NARROW[family]`'s widths, written to `folder`."""
    from lora_harness.bases.single_file import CONFIG_FOLDERS

    carried = Path(CONFIG_FOLDERS[family])
    for source in carried.rglob("*.json"):
        relative = source.relative_to(carried).as_posix()
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps({**json.loads(source.read_text()), **NARROW[family].get(relative, {})}))
    return folder


def seeded_models(configs: Path) -> SimpleNamespace:
    """Every model of `configs`' model_index (U-Net, VAE, text encoders) built from its config with seeded
    weights."""
    from lora_harness.bases.memory import models_from_configs

    torch.manual_seed(0)
    models = models_from_configs(configs)
    with torch.no_grad():
        for model in models.values():  # norms start all ones or zeros: nudged, so a misplaced one shows
            for parameter in model.parameters():
                if parameter.numel() > 1 and bool((parameter == parameter.flatten()[0]).all()):
                    parameter.add_(torch.randn_like(parameter) * 0.01)
    return SimpleNamespace(**models)


def write_single_file(folder: Path, family: str, dtype: torch.dtype) -> tuple:
    """(checkpoint, its narrow configs, the models it was written from): a `family` single file at narrow widths,
    stored in `dtype`."""
    from lora_harness.fixtures.family_bases import original_checkpoint

    configs = narrow_configs(folder / "configs", family)
    models = seeded_models(configs)
    checkpoint = folder / f"{family}-layout.safetensors"
    save_file(original_checkpoint(models, family, dtype), checkpoint)
    return checkpoint, configs, models


def assert_loads_where_it_was(checkpoint: Path, models, family: str, model_type: str, dtype: torch.dtype):
    """The layout written and diffusers' conversion agree: every parameter of the U-Net, VAE and text encoders comes
    back bitwise (in the stored dtype), none missing, none extra. Returns the loaded pipeline."""
    from lora_harness.bases.single_file import inspect_single_file, load_single_file

    base = inspect_single_file(str(checkpoint), checkpoint)
    assert (base.family, base.model_type, base.dtype) == (family, model_type, str(dtype).removeprefix("torch."))
    loaded = load_single_file(base, dtype)
    for component, original in vars(models).items():
        want = {k: v.to(dtype) for k, v in original.state_dict().items()}
        got = getattr(loaded, component).state_dict()
        assert got.keys() == want.keys(), component
        moved = [k for k in want if not torch.equal(got[k], want[k])]
        assert not moved, f"{component}: {moved[:3]}"
    return loaded


def kohya_adapter(pipeline, path: Path, **metadata) -> Path:
    from lora_harness.fixtures.adapter_writers import make_pipeline_lora, write_kohya_components

    written = write_kohya_components(make_pipeline_lora(pipeline, seed=1), path, rank=4, alpha=4.0)
    with written.open("rb") as handle:
        (size,) = struct.unpack("<Q", handle.read(8))
        recorded = json.loads(handle.read(size))["__metadata__"]
    tensors = load_file(written)
    written.unlink()  # the tensors may map the file: write a new one in its place
    save_file(tensors, written, metadata={**recorded, **metadata})
    return written


def kohya_hashes(path: Path) -> dict:
    """What sd-scripts' train_network.py records for a base file: `train_util.model_hash` (the SHA-256 of the 64 KiB
    at 1 MiB, 8 digits) and `train_util.calculate_sha256` (the whole file's)."""
    data = path.read_bytes()
    return {
        "ss_sd_model_hash": hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8],
        "ss_new_sd_model_hash": hashlib.sha256(data).hexdigest(),
    }
