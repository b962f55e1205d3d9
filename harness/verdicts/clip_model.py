"""The CLIP that scores renders: on a real base, a real open_clip CLIP (`DEFAULT_CLIP` unless `--clip-model` names
another, fetched into the Hugging Face cache on first use, safetensors only); on the embedded tiny base only, a tiny
seeded CLIP built locally whose values carry no meaning about image quality."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lora_harness.bases.hub_file import HubFileAbsent, HubFileNotCached, HubFileUnavailable, hub_file
from lora_harness.verdicts.results import ERROR, SKIPPED, CheckResult

SELF_TEST = "self-test model: the value carries no meaning about image quality"
# What a real base is scored with unless --clip-model says otherwise: OpenAI's ViT-L/14, the CLIP torchmetrics'
# CLIPScore uses by default and CLIP-score figures are mostly reported with (CMMD's paper used its 336 px variant,
# `ViT-L-14-336:openai`).
DEFAULT_CLIP = "ViT-L-14:openai"
OFF = "none"  # --clip-model none: no CLIP, the CLIP checks skip saying so
SAFE_WEIGHTS = "open_clip_model.safetensors"  # what open_clip's Hub repositories hold beside their pickles
NO_VERDICT = (
    "no verdict: pass --clip-model ARCH:PATH with a local open_clip .safetensors checkpoint, or ARCH:TAG (e.g. "
    "ViT-L-14:openai, fetched on first use), to gate on it"
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


class ClipUnavailable(Exception):
    """The CLIP named cannot be had; the message names it, why, and the fix."""


def clip_spec(given: str | None, real_base: bool) -> str | None:
    """The open_clip CLIP to score with: the one `--clip-model` names; on a real base DEFAULT_CLIP; None for none
    (`--clip-model none`, or an embedded tiny base, which brings its self-test CLIP or none)."""
    if given == OFF:
        return None
    return given or (DEFAULT_CLIP if real_base else None)


def load_clip(
    given: str | None, embedded_default: bool, real_base: bool, offline: bool
) -> tuple[ClipModel | None, str]:
    """(model, "") or (None, why there is none: the checks skip saying so). `given` is `--clip-model`: ARCH:TAG (an
    open_clip pretrained tag, fetched from its Hub repository), ARCH:PATH (a local .safetensors checkpoint),
    hf-hub:ORG/REPO (an open_clip model repository) or none. Only the embedded default base (`tiny`) gets the
    self-test CLIP, which runs the quality checks' code offline; on the other tiny bases, built to test the families'
    mechanics, its verdicts would gate on noise. Raises ClipUnavailable where the CLIP named cannot be fetched or read."""
    if given == OFF:
        return None, "--clip-model none: no CLIP, so no CLIP verdict"
    spec = clip_spec(given, real_base)
    if spec is None:
        if embedded_default:
            return tiny_clip(), ""
        return None, (
            "no CLIP on this embedded base (its self-test CLIP would gate on noise): pass --clip-model ARCH:TAG "
            f"(e.g. {DEFAULT_CLIP}, fetched on first use) or ARCH:PATH with a local open_clip .safetensors checkpoint"
        )
    try:
        return _open_clip(spec, offline), ""
    except _NotCached as missing:
        return None, str(missing)


class _NotCached(Exception):
    pass


def _open_clip(spec: str, offline: bool) -> ClipModel:
    import open_clip

    if spec.startswith("hf-hub:"):
        folder = _hub_folder(spec, spec.removeprefix("hf-hub:"), offline)
        name = f"local-dir:{folder}"
        model = open_clip.create_model_and_transforms(name)[0]
        tokenizer, label = open_clip.get_tokenizer(name), f"open_clip {spec}"
    else:
        arch, _, weights = spec.partition(":")
        pretrained = open_clip.get_pretrained_cfg(arch, weights) if weights else {}
        if pretrained:
            path = _pretrained_file(spec, pretrained, offline)
        elif Path(weights).expanduser().is_file():
            path = Path(weights).expanduser()
            if path.suffix != ".safetensors":
                raise ClipUnavailable(
                    f"--clip-model {spec}: {path} is a pickle-based checkpoint; lora-harness reads only .safetensors "
                    'and never unpickles a file. Convert it once, where you trust it: python -c "import torch, '
                    f"safetensors.torch as st; st.save_file(torch.load('{path}', weights_only=True), "
                    f"'{path.with_suffix('.safetensors')}')\""
                )
        else:
            raise ClipUnavailable(
                f"--clip-model {spec}: {weights!r} is neither an open_clip pretrained tag of {arch} "
                "(open_clip.list_pretrained() lists them) nor a local file; pass ARCH:TAG, ARCH:PATH or hf-hub:ORG/REPO"
            )
        quick_gelu = bool(pretrained.get("quick_gelu"))  # OpenAI's CLIPs, whose tag says so
        model = open_clip.create_model_and_transforms(arch, pretrained=str(path), force_quick_gelu=quick_gelu)[0]
        tokenizer, label = open_clip.get_tokenizer(arch), f"open_clip {arch} ({weights})"
    model.eval()
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    return ClipModel(model, tokenizer, int(size), label, False)


def _pretrained_file(spec: str, pretrained: dict, offline: bool) -> Path:
    """The safetensors weights of an open_clip pretrained tag, from the Hub repository open_clip names for it."""
    repo, weights = pretrained.get("hf_hub", "/").rsplit("/", 1)
    # 'org/model/' names the repository (open_clip's default file in it), 'org/model/file.bin' one file: its twin
    filename = weights.rsplit(".", 1)[0] + ".safetensors" if weights else SAFE_WEIGHTS
    if "/" not in repo:
        raise ClipUnavailable(
            f"--clip-model {spec}: open_clip fetches it from a URL, not the Hub; download it and pass ARCH:PATH"
        )
    return _hub_file(spec, repo, filename, offline)


def _hub_file(spec: str, repo: str, filename: str, offline: bool) -> Path:
    try:
        return hub_file(repo, filename, offline)
    except HubFileNotCached as missing:
        raise _NotCached(
            f"the CLIP {spec} is not in the local Hugging Face cache and the run is offline: fetch it once "
            f"({missing.fetch}) or pass --clip-model none"
        ) from None
    except HubFileAbsent as error:
        raise ClipUnavailable(
            f"--clip-model {spec}: {error}; its weights are pickles only, which lora-harness never unpickles: pass a "
            "CLIP with safetensors weights, or ARCH:PATH with a checkpoint you converted"
        ) from None
    except HubFileUnavailable as error:
        raise ClipUnavailable(f"--clip-model {spec}: {error}") from None


def _hub_folder(spec: str, repo: str, offline: bool) -> Path:
    """An open_clip model repository's config and safetensors weights, fetched together."""
    config = _hub_file(spec, repo, "open_clip_config.json", offline)
    _hub_file(spec, repo, SAFE_WEIGHTS, offline)
    return config.parent


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
