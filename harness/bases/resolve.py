"""Where `--base-model` points: an embedded tiny twin, a local diffusers folder, a single-file checkpoint (local, or a
Hub URL as `from_single_file` takes one) or a hub id (fetched as diffusers fetches it, or from the local cache alone
when offline); a folder's pipeline class is checked against the family registry before any model loads."""

from __future__ import annotations

import json
from pathlib import Path

from diffusers.loaders.single_file_utils import _extract_repo_id_and_weights_name, is_valid_url

from lora_harness.bases.families import DENOISER_COMPONENTS, EMBEDDED_BASES, supported_pipelines
from lora_harness.bases.families.generic import SCALE_KEYWORDS
from lora_harness.bases.hub_file import HubFileNotCached, HubFileUnavailable, hub_file, kept_offline
from lora_harness.bases.single_file import SAFETENSORS_SUFFIX, inspect_single_file
from lora_harness.config.config import ConfigError

EMBEDDED_NAMES = ", ".join(f"`{name}`" for name in EMBEDDED_BASES)


def resolve_base(base_model: str, offline: bool = False) -> Path | None:
    """The local folder holding `base_model`, or the single-file checkpoint it names (its family told from its
    header now, so a file that cannot serve is a usage error before any model loads). A hub id is fetched on first
    use unless `offline`."""
    if base_model in EMBEDDED_BASES:
        return None
    if is_valid_url(base_model):
        path = _hub_single_file(base_model, offline)
        inspect_single_file(base_model, path)
        return path
    path = Path(base_model).expanduser()
    if path.is_file():
        inspect_single_file(base_model, path)
        return path
    if not path.is_dir():
        if not looks_like_hub_id(base_model):
            raise ConfigError(
                f"--base-model {base_model}: no such folder or file; pass a diffusers pipeline folder, a single-file checkpoint (.safetensors), a hub id or an embedded base ({EMBEDDED_NAMES})"
            )
        path = _hub_snapshot(base_model, offline)
    check_pipeline(base_model, path)
    return path


def looks_like_hub_id(given: str) -> bool:
    return (
        given.count("/") == 1
        and not given.startswith((".", "/", "~"))
        and Path(given).suffix.lower() not in (".safetensors", ".ckpt")  # a checkpoint file's name, not a repository
    )


def _hub_single_file(url: str, offline: bool) -> Path:
    """A single-file checkpoint on the Hub (`https://huggingface.co/ORG/REPO/blob/main/FILE.safetensors`, the URL
    diffusers' `from_single_file` takes), fetched into the Hugging Face cache; safetensors only."""
    repo_id, filename = _extract_repo_id_and_weights_name(url)
    if filename is None:
        raise ConfigError(
            f"--base-model {url}: not the URL of a file on the Hub; pass https://huggingface.co/ORG/REPO/blob/main/FILE"
        )
    if Path(filename).suffix.lower() != SAFETENSORS_SUFFIX:
        raise ConfigError(
            f"--base-model {url}: {Path(filename).name} is not a .safetensors file; lora-harness never unpickles a "
            "checkpoint (unpickling can run arbitrary code): use the repository's .safetensors file"
        )
    try:
        return hub_file(repo_id, filename, offline)
    except HubFileNotCached as missing:
        raise ConfigError(
            f"--base-model {url}: not in the local Hugging Face cache, and the run is offline: fetch it once "
            f"({missing.fetch}), or pass a local file"
        ) from None
    except HubFileUnavailable as error:
        raise ConfigError(f"--base-model {url}: {error}") from None


