"""What no kind of LoRA file holds: an alpha that is not one number, a matrix of no LoRA shape, integer weights.
A file with one is damaged, whichever kind its keys name, and is refused before any kind converts it."""

from __future__ import annotations

import torch

from lora_harness.loading.adapter_file import AdapterFile, AdapterLoadError
from lora_harness.loading.normalized import LORA_BIAS, MAGNITUDE, WEIGHT_DIFFERENCE
from lora_harness.loading.replaced_modules import saved_module_keys
from lora_harness.loading.traced_conversion import BIAS_DIFFERENCE


def refuse_damaged(adapter: AdapterFile) -> None:
    bad_alpha = next((k for k, t in adapter.tensors.items() if k.endswith(".alpha") and t.numel() != 1), None)
    if bad_alpha is not None:
        raise AdapterLoadError(
            f"{adapter.weights_path}: alpha {bad_alpha} has shape {list(adapter.tensors[bad_alpha].shape)}, "
            "but an alpha is one number; the file is damaged, export it again"
        )
    whole = saved_module_keys(adapter)  # `modules_to_save`: parameters of any shape
    bad_matrix = next(
        (
            k
            for k, t in adapter.tensors.items()
            if not k.endswith(".alpha") and k not in whole and not _plausible_shape(k, t)
        ),
        None,
    )
    if bad_matrix is not None:
        raise AdapterLoadError(
            f"{adapter.weights_path}: tensor {bad_matrix} has shape {list(adapter.tensors[bad_matrix].shape)}, but a "
            "LoRA matrix is 2-D (4-D for a convolution), a DoRA magnitude or a bias 1-D, and none is empty; the file is "
            "damaged, export it again"
        )
    # sd-scripts' DyLoRA stores an alpha left unset as its rank, an integer: a number all the same.
    not_float = next(
        (k for k, t in adapter.tensors.items() if not t.is_floating_point() and not _integer_alpha(k, t)), None
    )
    if not_float is not None:
        raise AdapterLoadError(
            f"{adapter.weights_path}: tensor {not_float} holds {adapter.tensors[not_float].dtype}, but LoRA weights "
            "are floating point; the file was written wrongly, export it again"
        )


def _integer_alpha(key: str, tensor: torch.Tensor) -> bool:
    return key.endswith(".alpha") and tensor.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def _plausible_shape(key: str, tensor: torch.Tensor) -> bool:
    if key.endswith(WEIGHT_DIFFERENCE):
        dimensions = (1, 2, 4)  # a norm's weight, a linear's, a convolution's
    elif MAGNITUDE in key or key.endswith((f".{LORA_BIAS}", BIAS_DIFFERENCE)):
        dimensions = (1,)
    else:
        dimensions = (2, 4)
    return tensor.ndim in dimensions and tensor.numel() > 0
