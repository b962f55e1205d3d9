"""The CLIP that scores renders: a real open_clip checkpoint the user points to, or, on the embedded tiny base
only, a tiny seeded CLIP built locally whose values carry no meaning about image quality."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from lora_harness.verdicts.results import ERROR, SKIPPED, CheckResult

SELF_TEST = "self-test model: the value carries no meaning about image quality"
NO_VERDICT = (
    "no verdict: pass --clip-model ARCH:PATH with a local open_clip checkpoint (e.g. ViT-B-32:/models/open_clip_vit_b_32.bin) "
    "to gate on it"
)
MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)  # OpenAI CLIP's preprocessing
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


@dataclass
class ClipModel:
    model: torch.nn.Module
    tokenizer: object
    image_size: int
    label: str  # what the model is; SELF_TEST for the tiny one
    self_test: bool

    def __post_init__(self):
        self._image_cache: dict[str, torch.Tensor] = {}

    def image_features(self, images: np.ndarray) -> torch.Tensor:
        """Unit-norm embeddings of uint8 [N, H, W, 3] images; each distinct image is encoded once per run."""
        return encode_once(self._image_cache, images, self._encode_images)

    @torch.no_grad()
    def _encode_images(self, images: np.ndarray) -> torch.Tensor:
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
        pixels = torch.nn.functional.interpolate(pixels, size=(self.image_size,) * 2, mode="bicubic", antialias=True)
        return torch.nn.functional.normalize(self.model.encode_image((pixels - MEAN) / STD).float(), dim=-1)

    @torch.no_grad()
    def text_features(self, prompts: list[str]) -> torch.Tensor:
        encoded = self.model.encode_text(self.tokenizer(prompts))
        return torch.nn.functional.normalize(encoded.float(), dim=-1)


def self_test_verdict(result: CheckResult, model) -> CheckResult:
    """A figure measured with the self-test CLIP is reported, never gated: passed or failed becomes skipped, saying
    what was measured and what to pass for a verdict (an error stays an error: the inputs were wrong)."""
    if not model.self_test or result.status == ERROR:
        return result
    if result.status == SKIPPED:  # skipped for its own reason (FID's sample count): still say which model measured
        result.message = f"{model.label}; {result.message}"
        return result
    measured = f"measured {result.status}" + (f": {result.message}" if result.message else "")
    result.details["measured_status"] = result.status
    result.status, result.message = SKIPPED, f"{model.label}; {NO_VERDICT} ({measured})"
    return result


def encode_once(cache: dict[str, torch.Tensor], images: np.ndarray, encode) -> torch.Tensor:
    """encode(images) row by row, each distinct image (by its bytes) encoded once per run: the base's renders
    serve every adapter and check."""
    keys = [hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest() for image in images]
    missing = [i for i, key in enumerate(keys) if key not in cache]
    if missing:
        for i, features in zip(missing, encode(np.ascontiguousarray(images[missing]))):
            cache[keys[i]] = features
    return torch.stack([cache[key] for key in keys])


def load_clip(spec: str | None, embedded_default: bool) -> tuple[ClipModel | None, str]:
    """(model, label) or (None, why not). `spec` is ARCH:PATH (a local open_clip checkpoint) or ARCH:TAG
    (open_clip's local cache); nothing is downloaded. Only the embedded default base (`tiny`) gets the self-test
    CLIP, which runs the quality checks' code offline; on the other tiny bases, built to test the families'
    mechanics, its verdicts would gate on noise."""
    import open_clip

    if spec:
        arch, _, weights = spec.partition(":")
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=weights or None)
        model.eval()
        size = model.visual.image_size
        size = size[0] if isinstance(size, (tuple, list)) else size
        return ClipModel(model, open_clip.get_tokenizer(arch), int(size), f"open_clip {arch} ({weights})", False), ""
    if not embedded_default:
        return None, (
            "no CLIP weights: pass --clip-model ARCH:PATH with a local open_clip checkpoint "
            "(e.g. ViT-B-32:/models/open_clip_vit_b_32.bin) or ARCH:TAG already in open_clip's cache"
        )
    return tiny_clip(), ""


def tiny_clip() -> ClipModel:
    from open_clip import CLIP, get_tokenizer
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    model = CLIP(
        embed_dim=32,
        # Average pooling over patches: a random class-token pool maps every image to nearly one embedding.
        vision_cfg=CLIPVisionCfg(layers=2, width=32, head_width=16, patch_size=8, image_size=32, pool_type="avg"),
        text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=4, layers=2),
    ).eval()
    # open_clip's own tokenizer, from the BPE file it ships: no download.
    return ClipModel(model, get_tokenizer("ViT-B-32"), 32, SELF_TEST, True)
