"""HarnessConfig: every option in force, resolved and validated once, before any model is loaded."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

from lora_harness.config.options import ParamBudget
from lora_harness.config.shard import Shard

REFERENCE = "reference"
REFERENCE_CAPTION = "a red sun over blue hills, lora-harness reference style"  # the one the reference overfits on
DEFAULT_PROMPTS = (
    "a photo of a cat sitting on a windowsill",
    "a watercolor painting of a lighthouse at dusk",
)


class ConfigError(ValueError):
    """An option value that cannot work; the plugin turns it into a pytest usage error."""


@dataclass(frozen=True)
class AdapterSpec:
    """One `--adapter` as given: `name` is its file or folder name (`reference` for the reference overfit)."""

    name: str
    path: Path | None  # None for the reference, which is trained during the run
    slot: str = ""  # the adapter name inside the pipeline: peft allows no dots, so file names cannot serve

    def __post_init__(self):
        if not self.slot:
            object.__setattr__(self, "slot", re.sub(r"\W", "_", self.name))

    @property
    def is_reference(self) -> bool:
        return self.path is None


@dataclass(frozen=True)
class HarnessConfig:
    adapters: tuple[AdapterSpec, ...]
    base_model: str  # as given: an embedded base, a folder, a single-file checkpoint or a hub id
    base_path: Path | None  # the local folder (or checkpoint file) it resolved to; None for an embedded base
    render_size: int | None  # None: the base's native size
    render_steps: int
    render_seeds: int
    render_batch_size: int
    prompts: tuple[str, ...]
    reference_steps: int
    report_dir: Path
    device: str
    param_budget: ParamBudget
    diff_floor: float
    dead_share: float = 0.10  # trainers reach every targeted module; more than a tenth dead means they did not
    norm_outlier_k: float = 6.0  # robust z of log10 norm within a block; 6 MADs is far outside any healthy spread
    min_effective_rank_ratio: float = 0.0
    heldout_prompts: tuple[str, ...] = ()
    render_frames: int = 5  # frames per render of a video pipeline (Wan); image pipelines render one
    clip_margin: float = 2.0
    clip_model: str | None = None  # ARCH:PATH of a local open_clip checkpoint
    train_captions: tuple[str, ...] = ()
    reference_images: Path | None = None
    train_images: Path | None = None
    diversity_floor: float = 0.5
    copy_similarity: float = 0.95
    require_metadata: bool = False
    shard: Shard | None = None  # --shard K/N: this run checks its share of the adapters
    compare_to: Path | None = None
    compare_tolerances: dict = dataclasses.field(default_factory=dict)
    render_cache: Path | None = None  # None: no render cache
    inception_weights: str | None = None  # --inception-weights, checked: none, torch-fidelity, a URL or a local path
    dtype: str = "float32"  # what the base and every adapter's layers compute in, as --dtype resolved it
    dtype_choice: str = ""  # why: what --dtype said and what the base is stored in
    offline: bool = False  # --offline (ini lora_offline): a hub id from the local cache alone
    base_components: str | None = None  # --base-components as given; None: not given
    # The diffusers folder a single file of a denoiser alone takes the rest of its pipeline from (--base-components,
    # or the repository diffusers names for it, fetched); None for other bases.
    components_path: Path | None = None
    offload_requested: bool = False  # --offload (ini lora_offload): what the user asked for
    offload: bool = False  # whether diffusers' model CPU offload is used: only onto a CUDA device
    offload_choice: str = ""  # what was asked, what is used and why

    @property
    def checked_adapters(self) -> tuple[AdapterSpec, ...]:
        """The adapters this run checks: every `--adapter`, or with --shard its share of them."""
        return tuple(self.shard.select(self.adapters)) if self.shard else self.adapters

    @property
    def base_is_hub_id(self) -> bool:
        given = Path(self.base_model).expanduser()
        return self.base_path is not None and not given.is_dir() and not given.is_file()

    @property
    def determinism_tolerance(self) -> float:
        """The most two renders of the same inputs may differ (mean |diff|, 0-255) before the run is unsound."""
        return self.diff_floor / 10

    @property
    def scale_zero_tolerance(self) -> float:
        """A render at LoRA scale 0 may differ from the base as two base renders may: the pipeline call that made
        it can hold other prompts (or come from the cache), and batch shape changes float rounding. Computed in
        float16 or bfloat16, the LoRA layers' presence alone changes which kernels run (measured on the CPU: 0.07
        on the tiny SDXL in float16, with the layers switched off), so there it may differ by one rounding step
        of a decoded pixel near 1, 255 x eps / 2 (float16 0.12, bfloat16 1.0)."""
        half_step = {"float16": 255 * 2.0**-11, "bfloat16": 255 * 2.0**-8}.get(self.dtype, 0.0)
        return max(self.determinism_tolerance, half_step)

    def settings(self) -> dict:
        """Every option in force, as plain JSON values, for results.json."""
        settings = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        settings["adapters"] = [spec.name if spec.is_reference else str(spec.path) for spec in self.adapters]
        settings["base_path"] = str(self.base_path) if self.base_path else None
        settings["components_path"] = str(self.components_path) if self.components_path else None
        settings["report_dir"] = str(self.report_dir)
        settings["inception_weights"] = self.inception_weights
        settings["render_cache"] = str(self.render_cache) if self.render_cache else None
        settings["compare_to"] = str(self.compare_to) if self.compare_to else None
        settings["heldout_prompts"] = list(self.heldout_prompts)
        settings["train_captions"] = list(self.train_captions)
        settings["reference_images"] = str(self.reference_images) if self.reference_images else None
        settings["train_images"] = str(self.train_images) if self.train_images else None
        settings["compare_tolerances"] = dict(self.compare_tolerances)
        settings["param_budget"] = str(self.param_budget)
        settings["prompts"] = list(self.prompts)
        settings["determinism_tolerance"] = self.determinism_tolerance
        settings["scale_zero_tolerance"] = self.scale_zero_tolerance
        settings["shard"] = str(self.shard) if self.shard else None
        return settings


def adapter_specs(values: list[str]) -> tuple[AdapterSpec, ...]:
    specs: list[AdapterSpec] = []
    seen: set[str] = set()
    for value in values:
        if value == REFERENCE:
            name, path = REFERENCE, None
        else:
            path = Path(value).expanduser()
            name = path.name or str(path)
        unique, n = name, 2
        while unique in seen:  # two files of the same name from different folders
            unique, n = f"{name}#{n}", n + 1
        seen.add(unique)
        specs.append(AdapterSpec(unique, path, slot=f"adapter_{len(specs)}" if path else REFERENCE))
    return tuple(specs)


def resolve_device(device: str, worker: int | None = None) -> str:
    """`worker`: the xdist worker's index; with several GPUs and no index given, each worker takes its own."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    if device == "cuda" and worker is not None and torch.cuda.device_count() > 1:
        return f"cuda:{worker % torch.cuda.device_count()}"
    return device


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def read_lines(option: str, value: str) -> tuple[str, ...]:
    """Non-empty lines of a UTF-8 text file; a ConfigError naming the option otherwise."""
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(f"{option} {value}: no such file; pass a text file with one entry per line")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{option} {value}: cannot be read ({error}); pass a UTF-8 text file") from None
    lines = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not lines:
        raise ConfigError(f"{option} {value}: the file is empty; write one entry per line")
    return lines


