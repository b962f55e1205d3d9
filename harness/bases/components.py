"""Where a single file of a denoiser alone takes the rest of its pipeline from (`--base-components`): a diffusers
folder, or a hub id whose denoiser weights are never fetched. The components are checked against the file (family,
experts, the denoiser config its tensors must fit) from `model_index.json` and the denoiser's `config.json` alone,
before any weight is downloaded."""

from __future__ import annotations

import json
from pathlib import Path

from lora_harness.bases.families import SECOND_EXPERTS, supported_pipelines
from lora_harness.bases.hub_file import HubFileAbsent, HubFileNotCached, HubFileUnavailable, hub_file, offline_now
from lora_harness.bases.resolve import check_pipeline, looks_like_hub_id
from lora_harness.bases.single_file import SingleFileBase, denoiser_misfit, described, inspect_single_file
from lora_harness.config.config import ConfigError

# What a pipeline folder's model may hold besides safetensors: never fetched (lora-harness unpickles nothing).
NOT_FETCHED = ("*.bin", "*.ckpt", "*.pt", "*.pth", "*.pkl", "*.msgpack", "*.h5", "*.onnx", "*.pb", "*.gguf")
SAFETY_CHECKER = "safety_checker"  # loaded as None: it would black out the pixels judged


def resolve_components(base_model: str, base_path: Path | None, given: str | None, offline: bool) -> Path | None:
    """The diffusers folder a single file of a denoiser alone takes the rest of its pipeline from: `given`
    (--base-components: a folder or a hub id), else the published repository for the file's model type. None for
    a base that needs none; a ConfigError when the components cannot serve the file."""
    if base_path is None or not base_path.is_file():
        if given:
            raise ConfigError(
                f"--base-components {given}: only a single-file base takes its other parts from elsewhere, and "
                f"--base-model {base_model} is a whole pipeline; drop --base-components"
            )
        return None
    detected = inspect_single_file(base_model, base_path)
    if detected.whole:
        if given:
            raise ConfigError(
                f"--base-components {given}: --base-model {base_model} holds every part of its {detected.family} "
                "pipeline, so nothing is taken from elsewhere; drop --base-components"
            )
        return None
    offline = offline_now(offline)
    source = given or detected.default_components
    if source is None:
        raise ConfigError(
            f"--base-model {base_model}: {described(detected)}, which diffusers reads as `{detected.model_type}`, a "
            "model type with no published text-to-video or text-to-image repository to take the rest of its "
            "pipeline from: pass --base-components (a diffusers folder or hub id of the model the file is)"
        )
    option = "--base-components"
    if not given:
        option += (
            f" (not given: --base-model {base_model} is {described(detected)}, so the rest of its pipeline comes from "
            f"the published repository for `{detected.model_type}`)"
        )
    path = Path(source).expanduser()
    if path.is_dir():
        check_pipeline(source, path, option=option)
        _check_components(base_model, detected, source, path, option)
        return path
    if path.exists() or not looks_like_hub_id(source):
        what = "a file, not a diffusers folder" if path.exists() else "no such folder"
        raise ConfigError(
            f"{option} {source}: {what}; pass a diffusers pipeline folder or hub id of the base whose "
            f"{detected.component} {base_model} holds"
        )
    fetch = f"`hf download {source} --exclude '{detected.component}/*.safetensors'`"
    head = _hub_files(source, ("model_index.json", f"{detected.component}/config.json"), offline, option, fetch)
    check_pipeline(source, head, option=option)
    _check_components(base_model, detected, source, head, option)
    return _hub_rest(source, head, detected.component, offline, option, fetch)


