"""The plugin as users run it: real pytest sessions through pytester, judged by exit code, output and results.json."""

import pytest

from tests.expectations import (
    CHECKS,
    CLIP_CHECKS,
    NEEDS_CORPUS,
    PASSING,
    SKIPPING,
    WITHOUT_CLIP_CHECKS,
    expected_status,
)
from tests.helpers import results, run

FAST = ("--reference-steps", "0", "--render-seeds", "1", "--render-steps", "2")


def statuses(document):
    return {(r["adapter"], r["check"]): r["status"] for r in document["results"]}


def test_help_shows_the_option_group(pytester):
    result = run(pytester, "--help")
    result.stdout.fnmatch_lines(
        ["*LoRA adapter validation (lora-harness)*", "*--adapter=PATH*", "*--param-budget=BUDGET*"]
    )
    result.stdout.fnmatch_lines(["*lora_diff_floor*"])


def test_without_adapter_the_plugin_adds_nothing(pytester):
    result = run(pytester)
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    assert not (pytester.path / "lora-report").exists()


def _files(**contents):
    """A setup step that writes files (bytes or text) into the run's folder."""

    def write(folder):
        for name, content in contents.items():
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)

    return write


@pytest.mark.parametrize(
    "args, setup, message",
    [
        (("--render-size", "30"), None, "*render size must be a positive multiple of 8*'30'*"),
        (("--render-steps", "-1"), None, "*--render-steps must be at least 1*"),
        (("--param-budget", "lots"), None, "*parameter budget must be a count*"),
        (("--base-model", "./no-such-folder"), None, "*--base-model ./no-such-folder: no such folder*"),
        (
            ("--base-model", "nobody/not-cached", "--offline"),
            None,
            "*not in the local Hugging Face cache, and --offline keeps lora-harness off the network*"
            "hf download nobody/not-cached*",
        ),
        (
            ("--base-model", "weights"),
            _files(**{"weights/unet/x.bin": "x"}),
            "*has no model_index.json, so it is not a diffusers pipeline*",
        ),
        (
            ("--base-model", "pixart"),
            _files(**{"pixart/model_index.json": '{"_class_name": "PixArtAlphaPipeline"}'}),
            "*a PixArtAlphaPipeline has no LoRA loader in diffusers*no LoRA adapter can be applied to it*",
        ),
        (
            ("--base-model", "img2img"),
            _files(**{"img2img/model_index.json": '{"_class_name": "FluxImg2ImgPipeline"}'}),
            "*a FluxImg2ImgPipeline renders from an image as well as a prompt*ChromaPipeline (Chroma)*"
            "and any other text-to-image or text-to-video pipeline diffusers loads LoRAs into*",
        ),
        (
            ("--base-model", "qwen"),
            _files(**{"qwen/model_index.json": '{"_class_name": "QwenImagePipeline"}'}),
            "*qwen/model_index.json names no denoiser (unet or transformer)*save the whole pipeline*",
        ),
        (
            ("--base-model", "t2v-sd"),
            _files(**{"t2v-sd/model_index.json": '{"_class_name": "TextToVideoSDPipeline", "unet": []}'}),
            "*a TextToVideoSDPipeline's call takes no callback_on_step_end, which lora-harness renders every image with*",
        ),
        (
            ("--base-model", "made-up"),
            _files(**{"made-up/model_index.json": '{"_class_name": "MadeUpPipeline"}'}),
            "*a MadeUpPipeline is no pipeline class diffusers*has*",
        ),
        (("--prompts", "none.txt"), None, "*--prompts none.txt: no such file*"),
        (("--prompts", "empty.txt"), _files(**{"empty.txt": "\n  \n"}), "*--prompts empty.txt: the file is empty*"),
        (
            ("--prompts", "binary.txt"),
            _files(**{"binary.txt": b"\xff\xfe\x00bad"}),
            "*--prompts binary.txt: cannot be read*UTF-8*",
        ),
    ],
)
def test_bad_options_are_usage_errors_before_any_model_loads(pytester, args, setup, message):
    if setup is not None:
        setup(pytester.path)
    result = run(pytester, "--adapter", "x.safetensors", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
    assert "loading base model" not in result.stdout.str()


def test_every_layout_passes_and_results_json_keeps_its_schema(pytester, write_lora):
    from lora_harness.fixtures.adapter_writers import LAYOUTS

    paths = [
        write_lora(layout, layout if layout in ("peft", "diffusers") else f"{layout}.safetensors", alpha=8)
        for layout in LAYOUTS
    ]
    result = run(pytester, *[a for p in paths for a in ("--adapter", p)], *FAST, *WITHOUT_CLIP_CHECKS)
    result.assert_outcomes(passed=PASSING * len(LAYOUTS), skipped=len(NEEDS_CORPUS) * len(LAYOUTS))
    result.stdout.fnmatch_lines(["*lora-harness*", "check*wiring*frozen_base*param_budget*pixel_diff*"])
    document = results(pytester)
    assert document["schema"] == 1 and document["harness_version"]
    assert set(document["base"]) >= {"model", "family", "fingerprint", "unet_params", "denoiser_params"}
    assert document["base"]["denoiser_params"] == document["base"]["unet_params"]
    assert document["base"]["unet_params"] == 792_964
    assert document["settings"]["render_steps"] == 2 and document["settings"]["diff_floor"] == 0.5
    assert document["unet_forward_passes"] > 0
    assert document["controls"]["status"] == "skipped"
    assert all(r["status"] == expected_status(r["check"]) for r in document["results"])
    by_name = {a["name"]: a for a in document["adapters"]}
    assert set(by_name) == {p.name for p in paths}
    for adapter in by_name.values():
        assert adapter["tensors"] == adapter["tensors_applied"] == 64
        assert adapter["lora_params"] == 9984 and adapter["rank"] == 4 and len(adapter["sha256"]) == 64
    assert by_name["pytorch_lora_weights.safetensors"]["scale"] == 2.0  # alpha 8 / rank 4, from the metadata
    assert by_name["kohya.safetensors"]["scale"] == 2.0
    assert by_name["attn-procs.safetensors"]["scale"] == 1.0
    for result_record in document["results"]:
        assert set(result_record) >= {
            "adapter",
            "check",
            "status",
            "value",
            "threshold",
            "message",
            "details",
            "duration_s",
        }


def test_each_check_catches_the_defect_it_exists_for(pytester, write_lora):
    """Each check's own measurement catches its bad adapter (test_bad_input covers every kind of broken file)."""

    def misspell_half(lora):
        return {(k.replace("attn1", "attn_1") if i % 2 else k): v for i, (k, v) in enumerate(sorted(lora.items()))}

    adapters = {
        "good.safetensors": write_lora("kohya", "good.safetensors"),
        "zero-b.safetensors": write_lora("peft-file", "zero-b.safetensors", zero_b=True),
        "half.safetensors": write_lora("kohya", "half.safetensors", edit=misspell_half),
        "rank16.safetensors": write_lora("kohya", "rank16.safetensors", rank=16),
    }
    result = run(pytester, *[a for p in adapters.values() for a in ("--adapter", p)], *FAST, *WITHOUT_CLIP_CHECKS)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    records = {(r["adapter"], r["check"]): r for r in results(pytester)["results"]}
    checks = [c for c in CHECKS if c not in CLIP_CHECKS]
    assert all(records[("good.safetensors", check)]["status"] == expected_status(check) for check in checks)
    # wiring: the values prove 16 of 64 tensors never landed, though every LoRA layer was created
    half = records[("half.safetensors", "wiring")]
    assert (half["status"], half["value"], half["threshold"]) == ("failed", 48, 64)
    assert "nearest: " in half["message"]
    # pixel_diff: an untrained adapter changes no pixel, and the determinism control was measured
    zero = records[("zero-b.safetensors", "pixel_diff")]
    assert zero["status"] == "failed" and zero["value"] == 0.0 and zero["details"]["determinism_control"] == 0.0
    assert "pixel_diff measured: mean |adapted - base| = 0.0000" in zero["message"]
    # param_budget: a rank blow-up fails the budget alone; the adapter is otherwise sound
    rank16 = {check: records[("rank16.safetensors", check)] for check in checks}
    assert rank16["param_budget"]["status"] == "failed" and rank16["param_budget"]["value"] == 4 * 9984
    # rank 16 x (in + out) per projection; the mid block is 64 wide, cross-attention keys read 32-wide text
    per_block = {
        "down/attn1": 4096,
        "down/attn2": 4096,
        "mid/attn1": 8192,
        "mid/attn2": 7168,
        "up/attn1": 8192,
        "up/attn2": 8192,
    }
    assert rank16["param_budget"]["details"]["per_block"] == per_block
    assert {c: r["status"] for c, r in rank16.items() if c != "param_budget"} == {
        c: expected_status(c) for c in checks if c != "param_budget"
    }
    result.stdout.fnmatch_lines(
        ["*_ test_wiring?half.safetensors? _*", "half.safetensors wiring: *48 of 64 LoRA tensors applied*"]
    )


def test_frozen_base_fails_when_the_base_is_changed(pytester, write_lora):
    """A deployment that fuses the adapter into the base weights (as `fuse_lora` does) must fail frozen_base."""
    pytester.makeconftest(
        """
        def pytest_lora_adapter_loaded(harness, adapter):
            harness.base.pipeline.fuse_lora(adapter_names=[adapter.spec.slot])
        """
    )
    result = run(pytester, "--adapter", write_lora("kohya", "fused.safetensors"), *FAST)
    status = statuses(results(pytester))
    assert status[("fused.safetensors", "frozen_base")] == "failed"
    result.stdout.fnmatch_lines(["*frozen_base*base parameters changed after rendering*"])


def test_reference_and_controls(pytester, write_lora):
    result = run(
        pytester,
        "--adapter",
        "reference",
        "--adapter",
        write_lora("kohya", "good.safetensors"),
        "--render-seeds",
        "1",
        *WITHOUT_CLIP_CHECKS,
    )
    result.assert_outcomes(passed=2 * PASSING, skipped=2 * len(NEEDS_CORPUS))
    result.stdout.fnmatch_lines(
        [
            "*training the reference overfit: 30 steps*",
            "*reference overfit: loss *",
            "*controls (reference overfit vs untrained): passed*",
        ]
    )
    document = results(pytester)
    assert document["controls"]["status"] == "passed"
    assert len(document["controls"]["details"]["reference_losses"]) == 30
    assert document["controls"]["details"]["control-untrained/pixel_diff"]["status"] == "failed"
    reference = next(a for a in document["adapters"] if a["name"] == "reference")
    assert reference["format"] == "peft" and reference["tensors_applied"] == reference["tensors"] == 64
    assert (pytester.path / "lora-report" / "reference" / "adapter_config.json").is_file()


def test_failing_controls_turn_verdicts_into_errors(pytester, write_lora):
    """With a floor no adapter can clear, the reference fails: no user adapter may pass a render-based check."""
    args = ("--adapter", "reference", "--adapter", write_lora("kohya", "good.safetensors"), "--render-seeds", "1")
    result = run(pytester, *args, "--diff-floor", "200", "--reference-steps", "5")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    document = results(pytester)
    status = statuses(document)
    assert document["controls"]["status"] == "failed"
    assert status[("good.safetensors", "pixel_diff")] == "error"
    assert status[("good.safetensors", "wiring")] == "error"
    assert status[("good.safetensors", "param_budget")] == "passed"


def test_select_with_k_and_write_junit(pytester, write_lora):
    result = run(
        pytester,
        "--adapter",
        write_lora("kohya", "good.safetensors"),
        *FAST,
        "-k",
        "pixel_diff",
        "--junitxml",
        "out.xml",
    )
    result.assert_outcomes(passed=1)
    assert [r["check"] for r in results(pytester)["results"]] == ["pixel_diff"]
    assert 'name="test_pixel_diff[good.safetensors]"' in (pytester.path / "out.xml").read_text()


def test_reference_steps_zero_skips_the_reference_and_says_why(pytester):
    result = run(pytester, "--adapter", "reference", *FAST)
    result.assert_outcomes(skipped=len(CHECKS))
    document = results(pytester)
    assert {r["status"] for r in document["results"]} == {"skipped"}
    assert all("--reference-steps 0" in r["message"] for r in document["results"])


def test_a_crash_inside_a_check_is_an_error_record_in_a_valid_report(pytester, write_lora):
    pytester.makeconftest(
        """
        def pytest_lora_render(harness, slot, scale, jobs, watch, on_step):
            raise RuntimeError("out of memory while rendering")
        """
    )
    result = run(pytester, "--adapter", write_lora("kohya", "good.safetensors"), *FAST)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    document = results(pytester)
    assert statuses(document)[("good.safetensors", "pixel_diff")] == "error"
    assert "out of memory while rendering" in next(
        r["message"] for r in document["results"] if r["check"] == "pixel_diff"
    )
    assert statuses(document)[("good.safetensors", "param_budget")] == "passed"


def test_runs_under_xdist(pytester, write_lora):
    """Each adapter's checks stay on one worker (--dist loadgroup); the records merge into one results.json."""
    paths = [write_lora("kohya", "a.safetensors"), write_lora("peft", "b")]
    args = ("-p", "no:cacheprovider", "-n", "2", "--dist", "loadgroup", "-v")
    result = pytester.runpytest_subprocess(*args, *[a for p in paths for a in ("--adapter", p)], *FAST)
    result.assert_outcomes(passed=2 * PASSING, skipped=2 * len(SKIPPING))
    document = results(pytester)
    assert len(document["results"]) == 2 * len(CHECKS) and document["unet_forward_passes"] > 0
    assert document["base"]["fingerprint"]
    workers = {
        adapter: {
            line.split("]")[0] for line in result.stdout.lines if line.startswith("[gw") and f"[{adapter}" in line
        }
        for adapter in ("a.safetensors", "b")
    }
    assert all(len(seen) == 1 for seen in workers.values()), workers


def test_base_from_a_local_folder_and_from_the_hub_cache(pytester, monkeypatch, write_lora, tmp_path):
    """A saved pipeline loads as a folder and as a hub id resolved from the local cache with `--offline`, which never
    asks the network (tests/test_hub_fetch.py fetches through a local Hub)."""
    from lora_harness.bases.tiny_base import build_tiny_pipeline

    cache = tmp_path / "hub-cache"
    snapshot = cache / "models--someone--tiny-sd" / "snapshots" / "0123abcd"
    build_tiny_pipeline().save_pretrained(snapshot)
    (cache / "models--someone--tiny-sd" / "refs").mkdir()
    (cache / "models--someone--tiny-sd" / "refs" / "main").write_text("0123abcd")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))  # read at call time
    adapter = write_lora("kohya", "good.safetensors")
    for base in (snapshot, "someone/tiny-sd"):
        result = run(pytester, "--adapter", adapter, "--base-model", base, "--offline", *FAST)
        # A real base is scored with the default CLIP; offline and not cached, the CLIP checks skip saying what to fetch.
        result.assert_outcomes(passed=PASSING, skipped=len(SKIPPING))
        document = results(pytester)
        clip_skips = [r["message"] for r in document["results"] if r["check"] in CLIP_CHECKS]
        assert (
            all("hf download timm/vit_large_patch14_clip_224.openai" in m for m in clip_skips) and len(clip_skips) == 2
        )
        assert document["base"]["model"] == str(base) and document["base"]["family"] == "tiny SD1.x"
        assert document["base"]["unet_params"] == 792_964


class _BaseSpy:
    """A plugin that keeps a weak reference to the base a run loaded, to see whether the base outlives the run."""

    def __init__(self):
        self.bases = []

    def pytest_lora_adapter_loaded(self, harness, adapter):
        import weakref

        self.bases.append(weakref.ref(harness.base.pipeline.unet))


def test_a_run_in_process_leaves_nothing_frozen_and_frees_its_base(tmp_path, monkeypatch, write_lora):
    """The base is frozen out of the garbage collector's sight while the run lasts (pytest's own last collections
    skip it); the run's end releases it, so a process that calls pytest.main again does not keep the old base.
    pytest.main itself, as a notebook or a script calls it (pytester's records would hold the run's objects)."""
    import gc

    monkeypatch.chdir(tmp_path)
    spy = _BaseSpy()
    adapter = str(write_lora("kohya", "a.safetensors"))
    args = ["-q", "-p", "no:cacheprovider", "--adapter", adapter, *FAST, "-k", "wiring", "--rootdir", str(tmp_path)]
    assert pytest.main(args, plugins=[spy]) == pytest.ExitCode.OK
    assert gc.get_freeze_count() == 0
    assert len(spy.bases) == 1 and spy.bases[0]() is None  # collected by the run's own end, not by this test
