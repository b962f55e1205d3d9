"""Single files of a denoiser alone, as the published ones are laid out (ComfyUI's `diffusion_models/` files), holding
a tiny twin's own weights: the layouts, at the twins' widths, are read from the trainers' model code by
`fixtures/trainer_files/write_original_layouts.py`; which twin parameter fills which place of which file tensor is
traced through diffusers' own single-file conversion of that layout."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

TRAINER_FILES = Path(__file__).parent.parent / "fixtures" / "trainer_files"
LAYOUTS = json.loads((TRAINER_FILES / "original_layouts.json").read_text())


def write_denoiser_file(model, family: str, path: Path, dtype: torch.dtype, prefix: str = "") -> Path:
    """`model`'s weights in `family`'s published layout (`prefix`: ComfyUI's `model.diffusion_model.` where its
    checkpoint savers write it), every file tensor filled from the model's parameters."""
    from diffusers.loaders.single_file_model import SINGLE_FILE_LOADABLE_CLASSES

    shapes = LAYOUTS[family]["shapes"]
    places, count = {}, 0
    for key, shape in shapes.items():  # each file element's own number, exact in float64
        size = int(torch.Size(shape).numel())
        places[key] = torch.arange(count, count + size, dtype=torch.float64).reshape(shape)
        count += size
    mapping = SINGLE_FILE_LOADABLE_CLASSES[type(model).__name__]["checkpoint_mapping_fn"]
    converted = mapping(checkpoint=dict(places), config=model.config)
    state = model.state_dict()
    assert set(converted) == set(state), f"{family}'s layout does not convert to {type(model).__name__}'s names"
    flat = torch.full((count,), float("nan"))
    for key, numbers in converted.items():
        flat[numbers.flatten().long()] = state[key].detach().flatten().float()
    assert not flat.isnan().any(), f"{family}'s layout holds elements no parameter of the model is converted from"
    tensors = {prefix + key: flat[places[key].flatten().long()].reshape(places[key].shape).to(dtype) for key in shapes}
    save_file(tensors, str(path))
    return path
