"""What the test modules share: how a run is started and read back (results.json), the option sets most runs
use, facts several modules count with, and writers of inputs more than one module needs. Test modules import from
here, never from each other."""

import json

import numpy as np
import torch

# The checks without a reference overfit, at two render steps: every seed, as the distribution checks need them.
FAST_ALL_SEEDS = ("--reference-steps", "0", "--render-steps", "2", "-p", "no:cacheprovider")
FAST = (*FAST_ALL_SEEDS, "--render-seeds", "1")
MECHANICAL = ("-k", "wiring or frozen_base or param_budget or pixel_diff or weight_health")
UNET_MODULES = 722  # SDXL's: every linear of its 11 transformers (70 transformer blocks), as sd-scripts trains them


def wiring_failure(pytester, adapter, base: str | None = None) -> str:
    """`wiring` alone on one adapter (on `--base-model base` when given), as a user runs it: it fails; its message."""
    on_base = ("--base-model", base) if base else ()
    pytester.runpytest_inprocess("--adapter", adapter, *on_base, *FAST, "-k", "wiring").assert_outcomes(failed=1)
    (record,) = [record for (_, check), record in records(pytester).items() if check == "wiring"]
    return record["message"]


def run(pytester, *args):
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", *map(str, args))


def results(pytester):
    return json.loads((pytester.path / "lora-report" / "results.json").read_text())


def records(pytester):
    return {
        (r["adapter"], r["check"]): r
        for r in json.loads((pytester.path / "lora-report" / "results.json").read_text())["results"]
    }


def write_tinted_corpora(folder, count: int) -> None:
    """folder/red and folder/blue: `count` noise images each, tinted 70% toward the colour."""
    from PIL import Image

    rng = np.random.default_rng(count)
    for name, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
        (folder / name).mkdir()
        for i in range(count):
            noise = rng.integers(0, 255, (64, 64, 3))
            Image.fromarray((0.3 * noise + 0.7 * np.array(colour)).astype(np.uint8)).save(folder / name / f"{i}.png")


def modules_to_save_folder(folder, saved=("conv_out", "time_embedding"), moved=0.05, lora_b=0.0):
    """A LoRA on the attention projections saved by peft with `modules_to_save`: whole modules, trained (here moved
    by seeded noise of size `moved`), which replace the base's. B at `lora_b` (peft starts it at zero)."""
    from peft import LoraConfig, get_peft_model

    from lora_harness.bases.tiny_base import build_tiny_pipeline

    config = LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], modules_to_save=saved)
    model = get_peft_model(build_tiny_pipeline().unet, config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "modules_to_save" in name:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * moved)
            elif "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * lora_b)
    model.save_pretrained(folder)
    saved_params = sum(p.numel() for n, p in model.named_parameters() if "modules_to_save" in n)
    lora_params = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    return folder, saved_params, lora_params


# Interleaves the adapters' checks (a plugin reordering items, or xdist's plain `load` distribution, does this): each
# adapter is then unloaded after every check and loaded again before its next.
INTERLEAVING = """
def pytest_collection_modifyitems(items):
    def adapter(item):
        return item.callspec.params["adapter_spec"].name

    first = [item for item in items if adapter(item) == "first.safetensors"]
    second = [item for item in items if adapter(item) != "first.safetensors"]
    items[:] = [item for pair in zip(first, second) for item in pair]
"""


def offloaded_config(tmp_path, device: str):
    from lora_harness.config.config import HarnessConfig
    from lora_harness.config.options import ParamBudget

    return HarnessConfig(
        adapters=(),
        base_model="tiny",
        base_path=None,
        render_size=None,
        render_steps=1,
        render_seeds=1,
        render_batch_size=1,
        prompts=("a cat",),
        reference_steps=0,
        report_dir=tmp_path,
        device=device,
        param_budget=ParamBudget(percent=2),
        diff_floor=0.5,
        offload_requested=True,
        offload=True,
    )