def _hub_snapshot(repo_id: str, offline: bool) -> Path:
    """A hub id's pipeline folder as diffusers' `from_pretrained` fetches it: the files its pipeline loads, safetensors
    only, into the Hugging Face cache (huggingface_hub shows the progress); from the cache alone when offline
    (`--offline`, or the ecosystem's `HF_HUB_OFFLINE=1`)."""
    from diffusers import DiffusionPipeline
    from huggingface_hub import constants, model_info
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    if offline or constants.HF_HUB_OFFLINE:
        why = "--offline" if offline else "HF_HUB_OFFLINE=1"
        try:  # diffusers' own lookup: the files its pipeline loads, where a whole snapshot's would ask for every file
            with kept_offline():
                return Path(DiffusionPipeline.download(repo_id, use_safetensors=True, local_files_only=True))
        except LocalEntryNotFoundError:
            raise ConfigError(
                f"--base-model {repo_id}: not in the local Hugging Face cache, and {why} keeps lora-harness off the "
                f"network: fetch it once where there is one (`hf download {repo_id}`, or a run without {why}), or "
                "pass a local folder"
            ) from None
    try:
        model_info(repo_id)
    except GatedRepoError:
        raise ConfigError(
            f"--base-model {repo_id}: a gated repository; accept its terms on its page on {constants.ENDPOINT} and "
            "log in (`hf auth login`), or pass a local folder"
        ) from None
    except RepositoryNotFoundError:
        raise ConfigError(
            f"--base-model {repo_id}: no such repository on {constants.ENDPOINT} (or a private one: log in with "
            "`hf auth login`); check the id, or pass a local folder"
        ) from None
    except Exception as error:  # the Hub's client raises its HTTP library's own errors when it cannot connect
        raise ConfigError(
            f"--base-model {repo_id}: could not reach {constants.ENDPOINT} ({type(error).__name__}: {error}); "
            "connect, or pass --offline to use what the local Hugging Face cache holds"
        ) from None
    try:
        return Path(DiffusionPipeline.download(repo_id, use_safetensors=True))
    except OSError as error:
        if "safetensors" in str(error):  # diffusers' `use_safetensors=True` refusal
            raise ConfigError(
                f"--base-model {repo_id}: its weights are pickles only (.bin, .ckpt), which lora-harness never "
                "unpickles (unpickling can run arbitrary code); use a repository with safetensors weights, or convert "
                "it once where you trust it and pass the folder"
            ) from None
        raise ConfigError(
            f"--base-model {repo_id}: the download failed ({error}); run again, or pass --offline"
        ) from None
    except ValueError as error:  # a pipeline or component of custom code, which diffusers runs only when trusted
        raise ConfigError(
            f"--base-model {repo_id}: needs code from the repository to load ({error}); lora-harness runs no code "
            "from a repository"
        ) from None


def check_pipeline(base_model: str, path: Path, option: str = "--base-model") -> None:
    index_path = path / "model_index.json"
    if not index_path.is_file():
        raise ConfigError(
            f"{option} {base_model}: {path} has no model_index.json, so it is not a diffusers pipeline; "
            f"pass a folder written by `save_pretrained`, a hub id or an embedded base ({EMBEDDED_NAMES})"
        )
    try:
        index = json.loads(index_path.read_text())
        pipeline_class = index.get("_class_name")
    except (json.JSONDecodeError, AttributeError, OSError):
        raise ConfigError(f"{option} {base_model}: {index_path} is not valid JSON; save the pipeline again") from None
    supported = supported_pipelines()
    if pipeline_class in supported:
        return
    why = _why_unusable(str(pipeline_class), index)
    if why is not None:
        checked = ", ".join(f"{name} ({', '.join(families)})" for name, families in supported.items())
        raise ConfigError(
            f"{option} {base_model}: {why}; lora-harness checks {checked} bases, and any other text-to-image or "
            "text-to-video pipeline diffusers loads LoRAs into"
        )


# What a pipeline's call takes besides a prompt when it renders from an image or a video: the harness renders from
# prompts alone, the same for the base and every adapter.
CONDITIONING = ("image", "control_image", "mask_image", "video")
# What the renderer gives every call (and the LoRA scale keyword, one of `generic.SCALE_KEYWORDS`).
RENDER_ARGUMENTS = ("prompt", "height", "width", "num_inference_steps", "callback_on_step_end", "output_type")


def _why_unusable(pipeline_class: str, index: dict) -> str | None:
    """Why a pipeline class no family module covers cannot be checked; None when it can be (a text-to-image or
    text-to-video pipeline with a LoRA loader: its family is made from the class, `families/generic.py`)."""
    import inspect

    import diffusers
    from diffusers.loaders.lora_base import LoraBaseMixin

    found = getattr(diffusers, pipeline_class, None)
    if not isinstance(found, type) or not issubclass(found, diffusers.DiffusionPipeline):
        return f"a {pipeline_class} is no pipeline class diffusers {diffusers.__version__} has"
    if not issubclass(found, LoraBaseMixin):
        return (
            f"a {pipeline_class} has no LoRA loader in diffusers {diffusers.__version__} (it is no LoraBaseMixin), "
            "so no LoRA adapter can be applied to it"
        )
    call = inspect.signature(found.__call__).parameters
    taken = [name for name in CONDITIONING if name in call]
    if taken:
        return (
            f"a {pipeline_class} renders from an {taken[0]} as well as a prompt, and lora-harness renders from prompts "
            "alone: pass a folder of the text-to-image (or text-to-video) pipeline of the same model"
        )
    lacking = [name for name in RENDER_ARGUMENTS if name not in call]
    if not any(keyword in call for keyword in SCALE_KEYWORDS):
        lacking.append(f"LoRA scale keyword ({', '.join(SCALE_KEYWORDS)})")
    if lacking:
        return (
            f"a {pipeline_class}'s call takes no {', '.join(lacking)}, which lora-harness renders every image with, "
            "so it cannot render the base and each adapter alike"
        )
    if not any(component in index for component in DENOISER_COMPONENTS):
        return (
            f"a {pipeline_class} holds its denoiser in none of {', '.join(DENOISER_COMPONENTS)}, where lora-harness "
            "looks for it"
        )
    return None
