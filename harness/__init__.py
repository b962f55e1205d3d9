"""lora-harness: a pytest plugin that validates Stable Diffusion LoRA adapters."""

__version__ = "0.1.0"
