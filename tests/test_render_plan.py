"""The render plan and the render cache, through the plugin as users run it: U-Net calls counted in results.json
against the minimum worked out by hand, cache hits across runs, misses when anything that decides a pixel changes."""

import json
import subprocess
import sys

import numpy as np
import pytest

from lora_harness.rendering.render_cache import CachedRender, RenderCache, RenderKey
from tests.helpers import results, run

STEPS = 2
# Default prompts: 2 main x 2 seeds = 4 jobs; 4 held-out prompts x 2 seeds = 8 jobs; batch size 16.
ARGS = ("--reference-steps", "0", "--render-steps", str(STEPS))


def outcome(document):
    return {(r["adapter"], r["check"]): (r["status"], r["value"]) for r in document["results"]}


@pytest.mark.parametrize(
    "selection, calls",
    [
        # base, adapted and adapted at scale 0, main prompts
        (("-k", "wiring"), 3),
        # base, adapted and the base again (determinism control)
        (("-k", "pixel_diff"), 3),
        # the weights alone: nothing renders
        (("-k", "param_budget or weight_health or release_metadata"), 0),
        # base and adapted, held-out prompts only
        (("-k", "clip_heldout"), 2),
        # base (main + held-out in one call), base again, adapted (main + held-out), adapted at scale 0
        ((), 4),
        # the same with at most 4 renders per call: 12 jobs take 3 calls, 4 jobs take 1
        (("--render-batch-size", "4"), 3 + 1 + 3 + 1),
    ],
)
def test_unet_calls_equal_the_plans_minimum(pytester, write_lora, selection, calls):
    run(pytester, "--adapter", write_lora("kohya", "good.safetensors"), *ARGS, "--no-render-cache", *selection)
    document = results(pytester)
    assert document["unet_forward_passes"] == calls * STEPS
    assert document["adapters"][0]["cost"]["unet_forward_passes"] == calls * STEPS


def test_the_second_adapter_shares_the_base_renders(pytester, write_lora):
    adapters = ("--adapter", write_lora("kohya", "a.safetensors"), "--adapter", write_lora("peft", "b"))
    run(pytester, *adapters, *ARGS, "--no-render-cache")
    first, second = (adapter["cost"] for adapter in results(pytester)["adapters"])
    assert (first["unet_forward_passes"], second["unet_forward_passes"]) == (4 * STEPS, 2 * STEPS)  # adapted, scale 0


def test_the_reference_and_its_controls_render_once(pytester):
    """Training, then base, base again, and the reference and its untrained twin at scales 1 and 0."""
    run(pytester, "--adapter", "reference", "--reference-steps", "3", "--render-steps", str(STEPS), "--no-render-cache")
    assert results(pytester)["unet_forward_passes"] == 3 + 6 * STEPS


def test_a_second_run_renders_nothing_it_has_cached(pytester, write_lora):
    adapter = write_lora("kohya", "good.safetensors")
    cache = pytester.path / "render-cache"
    run(pytester, "--adapter", adapter, *ARGS, "--render-cache", cache)
    first = results(pytester)
    # base and adapted: 4 main + 8 held-out renders each; scale 0: 4 main. The determinism control is never cached.
    assert first["render_cache"] == {"folder": str(cache), "hits": 0, "written": 28}
    run(pytester, "--adapter", adapter, *ARGS, "--render-cache", cache)
    second = results(pytester)
    assert second["unet_forward_passes"] == STEPS  # the determinism control renders afresh, by design
    assert second["render_cache"]["hits"] == 28 and second["render_cache"]["written"] == 0
    assert outcome(second) == outcome(first)
    run(pytester, "--adapter", adapter, *ARGS, "--render-cache", cache, "-k", "wiring")
    assert results(pytester)["unet_forward_passes"] == 0


@pytest.mark.parametrize(
    "change",
    [("--render-steps", "3"), ("--render-size", "32"), ("--prompts", "prompts.txt")],
    ids=["steps", "size", "prompts"],
)
def test_changing_a_render_setting_misses_the_cache(pytester, write_lora, change):
    pytester.path.joinpath("prompts.txt").write_text("a lighthouse\nan orchard in spring\n")
    adapter, cache = write_lora("kohya", "good.safetensors"), pytester.path / "render-cache"
    run(pytester, "--adapter", adapter, *ARGS, "--render-cache", cache, "-k", "wiring")
    run(pytester, "--adapter", adapter, *ARGS, "--render-cache", cache, "-k", "wiring", *change)
    assert results(pytester)["render_cache"]["hits"] == 0 and results(pytester)["unet_forward_passes"] > 0


def test_a_new_seed_renders_only_that_seed(pytester, write_lora):
    adapter, cache = write_lora("kohya", "good.safetensors"), pytester.path / "render-cache"
    run(pytester, "--adapter", adapter, *ARGS, "--render-cache", cache, "-k", "wiring")
    run(pytester, "--adapter", adapter, *ARGS, "--render-cache", cache, "-k", "wiring", "--render-seeds", "3")
    document = results(pytester)
    assert document["render_cache"]["hits"] == 3 * 4  # seeds 0 and 1 of base, adapted, scale 0
    assert document["unet_forward_passes"] == 3 * STEPS  # seed 2 of each, one call each


