"""Inception v3 features for fid and kid: the network FID is defined on, as torch-fidelity (and through it
torchmetrics) computes it, with weights from a local safetensors file. Nothing is downloaded."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import torch

from lora_harness.config.config import ConfigError
from lora_harness.verdicts.clip_model import encode_once

FEATURES = "2048"  # the pool features FID and KID use
CONVERT = (
    "convert torch-fidelity's weights once with "
    "`python -c \"import torch, safetensors.torch as st; st.save_file(torch.load('weights-inception-2015-12-05-6726825d.pth', "
    "weights_only=True), 'inception.safetensors')\"`"
)


def check_inception_weights(value: str) -> Path:
    """The --inception-weights file, checked before any model loads: a safetensors file and torch-fidelity present."""
    path = Path(value).expanduser()
    if path.suffix != ".safetensors":
        raise ConfigError(
            f"--inception-weights {value}: only .safetensors is read (no pickle is ever unpickled); {CONVERT}"
        )
    if not path.is_file():
        raise ConfigError(f"--inception-weights {value}: no such file; {CONVERT}")
    try:
        import torch_fidelity  # noqa: F401 - torchmetrics' Inception comes from it
    except ImportError:
        raise ConfigError(
            f"--inception-weights {value}: needs torch-fidelity, the Inception torchmetrics uses; "
            "pip install 'lora-harness[inception]'"
        ) from None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, "pt") as weights:
            weights.keys()
    except (SafetensorError, OSError) as error:
        raise ConfigError(
            f"--inception-weights {value}: not a readable safetensors file ({error}); {CONVERT}"
        ) from None
    return path.resolve()


class InceptionFeatures:
    """torchmetrics' NoTrainInceptionV3; each distinct image is encoded once per run."""

    self_test = False

    def __init__(self, path: Path):
        from safetensors import SafetensorError
        from safetensors.torch import load
        from torchmetrics.image.fid import NoTrainInceptionV3

        try:
            data = path.read_bytes()  # read once: the weights and their digest come from the same bytes
            weights = load(data)
        except (SafetensorError, OSError) as error:
            raise ConfigError(
                f"--inception-weights {path}: not a readable safetensors file ({error}); {CONVERT}"
            ) from None
        # torch-fidelity reads weights only through torch.load: it gets bytes just written from those tensors,
        # so no file from outside is ever unpickled.
        buffer = io.BytesIO()
        torch.save(weights, buffer)
        buffer.seek(0)
        try:
            self.model = NoTrainInceptionV3(
                name="inception-v3-compat", features_list=[FEATURES], feature_extractor_weights_path=buffer
            )
        except RuntimeError as error:  # load_state_dict: missing, unexpected or misshapen tensors
            raise ConfigError(
                f"--inception-weights {path}: not torch-fidelity's Inception v3 weights ({error}); {CONVERT}"
            ) from None
        digest = hashlib.sha256(data).hexdigest()[:12]
        self.label = f"Inception v3 pool features (torch-fidelity), weights {path.name} sha256 {digest}"
        self._cache: dict[str, torch.Tensor] = {}

    def image_features(self, images: np.ndarray) -> torch.Tensor:
        """2048-d features of uint8 [N, H, W, 3] images (the network resizes to 299 px itself)."""
        return encode_once(self._cache, images, self._encode_images)

    @torch.no_grad()
    def _encode_images(self, images: np.ndarray) -> torch.Tensor:
        return self.model(torch.from_numpy(images).permute(0, 3, 1, 2)).double()
