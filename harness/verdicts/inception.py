"""Inception v3 features for fid and kid: the network FID is defined on, as torch-fidelity (and through it
torchmetrics) computes it. Its published weights are fetched on first use into torch's hub cache, where
torch-fidelity's own download keeps them, checked against the hash their name publishes (torch.hub's rule), and read
without unpickling."""

from __future__ import annotations

import hashlib
import io
import urllib.parse
from pathlib import Path

import numpy as np
import torch

from lora_harness.bases.hub_file import offline_now
from lora_harness.config.config import ConfigError
from lora_harness.torch_save_file import NotAStateDict, looks_like_torch_save, read_torch_tensors
from lora_harness.verdicts.clip_model import encode_once

FEATURES = "2048"  # the pool features FID and KID use
TORCH_FIDELITY = "torch-fidelity"  # the published weights torchmetrics' FID downloads
OFF = "none"  # fid and kid on the CLIP's image features instead
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt")
FORMS = (
    f"pass {TORCH_FIDELITY} (the published weights, fetched on first use), a URL or a local .pth or .safetensors "
    f"file of them, or {OFF} (the CLIP's features)"
)


class InceptionNotCached(Exception):
    """Offline and the weights are not in the cache: fid and kid skip, the message naming how to fetch them."""


def inception_spec(given: str | None, real_base: bool) -> str | None:
    """The Inception weights fid and kid use: the ones --inception-weights names; on a real base torch-fidelity's
    published ones (FID is defined on them); None for the CLIP's features (`none`, or an embedded tiny base, whose
    distances are self-tests)."""
    if given == OFF:
        return None
    return given or (TORCH_FIDELITY if real_base else None)


def check_inception_weights(value: str) -> str:
    """The --inception-weights value, checked before any model loads: `none`, `torch-fidelity`, a URL of a weights
    file, or a local weights file (resolved) that begins as its format does."""
    if value in (OFF, TORCH_FIDELITY):
        return value
    if _is_url(value):
        if not _file_name(value).endswith(WEIGHT_SUFFIXES):
            raise ConfigError(f"--inception-weights {value}: a URL of a .pth or .safetensors file is fetched; {FORMS}")
        return value
    path = Path(value).expanduser()
    if path.suffix not in WEIGHT_SUFFIXES:
        raise ConfigError(f"--inception-weights {value}: not a weights file; {FORMS}")
    if not path.is_file():
        raise ConfigError(f"--inception-weights {value}: no such file; {FORMS}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(path, "pt") as weights:
                weights.keys()
        except (SafetensorError, OSError) as error:
            raise ConfigError(f"--inception-weights {value}: not a readable safetensors file ({error})") from None
    elif not looks_like_torch_save(path):
        raise ConfigError(f"--inception-weights {value}: not a torch.save file (its first bytes are neither format's)")
    return str(path.resolve())


def load_inception(spec: str, offline: bool, progress) -> InceptionFeatures:
    """The features model of the weights `spec` names, fetched first where it is a URL (or torch-fidelity) not yet
    in the cache. Raises InceptionNotCached offline, ConfigError where the weights cannot be had or are not
    Inception's."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    url = URL_INCEPTION_V3 if spec == TORCH_FIDELITY else spec
    path = _fetched(url, offline, progress) if _is_url(url) else Path(url)
    return InceptionFeatures(path, source=spec)


def _is_url(value: str) -> bool:
    """An http(s) URL, fetched; anything else is a local path (`C:\\…` included)."""
    return urllib.parse.urlparse(value).scheme in ("http", "https")


def _file_name(url: str) -> str:
    return Path(urllib.parse.urlparse(url).path).name


def _fetched(url: str, offline: bool, progress) -> Path:
    """The cached copy of the weights at `url`, downloaded (with a progress bar) if absent."""
    from torch.hub import HASH_REGEX, download_url_to_file, get_dir

    name = _file_name(url)
    cached = Path(get_dir()) / "checkpoints" / name  # where torch.hub.load_state_dict_from_url keeps it
    if cached.is_file():
        return cached
    fetch = f"`curl -L --create-dirs -o {cached} {url}`"
    if offline_now(offline):
        raise InceptionNotCached(
            f"the Inception weights {name} are not in torch's cache and the run is offline: fetch them once ({fetch}) "
            f"or pass --inception-weights {OFF}"
        )
    published = HASH_REGEX.search(name)
    cached.parent.mkdir(parents=True, exist_ok=True)
    progress.line(f"fetching the Inception v3 weights {name} into {cached.parent}")
    try:
        with progress.shown():
            download_url_to_file(url, str(cached), published.group(1) if published else None, progress.visible)
    except RuntimeError as error:  # torch.hub's hash check; the download is deleted
        raise ConfigError(f"--inception-weights {url}: the download is not the published file ({error})") from None
    except OSError as error:  # URLError and HTTPError are OSErrors
        raise ConfigError(
            f"--inception-weights {url}: fetching it failed ({type(error).__name__}: {error}); connect, fetch it "
            f"once with {fetch}, or pass --inception-weights {OFF}"
        ) from None
    return cached


def _weights(path: Path, data: bytes, digest: str) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, checked against the hash its name publishes; never unpickled."""
    from safetensors import SafetensorError
    from safetensors.torch import load
    from torch.hub import HASH_REGEX

    published = HASH_REGEX.search(path.name)
    if published and not digest.startswith(published.group(1)):
        raise ConfigError(
            f"--inception-weights {path}: its sha256 {digest[:12]}… is not the {published.group(1)} its name "
            "publishes: a damaged or different file; delete it and fetch it again"
        )
    try:
        return load(data) if path.suffix == ".safetensors" else read_torch_tensors(data)
    except (SafetensorError, NotAStateDict) as error:
        raise ConfigError(f"--inception-weights {path}: not a file of Inception v3 weights ({error})") from None


class InceptionFeatures:
    """torchmetrics' NoTrainInceptionV3; each distinct image is encoded once per run."""

    self_test = False

    def __init__(self, path: Path, source: str | None = None):
        from torchmetrics.image.fid import NoTrainInceptionV3

        try:
            data = path.read_bytes()  # read once: the weights and their digest come from the same bytes
        except OSError as error:
            raise ConfigError(f"--inception-weights {path}: cannot be read ({error})") from None
        digest = hashlib.sha256(data).hexdigest()
        weights = _weights(path, data, digest)
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
                f"--inception-weights {path}: not torch-fidelity's Inception v3 weights ({error})"
            ) from None
        origin = f" ({source})" if source == TORCH_FIDELITY else ""
        self.label = f"Inception v3 pool features (torch-fidelity), weights {path.name}{origin} sha256 {digest[:12]}"
        self._cache: dict[str, torch.Tensor] = {}

    def image_features(self, images: np.ndarray) -> torch.Tensor:
        """2048-d features of uint8 [N, H, W, 3] images (the network resizes to 299 px itself)."""
        return encode_once(self._cache, images, self._encode_images)

    @torch.no_grad()
    def _encode_images(self, images: np.ndarray) -> torch.Tensor:
        return self.model(torch.from_numpy(images).permute(0, 3, 1, 2)).double()