def test_another_adapter_file_misses_the_cache_but_shares_the_base(pytester, write_lora):
    cache = pytester.path / "render-cache"
    run(pytester, "--adapter", write_lora("kohya", "a.safetensors"), *ARGS, "--render-cache", cache, "-k", "wiring")
    other = write_lora("kohya", "b.safetensors", alpha=2)  # same tensors, another alpha: another file
    run(pytester, "--adapter", other, *ARGS, "--render-cache", cache, "-k", "wiring")
    document = results(pytester)
    assert document["render_cache"]["hits"] == 4 and document["unet_forward_passes"] == 2 * STEPS  # base hit


def test_an_edited_adapter_config_misses_the_cache(pytester, write_lora):
    """A PEFT folder's weights stay the same, its lora_alpha changes: the scale, hence the pixels, change."""
    adapter, cache = write_lora("peft", "folder"), pytester.path / "render-cache"
    run(pytester, "--adapter", adapter, *ARGS, "--render-cache", cache, "-k", "wiring")
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "lora_alpha": 2 * config["lora_alpha"]}))
    run(pytester, "--adapter", adapter, *ARGS, "--render-cache", cache, "-k", "wiring")
    assert results(pytester)["render_cache"]["hits"] == 4  # the base only


def test_no_render_cache_writes_nothing(pytester, write_lora):
    run(pytester, "--adapter", write_lora("kohya", "good.safetensors"), *ARGS, "--no-render-cache", "-k", "wiring")
    document = results(pytester)
    assert document["render_cache"] == {"folder": None, "hits": 0, "written": 0}
    assert document["settings"]["render_cache"] is None


def test_every_key_part_changes_the_cache_entry(tmp_path):
    key = RenderKey("f" * 16, "a" * 64, 1.0, "a cat", 0, 4, 7.5, 64, "DDIM:{}", "cpu", "torch.float32")
    changed = {
        "base_fingerprint": "0" * 16,
        "adapter_sha256": None,
        "scale": 0.0,
        "prompt": "a dog",
        "seed": 1,
        "steps": 5,
        "guidance_scale": 5.0,
        "size": 32,
        "scheduler": "Euler:{}",
        "device": "cuda:0",
        "dtype": "torch.float16",
        "frames": 9,
        "harness_version": "0.0.0",
    }
    assert set(changed) == set(key.__dict__)
    cache = RenderCache(tmp_path)
    cache.put(key, CachedRender(np.full((8, 8, 3), 7, np.uint8), True, ["layer"]))
    for field, value in changed.items():
        assert cache.get(RenderKey(**{**key.__dict__, field: value})) is None, field
    hit = cache.get(key)
    assert (hit.image == 7).all() and hit.finite and hit.layers_run == ["layer"]


def test_a_damaged_entry_is_rendered_again(tmp_path):
    key = RenderKey("f" * 16, None, 1.0, "a cat", 0, 4, 7.5, 64, "DDIM:{}", "cpu", "torch.float32")
    cache = RenderCache(tmp_path)
    cache.put(key, CachedRender(np.zeros((8, 8, 3), np.uint8), True, []))
    (entry,) = tmp_path.rglob("*.png")
    entry.write_bytes(entry.read_bytes()[:20])
    assert cache.get(key) is None and cache.hits == 0


def test_progress_shows_on_the_terminal_and_stays_quiet_under_q(pytester, write_lora):
    adapter = write_lora("kohya", "good.safetensors")
    shown = run(pytester, "--adapter", adapter, *ARGS, "--no-render-cache", "-k", "wiring")
    shown.stdout.fnmatch_lines(["[[]lora-harness[]] rendering base: 4 images, 2 steps, 64px"])
    quiet = run(pytester, "--adapter", adapter, *ARGS, "--no-render-cache", "-k", "wiring", "-q")
    assert not [line for line in quiet.stdout.lines if line.startswith("[lora-harness]")]


def test_xdist_workers_give_the_serial_runs_records(pytester, write_lora):
    """Two workers, one adapter each: same statuses and values as one process; workers print no progress."""
    adapters = ("--adapter", write_lora("kohya", "a.safetensors"), "--adapter", write_lora("peft", "b"))
    run(pytester, *adapters, *ARGS, "--no-render-cache")
    serial = results(pytester)
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-n",
        "2",
        "--dist",
        "loadgroup",
        *adapters,
        *ARGS,
        "--no-render-cache",
    ]
    completed = subprocess.run(list(map(str, command)), cwd=pytester.path, capture_output=True, text=True)
    parallel = results(pytester)
    assert outcome(parallel) == outcome(serial)
    assert "[lora-harness] rendering" not in completed.stdout
    # each worker renders the base (and the base again) for itself; the adapters' renders are not repeated
    assert parallel["unet_forward_passes"] == serial["unet_forward_passes"] + 2 * STEPS
