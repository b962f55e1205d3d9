"""The memory each carried family's weights take in each dtype, computed from the parameter counts of the diffusers
configs lora-harness carries (`base_configs/`), the models built on the meta device so nothing is allocated.

`python -m lora_harness.bases.memory` prints the table docs/performance.md's "Memory" section holds; a test keeps the two equal.
Weights only: activations, the adapters' layers and the accelerator's own context come on top.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lora_harness.bases.single_file import CONFIG_FOLDERS

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
GIB = 1024**3
PUBLISHED = {"SD1.x": "SD1.5", "SD2.x": "SD2.1 768-v", "SDXL": "SDXL base 1.0"}  # whose configs are carried
LABEL = "computed from parameter counts, not measured (no GPU was lent)"
NAMES = {"unet": "U-Net", "vae": "VAE", "text_encoder": "text encoder", "text_encoder_2": "second text encoder"}


def models_from_configs(folder: Path) -> dict:
    """component -> every model (U-Net, VAE, text encoders) `folder`'s model_index names, built from its config; in
    the default device's memory, so a `torch.device("meta")` context allocates nothing."""
    import diffusers
    import transformers

    libraries = {"diffusers": diffusers, "transformers": transformers}
    models = {}
    for name, entry in json.loads((folder / "model_index.json").read_text()).items():
        if not isinstance(entry, list) or entry[0] not in libraries or name.startswith(("tokenizer", "scheduler")):
            continue
        library, class_name = entry
        model_class = getattr(libraries[library], class_name)
        if library == "diffusers":
            models[name] = model_class.from_config(model_class.load_config(folder / name))
        else:
            models[name] = model_class(model_class.config_class.from_pretrained(folder / name))
    return models


@dataclass(frozen=True)
class FamilyWeights:
    family: str
    parameters: dict  # component -> parameter count

    def total(self) -> int:
        return sum(self.parameters.values())

    def text_encoders(self) -> int:
        return sum(n for component, n in self.parameters.items() if component.startswith("text_encoder"))

    def largest(self) -> str:
        """The largest model: what model CPU offload (`--offload`) holds on the accelerator at once, since diffusers
        moves the model before it off the device before moving the next one on."""
        return max(self.parameters, key=self.parameters.get)


def family_weights(family: str) -> FamilyWeights:
    import torch

    with torch.device("meta"):
        models = models_from_configs(Path(CONFIG_FOLDERS[family]))
    return FamilyWeights(family, {name: sum(p.numel() for p in model.parameters()) for name, model in models.items()})


def gib(parameters: int, dtype: str) -> str:
    return f"{parameters * DTYPE_BYTES[dtype] / GIB:.2f} GiB"


def markdown_table() -> str:
    """One row per carried family: its parameters per part, and its weights' bytes in each dtype."""
    rows = [
        "| family (configs of) | U-Net | VAE | text encoders | weights in float32 | in float16 / bfloat16 | "
        "largest model in float16 / bfloat16 (`--offload`) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for family in CONFIG_FOLDERS:
        weights = family_weights(family)
        largest = weights.largest()
        rows.append(
            f"| {family} ({PUBLISHED[family]}) | {weights.parameters['unet']:,} | {weights.parameters['vae']:,} | "
            f"{weights.text_encoders():,} | {gib(weights.total(), 'float32')} | {gib(weights.total(), 'float16')} | "
            f"{gib(weights.parameters[largest], 'float16')} ({NAMES[largest]}) |"
        )
    return "\n".join(rows)


def main() -> None:
    print(f"Weights per family, {LABEL}:\n")
    print(markdown_table())


if __name__ == "__main__":
    main()
