"""One file of a Hub repository, fetched as huggingface_hub fetches it (into its cache, with its progress bar), or
from that cache alone when offline (`--offline`, or the ecosystem's `HF_HUB_OFFLINE=1`). Callers say whose file it
is; the messages here say what went wrong."""

from __future__ import annotations

import contextlib
from pathlib import Path


class HubFileNotCached(Exception):
    """Offline and not in the cache; `fetch` is the command that fetches it once."""

    def __init__(self, fetch: str):
        super().__init__(fetch)
        self.fetch = fetch


class HubFileUnavailable(Exception):
    """The file cannot be had: no such repository, no such file in it, or no connection; the message says which."""


class HubFileAbsent(HubFileUnavailable):
    """The repository holds no such file (often: its weights are pickles only, and the safetensors twin was asked)."""


def offline_now(offline: bool) -> bool:
    from huggingface_hub import constants

    return offline or constants.HF_HUB_OFFLINE


@contextlib.contextmanager
def kept_offline():
    """huggingface_hub's own offline switch, for the length of a cache lookup: without it the client still asks
    the Hub for its registry of agent harnesses (`/api/agent-harnesses`, for its user agent) on a local lookup."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def hub_file(repo: str, filename: str, offline: bool) -> Path:
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    offline = offline_now(offline)
    try:
        with kept_offline() if offline else contextlib.nullcontext():
            return Path(hf_hub_download(repo, filename, local_files_only=offline))
    except LocalEntryNotFoundError:
        if offline:
            raise HubFileNotCached(f"`hf download {repo} {filename}`") from None
        raise HubFileUnavailable(f"could not reach {constants.ENDPOINT} to fetch {repo}/{filename}") from None
    except RepositoryNotFoundError:
        raise HubFileUnavailable(f"no repository {repo} on {constants.ENDPOINT}") from None
    except EntryNotFoundError:
        raise HubFileAbsent(f"{repo} holds no {filename}") from None
    except Exception as error:  # the Hub's client raises its HTTP library's own errors when it cannot connect
        raise HubFileUnavailable(
            f"fetching {repo}/{filename} from {constants.ENDPOINT} failed ({type(error).__name__}: {error}); "
            "connect, or pass --offline with it cached"
        ) from None
