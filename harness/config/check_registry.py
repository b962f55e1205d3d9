"""The checks, one CheckSpec each. Collection, the render plan, the controls' gate, --compare-to, the reports and the
project's tests read a check's facts from here: adding a check is one entry (a plugin's: `pytest_lora_checks`,
harness/config/hookspecs.py) plus its module."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lora_harness.config.config import REFERENCE
from lora_harness.config.statuses import FAILED, PASSED

# What a check can ask to be rendered: (state, prompt set) pairs (harness/rendering/render_needs.py plans them).
BASE, ADAPTED, AT_ZERO, BASE_AGAIN = "base", "adapted", "adapted at scale 0", "base again"
MAIN, HELDOUT = "main", "held-out"  # --prompts and --heldout-prompts
CLIP, INCEPTION = "clip", "inception"  # the feature models a check can score renders with (pytest_lora_feature_model)


@dataclass(frozen=True)
class CheckSpec:
    name: str  # as results.json, `-k` and the reports know it: the test's `check` parameter, else its name less test_
    module: str  # file name of the test module that runs it
    folder: Path | None = None  # where that module lives; None: the harness's own (lora_harness/checks)
    renders: frozenset[tuple[str, str]] = frozenset()  # (render state, prompt set) it asks of every adapter
    train_image_renders: frozenset[tuple[str, str]] = frozenset()  # asked as well when --train-images is given
    gated_by_controls: bool = False  # its verdict reads renders: failed controls make it an error, not a verdict
    features: frozenset[str] = frozenset()  # feature models that can serve it; with none, it skips before rendering
    needs_corpus: bool = False  # without --reference-images it skips before rendering
    higher_is_better: bool | None = None  # --compare-to's direction of better; None: not compared
    tolerance: float | None = None  # --compare-to's default relative regression in the bad direction
    after_other_checks: bool = False  # collected after its adapter's other checks: it judges what they left behind

    def __post_init__(self):
        if (self.higher_is_better is None) != (self.tolerance is None):
            raise ValueError(f"check {self.name}: higher_is_better and tolerance go together (--compare-to needs both)")
        if self.tolerance is not None and not self.tolerance >= 0:
            raise ValueError(f"check {self.name}: tolerance must be 0 or more, got {self.tolerance!r}")
        if not self.features <= {CLIP, INCEPTION}:
            raise ValueError(f"check {self.name}: features must be among {CLIP!r}, {INCEPTION!r}, got {self.features}")

    def module_path(self) -> Path:
        if self.folder is not None:
            return Path(self.folder).resolve() / self.module
        from importlib import resources

        return Path(str(resources.files("lora_harness.checks"))) / self.module


@dataclass(frozen=True)
class CheckRegistry:
    specs: tuple[CheckSpec, ...]  # in report order

    def __post_init__(self):
        names = [spec.name for spec in self.specs]
        doubled = sorted({name for name in names if names.count(name) > 1})
        if doubled:
            raise ValueError(f"more than one CheckSpec named {', '.join(doubled)}")
        folders: dict[str, Path | None] = {}
        for spec in self.specs:  # check modules get node ids by file name (plugin.py): one file per name
            if folders.setdefault(spec.module, spec.folder) != spec.folder:
                raise ValueError(f"check {spec.name}: another check's module is also named {spec.module}")

    def __iter__(self) -> Iterator[CheckSpec]:
        return iter(self.specs)

    def __getitem__(self, name: str) -> CheckSpec:
        for spec in self.specs:
            if spec.name == name:
                return spec
        raise KeyError(f"no check named {name!r}; known: {', '.join(self.names)}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.specs)

    def with_checks(self, extra: Iterable[CheckSpec]) -> CheckRegistry:
        """This registry and `extra` after it; raises ValueError on a doubled name or module file name."""
        return CheckRegistry((*self.specs, *extra))

    def in_collection_order(self) -> tuple[CheckSpec, ...]:
        """Report order, those that judge what the other checks left behind after them."""
        return tuple(sorted(self.specs, key=lambda spec: spec.after_other_checks))

    def module_paths(self) -> list[Path]:
        """The check modules in collection order, each once (fid, kid and cmmd share one)."""
        return list(dict.fromkeys(spec.module_path() for spec in self.in_collection_order()))

    def default_tolerances(self) -> dict[str, float]:
        return {spec.name: spec.tolerance for spec in self.specs if spec.tolerance is not None}


_SHARED = frozenset({(BASE, MAIN), (ADAPTED, MAIN)})
_DISTANCE = {"module": "test_distribution.py", "gated_by_controls": True, "renders": _SHARED, "needs_corpus": True}

# Report order: the mechanical checks first, then the weights, then image quality.
BUILTIN = CheckRegistry(
    (
        CheckSpec(
            "wiring",
            "test_wiring.py",
            renders=_SHARED | {(AT_ZERO, MAIN)},
            gated_by_controls=True,
            higher_is_better=True,
            tolerance=0.0,
        ),
        # Renders only for its "after rendering" stage; its verdict is about the base's parameters, not pixels: after
        # the adapter's other checks rendered what they needed, and again once the adapter is unloaded.
        CheckSpec(
            "frozen_base",
            "test_frozen_base.py",
            renders=frozenset({(ADAPTED, MAIN)}),
            higher_is_better=False,
            tolerance=0.0,
            after_other_checks=True,
        ),
        CheckSpec("param_budget", "test_param_budget.py", higher_is_better=False, tolerance=0.10),
        CheckSpec(
            "pixel_diff",
            "test_pixel_diff.py",
            renders=_SHARED | {(BASE_AGAIN, MAIN)},
            gated_by_controls=True,
            higher_is_better=True,
            tolerance=0.25,
        ),
        CheckSpec("release_metadata", "test_release_metadata.py"),
        CheckSpec("weight_health", "test_weight_health.py"),
        CheckSpec(
            "clip_heldout",
            "test_clip_heldout.py",
            renders=frozenset({(BASE, HELDOUT), (ADAPTED, HELDOUT)}),
            gated_by_controls=True,
            features=frozenset({CLIP}),
        ),
        CheckSpec("fid", **_DISTANCE, features=frozenset({CLIP, INCEPTION})),  # Inception's features when given
        CheckSpec("kid", **_DISTANCE, features=frozenset({CLIP, INCEPTION})),
        CheckSpec("cmmd", **_DISTANCE, features=frozenset({CLIP})),  # defined on CLIP embeddings
        CheckSpec(
            "mode_collapse",
            "test_mode_collapse.py",
            renders=_SHARED,
            train_image_renders=frozenset({(ADAPTED, HELDOUT)}),  # copies of training images: on held-out prompts
            gated_by_controls=True,
            features=frozenset({CLIP}),
        ),
    )
)

UNTRAINED = "control-untrained"  # the reference's network with its up matrices at zero


@dataclass(frozen=True)
class ControlSpec:
    """One verdict the controls expect of the reference overfit or its untrained twin (run by the session's
    `run_controls`): where one is not met, the run cannot tell a good adapter from a bad one, and the verdicts gated
    on the controls are withheld."""

    adapter: str  # REFERENCE or UNTRAINED
    check: str
    expected: str  # PASSED or FAILED


CONTROLS = (
    ControlSpec(REFERENCE, "wiring", PASSED),
    ControlSpec(REFERENCE, "pixel_diff", PASSED),
    ControlSpec(UNTRAINED, "pixel_diff", FAILED),  # an adapter that changes nothing must fail
)
CONTROL_CHECKS = tuple(dict.fromkeys(control.check for control in CONTROLS))


def report_order(checks: Iterable[str]) -> list[str]:
    """`checks` as the reports list them: the harness's own in registry order, then any other (a plugin's) in the
    order given. Reports read a results.json alone (`lora_harness merge` too), so they know the built-in order."""
    given = list(dict.fromkeys(checks))
    return [name for name in BUILTIN.names if name in given] + [name for name in given if name not in BUILTIN.names]