def writable_folder(option: str, value: str) -> Path:
    """`value` resolved, created if missing, and shown writable by writing a file in it; a ConfigError naming what
    stops it otherwise (a file in its place or above it, no permission, a read-only file system): found here, before
    any model loads, not when the first results are written."""
    import tempfile

    folder = Path(value).expanduser().resolve()
    blocker = next((p for p in (*reversed(folder.parents), folder) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ConfigError(f"{option} {value}: {blocker} is a file, not a folder; pass another folder or move the file")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise ConfigError(
            f"{option} {value}: cannot write there ({error.strerror}: {error.filename or folder}); "
            "pass a folder you can write to"
        ) from None
    return folder


def image_folder(option: str, value: str) -> Path:
    """A folder holding at least two images PIL can read; a ConfigError naming the option otherwise."""
    from PIL import Image, UnidentifiedImageError

    folder = Path(value).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"{option} {value}: no such folder; pass a folder of images")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < 2:
        raise ConfigError(
            f"{option} {value}: {len(files)} images found ({', '.join(IMAGE_SUFFIXES)}); at least 2 are needed"
        )
    for file in files:
        try:
            with Image.open(file) as image:
                image.verify()
        except (OSError, UnidentifiedImageError):
            raise ConfigError(f"{option} {value}: {file.name} is not a readable image; remove or replace it") from None
    return folder


def load_images(folder: Path, size: int):
    """uint8 [N, size, size, 3] from every image in `folder`, centre-cropped and resized."""
    import numpy as np
    from PIL import Image, ImageOps

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return np.stack([np.asarray(ImageOps.fit(Image.open(f).convert("RGB"), (size, size))) for f in files])
