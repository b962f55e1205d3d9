"""The plugin's options, declared once: each registered in pytest's `lora-harness` group with its ini twin
(`lora_<dest>`; the command line wins), and read back, option over ini, by `GivenOptions`."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import pytest

from lora_harness.config.check_registry import BUILTIN

GROUP = ("lora-harness", "LoRA adapter validation (lora-harness)")


@dataclass(frozen=True)
class ValueOption:
    flag: str
    dest: str
    metavar: str
    default: str  # the ini twin's default, as text
    help: str


@dataclass(frozen=True)
class FlagOption:
    flag: str
    dest: str
    help: str


VALUE_OPTIONS = (
    ValueOption(
        "--base-model",
        "base_model",
        "MODEL",
        "tiny",
        "Base: an embedded tiny twin (`tiny`, `tiny-sdxl`, `tiny-flux`, ...: one per family, listed in docs/families.md), a local diffusers folder, a single-file checkpoint (a local .safetensors or its https://huggingface.co/…/blob/main/FILE URL), or a hub id (fetched into the Hugging Face cache on first use, as diffusers does). Default: tiny.",
    ),
    ValueOption(
        "--base-components",
        "base_components",
        "MODEL",
        "",
        "For a single-file base holding its denoiser alone (ComfyUI's diffusion_models/ files: Flux, Qwen-Image, "
        "Z-Image, Flux.2, Wan; an SD U-Net): the diffusers folder or hub id its pipeline's other parts (text encoders, "
        "tokenizers, VAE, scheduler) and its denoiser's config come from; a hub id's denoiser weights are not fetched. "
        "Default: the published repository for the file's model type (diffusers' from_single_file choice).",
    ),
    ValueOption(
        "--render-size",
        "render_size",
        "PX",
        "",
        "Render height and width in pixels, a multiple of 8. Default: the base's native size.",
    ),
    ValueOption("--render-steps", "render_steps", "N", "4", "Denoising steps per render. Default: 4."),
    ValueOption("--render-seeds", "render_seeds", "N", "2", "Seeds rendered per prompt. Default: 2."),
    ValueOption(
        "--render-frames",
        "render_frames",
        "N",
        "5",
        "Frames per render of a video base (Wan, LTX-2); its pipeline rounds the count to one it can make. Image bases "
        "render one. Default: 5.",
    ),
    ValueOption(
        "--render-batch-size",
        "render_batch_size",
        "N",
        "16",
        "Most renders (prompt x seed) per pipeline call; lower it when memory runs short. Default: 16.",
    ),
    ValueOption(
        "--render-cache",
        "render_cache",
        "DIR",
        "",
        "Folder of the render cache. Default: lora_harness_renders in pytest's cache folder (.pytest_cache).",
    ),
    ValueOption("--prompts", "prompts", "FILE", "", "Prompts, one per line. Default: a small built-in set."),
    ValueOption(
        "--reference-steps",
        "reference_steps",
        "N",
        "30",
        "Training steps of the reference overfit; 0 skips it and its controls. Default: 30.",
    ),
    ValueOption(
        "--report-dir",
        "report_dir",
        "DIR",
        "lora-report",
        "Where results.json and the report go. Default: lora-report/.",
    ),
    ValueOption(
        "--device", "device", "DEVICE", "auto", "auto, cpu, cuda or cuda:N. Default: auto (CUDA when present)."
    ),
    ValueOption(
        "--dtype",
        "dtype",
        "DTYPE",
        "auto",
        "auto, float32, float16 or bfloat16: what the base and the adapters compute in. Default: auto (the base's "
        "stored dtype on CUDA, float32 elsewhere).",
    ),
    ValueOption(
        "--param-budget",
        "param_budget",
        "BUDGET",
        "2%",
        "Most LoRA parameters allowed: a count or a percentage of the denoiser. Default: 2%.",
    ),
    ValueOption(
        "--diff-floor",
        "diff_floor",
        "FLOAT",
        "0.5",
        "Least mean |adapted - base| pixel difference (0-255) an adapter must make. Default: 0.5.",
    ),
    ValueOption(
        "--heldout-prompts",
        "heldout_prompts",
        "FILE",
        "",
        "clip_heldout: prompts the adapter never trained on, one per line. Default: 4 built-in prompts.",
    ),
    ValueOption(
        "--clip-margin",
        "clip_margin",
        "POINTS",
        "2",
        "clip_heldout: largest drop of the CLIP score's 95% CI lower bound allowed (100 x cosine). Default: 2.",
    ),
    ValueOption(
        "--clip-model",
        "clip_model",
        "SPEC",
        "",
        "open_clip CLIP for the quality checks: ARCH:TAG (an open_clip pretrained tag, fetched into the Hugging Face "
        "cache on first use), ARCH:PATH (a local .safetensors checkpoint), hf-hub:ORG/REPO, or none. Default: "
        "ViT-L-14:openai on a real base; the embedded tiny base's self-test CLIP (never gating) on `tiny`.",
    ),
    ValueOption(
        "--train-captions",
        "train_captions",
        "FILE",
        "",
        "Training captions, one per line: held-out prompts that overlap them are left out. Default: the file's tags.",
    ),
    ValueOption(
        "--reference-images",
        "reference_images",
        "DIR",
        "",
        "fid/kid/cmmd: images of the style or subject the adapter should carry. Default: none (the three skip).",
    ),
    ValueOption(
        "--inception-weights",
        "inception_weights",
        "WEIGHTS",
        "",
        "fid/kid: the Inception v3 to embed with: torch-fidelity (its published weights, fetched on first use), "
        "a URL or a local .pth/.safetensors of them, or none (the CLIP's features). Default: torch-fidelity on a "
        "real base, the CLIP's features on an embedded one.",
    ),
    ValueOption(
        "--train-images",
        "train_images",
        "DIR",
        "",
        "mode_collapse: training images; held-out renders that nearly copy one fail. Default: none.",
    ),
    ValueOption(
        "--diversity-floor",
        "diversity_floor",
        "FRACTION",
        "0.5",
        "mode_collapse: least share of the base's diversity across seeds and prompts. Default: 0.5.",
    ),
    ValueOption(
        "--copy-similarity",
        "copy_similarity",
        "COSINE",
        "0.95",
        "mode_collapse: CLIP similarity to a training image above which a render is a copy. Default: 0.95.",
    ),
    ValueOption(
        "--dead-share",
        "dead_share",
        "FRACTION",
        "0.1",
        "weight_health: most modules allowed a zero update (ΔW ≈ 0). Default: 0.1.",
    ),
    ValueOption(
        "--norm-outlier-k",
        "norm_outlier_k",
        "K",
        "6",
        "weight_health: robust deviations (MAD, log10 norm) a module may stray from its block. Default: 6.",
    ),
    ValueOption(
        "--min-effective-rank-ratio",
        "min_effective_rank_ratio",
        "FRACTION",
        "0",
        "weight_health: least median effective rank / paid rank; 0 reports it without gating. Default: 0.",
    ),
    ValueOption(
        "--shard",
        "shard",
        "K/N",
        "",
        "Check only shard K of N of the adapters (round-robin over the --adapter order), e.g. one CI job per shard; "
        "`python -m lora_harness merge` joins the shards' reports. Default: every adapter.",
    ),
    ValueOption(
        "--compare-to",
        "compare_to",
        "RESULTS_JSON",
        "",
        "A previous release's results.json: a check whose value regressed past its tolerance fails.",
    ),
)
FLAG_OPTIONS = (
    FlagOption("--no-render-cache", "no_render_cache", "Render everything afresh and write no render cache."),
    FlagOption(
        "--require-metadata",
        "require_metadata",
        "Fail release_metadata when the file lacks fields a release needs (base, rank, alpha, lr, steps, dataset).",
    ),
    FlagOption(
        "--offload",
        "offload",
        "Run the pipeline with diffusers' model CPU offload on CUDA (each model on the GPU only while it runs), for "
        "bases larger than GPU memory; without a CUDA device it is not used, and the run says so. Default: off.",
    ),
    FlagOption(
        "--offline",
        "offline",
        "Never use the network: a hub id, the CLIP and the Inception weights come from the local caches alone, as "
        "with HF_HUB_OFFLINE=1 (a hub id not cached is a usage error naming what to fetch; a CLIP or Inception not "
        "cached skips its checks saying so). Default: off (each is fetched on first use).",
    ),
)


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup(*GROUP)
    group.addoption(
        "--adapter",
        action="append",
        default=[],
        metavar="PATH",
        help="LoRA adapter to check: a .safetensors file or a PEFT folder; `reference` for the built-in reference "
        "overfit. Repeatable. Without it the plugin adds no tests.",
    )
    for option in VALUE_OPTIONS:
        help_text = option.help.replace("%", "%%")  # argparse formats help with %
        group.addoption(option.flag, dest=option.dest, metavar=option.metavar, default=None, help=help_text)
        parser.addini(
            f"lora_{option.dest}",
            f"{option.help} (ini twin of {option.flag}; the command line wins)",
            default=option.default,
        )
    defaults = ", ".join(f"{check}={tolerance:g}" for check, tolerance in BUILTIN.default_tolerances().items())
    tolerance_help = f"CHECK=FRACTION: allowed relative regression. Defaults: {defaults}."
    group.addoption("--compare-tolerance", action="append", default=[], metavar="CHECK=FRACTION", help=tolerance_help)
    parser.addini("lora_compare_tolerances", f"{tolerance_help} One per line.", type="linelist", default=[])
    for option in FLAG_OPTIONS:
        group.addoption(option.flag, dest=option.dest, action="store_true", default=None, help=option.help)
        parser.addini(f"lora_{option.dest}", f"{option.help} (ini twin of {option.flag})", type="bool", default=False)


class GivenOptions:
    """What the user gave pytest: each option over its ini twin, values as stripped text and flags as booleans,
    with the facts of the pytest run the options need (the xdist worker, pytest's cache folder)."""

    def __init__(self, config: pytest.Config):
        self._config = config

    def text(self, dest: str) -> str:
        given = self._config.getoption(dest)
        return str(given if given is not None else self._config.getini(f"lora_{dest}")).strip()

    def flag(self, dest: str) -> bool:
        return bool(self._config.getoption(dest) or self._config.getini(f"lora_{dest}"))

    @property
    def adapters(self) -> list[str]:
        return self._config.getoption("adapter")

    @property
    def tolerances(self) -> list[str]:
        """CHECK=FRACTION entries: the ini's lines, then the command line's (which win)."""
        return [*self._config.getini("lora_compare_tolerances"), *self._config.getoption("compare_tolerance")]

    @property
    def worker_index(self) -> int | None:
        """gw0 -> 0 under pytest-xdist; None in a plain run."""
        workerinput = getattr(self._config, "workerinput", None)
        return int(workerinput["workerid"].removeprefix("gw")) if workerinput else None

    def cache_folder(self, name: str) -> Path | None:
        """A folder in pytest's cache (.pytest_cache); None under -p no:cacheprovider."""
        cache = getattr(self._config, "cache", None)
        return cache.mkdir(name) if cache is not None else None

    def shown(self):
        """Output written meanwhile goes to the terminal, not to pytest's capture (a download's progress)."""
        capture = self._config.pluginmanager.getplugin("capturemanager")
        return capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext()
