"""The reference tiny overfit (positive control) and its untrained twin (negative control).

A rank-4 LoRA on every attention projection of the denoiser (each family's `Reference.targets`), trained with peft
on one image and one caption with the family's own objective (its `Reference.example`).
Both are saved with peft's `save_pretrained` and checked through the same loader as any user's adapter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lora_harness.bases.families import denoiser_of, family_of_pipeline
from lora_harness.config.config import REFERENCE_CAPTION

RANK = 4
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
    reference = family_of_pipeline(pipeline).reference
    denoiser = denoiser_of(pipeline)
    # Only the family's targets this base has (a Flux cut down to single-stream blocks has no text-stream projections).
    names = [name for name, _ in denoiser.named_modules()]
    targets = [t for t in reference.targets if any(name.endswith(f".{t}") for name in names)]
    config = LoraConfig(r=RANK, lora_alpha=RANK, target_modules=targets, init_lora_weights=True)
    torch.manual_seed(SEED)
    model = get_peft_model(denoiser, config)
    try:
        model.save_pretrained(run.control_dir)  # peft's default init: B = 0, so it cannot change an image
        run.trainable = [name for name, p in model.named_parameters() if p.requires_grad]
        example = reference.example(pipeline, torch.from_numpy(reference_image(size)), REFERENCE_CAPTION, device)
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