def _check_components(base_model: str, detected: SingleFileBase, source: str, path: Path, option: str) -> None:
    index = json.loads((path / "model_index.json").read_text())
    pipeline_class = index.get("_class_name")
    families = supported_pipelines().get(pipeline_class, ())
    if detected.family not in families:
        held = f"{pipeline_class} ({', '.join(families)})" if families else str(pipeline_class)
        raise ConfigError(
            f"{option} {source}: a {held}, but --base-model {base_model} is {described(detected)} (diffusers reads "
            f"it as `{detected.model_type}`); pass a {detected.family} pipeline's folder or hub id"
        )
    second = [name for name in SECOND_EXPERTS if (index.get(name) or [None])[0] is not None]
    if second:
        raise ConfigError(
            f"{option} {source}: a {pipeline_class} with a second expert (`{second[0]}`), and --base-model "
            f"{base_model} holds one {detected.component}; pass a folder of the whole base, or components of a "
            "pipeline with one expert"
        )
    if (index.get(detected.component) or [None])[0] is None:
        raise ConfigError(f"{option} {source}: its model_index.json names no {detected.component}")
    if not (path / detected.component / "config.json").is_file():
        raise ConfigError(
            f"{option} {source}: no {detected.component}/config.json, which configures the {detected.component} "
            f"read from {base_model}; keep it when leaving out the {detected.component}'s weights"
        )
    misfit = denoiser_misfit(detected, path)
    if misfit:
        raise ConfigError(
            f"--base-model {base_model}: its {detected.component} does not fit the {detected.component} config of "
            f"{option} {source}: {misfit}. Pass the components of the model the file is (a {detected.family} "
            "variant of other widths or blocks has a repository of its own), or a file of the components' model"
        )


def _hub_files(repo_id: str, names: tuple[str, ...], offline: bool, option: str, fetch: str) -> Path:
    """`names` fetched from the repository (or found in the cache offline); the snapshot folder holding them."""
    for name in names:
        try:
            path = hub_file(repo_id, name, offline)
        except HubFileNotCached:
            raise ConfigError(
                f"{option} {repo_id}: not in the local Hugging Face cache, and the run is offline: fetch it once "
                f"where there is a network ({fetch}), or pass a local folder"
            ) from None
        except HubFileAbsent:
            raise ConfigError(
                f"{option} {repo_id}: holds no {name}, so it is not a diffusers pipeline whose parts the file's "
                "denoiser fits; pass one"
            ) from None
        except HubFileUnavailable as error:
            raise ConfigError(f"{option} {repo_id}: {error}") from None
    return path.parents[len(Path(names[-1]).parts) - 1]


def _hub_rest(repo_id: str, head: Path, component: str, offline: bool, option: str, fetch: str) -> Path:
    """The pipeline's other parts: every file of its folders but weights that are not safetensors, never the
    denoiser's weights (the file holds them) nor the safety checker's (not loaded). Offline, the cache must hold
    them; each model folder must hold safetensors weights."""
    from huggingface_hub import snapshot_download

    index = json.loads((head / "model_index.json").read_text())
    folders = [
        name
        for name, value in index.items()
        if isinstance(value, list) and value[0] is not None and name not in (component, SAFETY_CHECKER)
    ]
    if not offline:
        try:
            folder = Path(
                snapshot_download(
                    repo_id,
                    allow_patterns=["model_index.json", f"{component}/config.json", *(f"{f}/*" for f in folders)],
                    ignore_patterns=list(NOT_FETCHED),
                )
            )
        except Exception as error:  # the Hub's client raises its HTTP library's own errors when it cannot connect
            raise ConfigError(f"{option} {repo_id}: the download failed ({type(error).__name__}: {error})") from None
    else:
        folder = head
    for name in folders:
        if not (folder / name).is_dir():
            raise ConfigError(
                f"{option} {repo_id}: only part of it is in the local Hugging Face cache (no {name}/), and the run is "
                f"offline: fetch it once where there is a network ({fetch})"
            )
        if (folder / name / "config.json").is_file() and not any((folder / name).glob("*.safetensors")):
            raise ConfigError(
                f"{option} {repo_id}: its {name} weights are pickles only (.bin, .ckpt), which lora-harness never "
                "unpickles (unpickling can run arbitrary code); use a repository with safetensors weights"
            )
    return folder
