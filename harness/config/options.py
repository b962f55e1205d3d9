"""Parsers for the plugin's option values: each raises a ValueError quoting the bad value."""

from __future__ import annotations

from dataclasses import dataclass


def parse_render_size(value: str) -> int:
    size = _parse_int(value, "render size")
    if size <= 0 or size % 8:
        raise ValueError(f"render size must be a positive multiple of 8 (the VAE downsamples by 8), got {value!r}")
    return size


def parse_positive_int(value: str, what: str) -> int:
    number = _parse_int(value, what)
    if number <= 0:
        raise ValueError(f"{what} must be at least 1, got {value!r}")
    return number


def parse_non_negative_int(value: str, what: str) -> int:
    number = _parse_int(value, what)
    if number < 0:
        raise ValueError(f"{what} must be 0 or more, got {value!r}")
    return number


def parse_non_negative_float(value: str, what: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{what} must be a number, got {value!r}") from None
    if not number >= 0:  # also rejects NaN
        raise ValueError(f"{what} must be 0 or more, got {value!r}")
    return number


def parse_fraction(value: str, what: str) -> float:
    number = parse_non_negative_float(value, what)
    if number > 1:
        raise ValueError(f"{what} must be a fraction between 0 and 1, got {value!r}")
    return number


@dataclass(frozen=True)
class ParamBudget:
    """A LoRA parameter budget: an absolute count, or a percentage of the denoiser's parameters."""

    count: int | None = None
    percent: float | None = None

    def limit(self, denoiser_params: int) -> int:
        if self.count is not None:
            return self.count
        return int(denoiser_params * self.percent / 100)

    def __str__(self) -> str:
        return f"{self.count}" if self.count is not None else f"{self.percent:g}%"


def parse_param_budget(value: str) -> ParamBudget:
    text = value.strip()
    if text.endswith("%"):
        percent = parse_non_negative_float(text[:-1], "parameter budget percentage")
        if percent > 100:
            raise ValueError(f"parameter budget percentage must be at most 100%, got {value!r}")
        return ParamBudget(percent=percent)
    try:
        return ParamBudget(count=parse_non_negative_int(text.replace("_", ""), "parameter budget"))
    except ValueError:
        raise ValueError(
            f"parameter budget must be a count (e.g. 1000000) or a percentage of the denoiser (e.g. 2%), got {value!r}"
        ) from None


def parse_device(value: str) -> str:
    text = value.strip().lower()
    if text in ("auto", "cpu", "cuda", "mps") or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, got {value!r}")


DTYPES = ("auto", "float32", "float16", "bfloat16")


def parse_dtype(value: str) -> str:
    text = value.strip().lower()
    if text in DTYPES:
        return text
    raise ValueError(f"--dtype (ini lora_dtype) must be auto, float32, float16 or bfloat16, got {value!r}")


def _parse_int(value: str, what: str) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        raise ValueError(f"{what} must be a whole number, got {value!r}") from None
