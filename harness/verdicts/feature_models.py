"""The feature models the quality checks embed renders with, each loaded once per run and only when a check first
asks: the CLIP (clip_heldout, mode_collapse, cmmd; fid and kid where no Inception is used) and the Inception (fid and
kid: on a real base by default). A plugin's `pytest_lora_feature_model` may supply either; else they load as
`--clip-model` and `--inception-weights` say."""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property

from lora_harness.bases.families import EMBEDDED_DEFAULT
from lora_harness.config.check_registry import CLIP, INCEPTION
from lora_harness.config.config import ConfigError, HarnessConfig
from lora_harness.config.statuses import ERROR, SKIPPED
from lora_harness.rendering.progress import Progress
from lora_harness.verdicts.clip_model import clip_spec, load_clip
from lora_harness.verdicts.inception import InceptionNotCached, inception_spec, load_inception


class FeatureModels:
    def __init__(self, config: HarnessConfig, supplied: Callable[[str], object], progress: Progress):
        self.config = config
        self.supplied = supplied  # kind -> a plugin's model, or None
        self.progress = progress

    @property
    def real_base(self) -> bool:
        return self.config.base_path is not None

    @property
    def embedded_default(self) -> bool:
        """The embedded default base, which brings its self-test CLIP."""
        return self.config.base_model == EMBEDDED_DEFAULT

    @property
    def expected(self) -> set[str]:
        """The kinds of model this run will have, before any loads: a CLIP where one is named, a real base brings
        the default one or the embedded default base its self-test one; an Inception where fid and kid use one. (One
        a pytest_lora_feature_model hook supplies on another base is used all the same; the renders it needs are
        then made when first asked for.)"""
        expected = {INCEPTION} if self.inception_spec is not None else set()
        if clip_spec(self.config.clip_model, self.real_base) or self.embedded_default:
            expected.add(CLIP)
        return expected

    @cached_property
    def clip(self):
        """(ClipModel, "") or (None, why there is none)."""
        supplied = self.supplied(CLIP)
        if supplied is not None:
            return supplied, ""
        with self.progress.shown():  # a first use's download shows its progress
            return load_clip(self.config.clip_model, self.embedded_default, self.real_base, self.config.offline)

    @property
    def inception_spec(self) -> str | None:
        """The Inception weights fid and kid use; None for the CLIP's features."""
        return inception_spec(self.config.inception_weights, self.real_base)

    @cached_property
    def inception(self):
        """(InceptionFeatures, "", None), or (None, why there is none, the status fid and kid then take: skipped
        offline with the weights not cached, an error where they cannot be had or read)."""
        supplied = self.supplied(INCEPTION)
        if supplied is not None:
            return supplied, "", None
        try:
            return load_inception(self.inception_spec, self.config.offline, self.progress), "", None
        except InceptionNotCached as missing:
            return None, str(missing), SKIPPED
        except ConfigError as error:
            return None, str(error), ERROR

    def for_distance(self, check: str):
        """(features model, why not, status if none) for fid, kid, cmmd: Inception for fid and kid where one is used,
        else the CLIP's image features; cmmd is defined on CLIP embeddings."""
        if check != "cmmd" and self.inception_spec is not None:
            return self.inception
        return (*self.clip, SKIPPED)
