"""Every algo LyCORIS writes, written by LyCORIS's own Kohya network (what sd-scripts runs with `--network_module
lycoris.kohya --network_args algo=…`) or its `create_lycoris` wrapper (what SimpleTuner runs, `lycoris_` names),
applied by LyCORIS itself and proven: every tensor in the module LyCORIS built, at the scale the file declares."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.helpers import FAST, MECHANICAL, records, results

# file -> (LyCORIS's network arguments, the kind recorded, the scale alpha / rank gives: rank 4, alpha 8 unless set)
ALGOS = {
    "loha": ({"algo": "loha"}, "LoHa", 2.0),
    "lokr": ({"algo": "lokr"}, "LoKr", 1.0),  # both Kronecker factors full: LyCORIS applies them at 1
    # LoKr on every block with a fixed factor: per-layer factorisations peft's one decompose_factor cannot build
    "lokr-factor-4": ({"algo": "lokr", "preset": "blocks", "factor": 4, "conv_dim": 4, "conv_alpha": 2}, "LoKr", 1.0),
    "lokr-dora": ({"algo": "lokr", "rank": 2, "dora_wd": True}, "LoKr (DoRA)", 4.0),
    "locon-tucker": (
        {"algo": "locon", "preset": "blocks", "conv_dim": 4, "conv_alpha": 8, "use_tucker": True},
        "LoCon+LoCon (Tucker)",  # Tucker only where the kernel is 3x3
        2.0,
    ),
    "loha-tucker": (
        {"algo": "loha", "preset": "blocks", "conv_dim": 4, "conv_alpha": 8, "use_tucker": True},
        "LoHa+LoHa (Tucker)",
        2.0,
    ),
    "ia3": ({"algo": "ia3"}, "(IA)³", 1.0),  # (IA)³, OFT, full and norms apply at LyCORIS's multiplier alone
    "glora": ({"algo": "glora"}, "GLoRA", 2.0),
    "diag-oft": ({"algo": "diag-oft"}, "Diag-OFT", 1.0),
    "boft": ({"algo": "boft"}, "BOFT", 1.0),
    "full": ({"algo": "full"}, "full", 1.0),
    "norms": ({"algo": "locon", "preset": "blocks", "train_norm": True}, "LoCon+norms", 2.0),
}


@pytest.fixture(scope="module")
def algo_files(tmp_path_factory):
    from lycoris import LycorisNetwork, create_lycoris

    from lora_harness.bases.tiny_base import build_tiny_pipeline
    from lora_harness.fixtures.adapter_writers import write_lycoris

    folder = tmp_path_factory.mktemp("lycoris-algos")
    pipeline = build_tiny_pipeline()
    files = {
        name: write_lycoris(pipeline, folder / f"{name}.safetensors", **args) for name, (args, *_) in ALGOS.items()
    }
    LycorisNetwork.apply_preset({"target_module": ["Attention"]})
    network = create_lycoris(build_tiny_pipeline().unet, 1.0, linear_dim=4, linear_alpha=2, algo="loha")
    network.apply_to()
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(3)) * 0.5)
    network.save_weights(str(folder / "own-prefix.safetensors"), torch.float32, {})
    files["own-prefix"] = folder / "own-prefix.safetensors"
    return files


def test_every_lycoris_algo_lands_whole_at_its_scale_and_passes_the_mechanical_checks(pytester, algo_files):
    adapters = [a for path in algo_files.values() for a in ("--adapter", path)]
    # Seeded factors, not trained ones: a 1x1 conv's ΔW and a Tucker 3x3's in one block differ by construction.
    lenient = ("--param-budget", "100%", "--norm-outlier-k", "10")
    result = pytester.runpytest_inprocess(*adapters, *FAST, *MECHANICAL, *lenient)
    result.assert_outcomes(passed=5 * len(algo_files))
    applied = {a["name"].removesuffix(".safetensors"): a for a in results(pytester)["adapters"]}
    for name, (_, kind, scale) in ALGOS.items():
        adapter = applied[name]
        tensors = [k for k in load_file(algo_files[name]) if not k.endswith(".alpha")]
        assert adapter["tensors_applied"] == adapter["tensors"] == len(tensors), name
        assert (adapter["format"], adapter["kind"], adapter["scale"]) == ("lycoris", kind, scale), name
        assert adapter["lora_params"] > 0 and adapter["details"]["target_modules"] > 0, name
    own = applied["own-prefix"]
    assert (own["format"], own["kind"], own["scale"]) == ("lycoris-prefixed", "LoHa", 0.5)  # alpha 2 / rank 4
    assert own["tensors_applied"] == own["tensors"] == 4 * 32  # four factors on each U-Net attention projection
    wiring = records(pytester)
    for name in ALGOS:  # every module LyCORIS built ran, and scale 0 rendered the base exactly (DoRA aside)
        details = wiring[(f"{name}.safetensors", "wiring")]["details"]
        assert details["lora_layers_run"] == details["lora_layers"] > 0, name
        if "DoRA" not in ALGOS[name][1]:
            assert details["scale_zero_mean_abs_diff"] == 0.0, name


def test_lokr_files_in_the_factor_order_older_lycoris_wrote_are_applied_from_their_own_factors(
    pytester, algo_files, tmp_path
):
    """LyCORIS 4's LoKr constructor puts the smaller Kronecker factor first; versions before it stored the other order,
    which ComfyUI and AUTOMATIC1111 apply as kron(w1, w2) all the same. Laid out that way (both factors full; w2
    decomposed into w2_a · w2_b), each file lands whole beside the one 4.1.3 writes, and every layer adds
    kron(w1, w2) · alpha / rank computed here from the stored factors."""
    from lora_harness.bases.tiny_base import build_tiny_pipeline
    from lora_harness.loading.adapter_file import read_adapter
    from lora_harness.loading.lycoris_modules import build_network, file_modules

    full = load_file(algo_files["lokr"])
    for w1 in [key for key in full if key.endswith(".lokr_w1")]:
        w2 = w1.replace("_w1", "_w2")
        full[w1], full[w2] = full[w2], full[w1]
    assert any(full[w1].shape[0] > full[w1.replace("_w1", "_w2")].shape[0] for w1 in full if w1.endswith("_w1"))
    save_file(full, tmp_path / "lokr-older-full.safetensors")
    decomposed = load_file(algo_files["lokr-factor-4"])
    generator = torch.Generator().manual_seed(4)
    for w2_a in [key for key in decomposed if key.endswith(".lokr_w2_a") and "_attn" in key]:  # Linear layers
        module = w2_a.removesuffix(".lokr_w2_a")
        (a, c), (b, rank) = decomposed[f"{module}.lokr_w1"].shape, decomposed[w2_a].shape
        d = decomposed[f"{module}.lokr_w2_b"].shape[1]  # the layer is (a·b) × (c·d): now w1 (b, d), w2 (a, c)
        decomposed[f"{module}.lokr_w1"] = torch.randn(b, d, generator=generator) / b
        decomposed[w2_a] = torch.randn(a, rank, generator=generator)
        decomposed[f"{module}.lokr_w2_b"] = torch.randn(rank, c, generator=generator)
    save_file(decomposed, tmp_path / "lokr-older-decomposed.safetensors")
    files = [tmp_path / "lokr-older-full.safetensors", tmp_path / "lokr-older-decomposed.safetensors"]

    given = [a for path in [*files, algo_files["lokr"]] for a in ("--adapter", path)]
    lenient = ("--param-budget", "100%", "--norm-outlier-k", "10")
    pytester.runpytest_inprocess(*given, *FAST, *MECHANICAL, *lenient).assert_outcomes(passed=15)
    for adapter in results(pytester)["adapters"]:
        assert adapter["tensors_applied"] == adapter["tensors"] > 0 and adapter["kind"] == "LoKr", adapter["name"]

    pipeline = build_tiny_pipeline()
    for path in files:
        stored = file_modules(read_adapter(path))
        built = build_network(pipeline, stored)
        assert built.refused == [] and built.unmatched == []
        for name, module in built.network.modules.items():
            layer, roles = module.org_module[0], stored[built.file_names[name]]
            if not isinstance(layer, torch.nn.Linear):
                continue
            if "lokr_w2" in roles:  # both factors full: LyCORIS applies them at 1
                w2, scale = roles["lokr_w2"], 1.0
            else:
                w2, scale = roles["lokr_w2_a"] @ roles["lokr_w2_b"], float(roles["alpha"]) / roles["lokr_w2_a"].shape[1]
            x = torch.randn(3, layer.in_features, generator=generator)
            with torch.no_grad():
                plain = layer(x)
                with built.network.active(1.0):
                    adapted = layer(x)
            torch.testing.assert_close(adapted - plain, x @ (torch.kron(roles["lokr_w1"], w2) * scale).T)


def test_lycoris_adapters_before_good_ones_change_none_of_their_verdicts(pytester, algo_files, tiny_unet, tmp_path):
    """LyCORIS modules stay off the base but while their adapter renders: a PEFT conv LoRA and a Kohya LoRA after
    every algo (Full's weight differences, OFT's rotations, norms) get exactly the values they get alone."""
    from lora_harness.fixtures.adapter_writers import make_lora, write_adapter

    conv = make_lora(tiny_unet, rank=4, seed=2, targets=("conv1", "conv2", "to_q", "to_v"))
    good = [
        write_adapter("peft", conv, tmp_path / "peft-conv", 4, 4),
        write_adapter("kohya", make_lora(tiny_unet, rank=4, seed=5), tmp_path / "kohya.safetensors", 4, 2),
    ]
    good_args = [a for path in good for a in ("--adapter", path)]
    pytester.runpytest_inprocess(*good_args, *FAST, *MECHANICAL).assert_outcomes(passed=10)
    alone = {key: (r["status"], r["value"]) for key, r in records(pytester).items()}
    before = [
        a for name in ("full", "diag-oft", "norms", "locon-tucker", "ia3") for a in ("--adapter", algo_files[name])
    ]
    pytester.runpytest_inprocess(*before, *good_args, *FAST, *MECHANICAL, "--param-budget", "100%").assert_outcomes(
        passed=35
    )
    after = {key: (r["status"], r["value"]) for key, r in records(pytester).items() if key in alone}
    assert after == alone


def test_a_lycoris_file_that_changes_nothing_or_holds_nan_fails(pytester, algo_files, tmp_path):
    """(IA)³ scales activations by 1 + its weights: all-zero weights change nothing; a NaN weight is a damaged file."""
    tensors = load_file(algo_files["ia3"])
    save_file(
        {k: torch.zeros_like(v) if k.endswith(".weight") else v for k, v in tensors.items()}, tmp_path / "z.safetensors"
    )
    first = sorted(k for k in tensors if k.endswith(".weight"))[0]
    broken = dict(tensors)
    broken[first] = broken[first].clone()
    broken[first][0] = float("nan")
    save_file(broken, tmp_path / "nan.safetensors")
    adapters = ("--adapter", tmp_path / "z.safetensors", "--adapter", tmp_path / "nan.safetensors")
    pytester.runpytest_inprocess(*adapters, *FAST, "-k", "pixel_diff or weight_health or wiring")
    found = records(pytester)
    assert found[("z.safetensors", "pixel_diff")]["status"] == "failed"
    assert "40 of 40 modules (100%) have ΔW ≈ 0" in found[("z.safetensors", "weight_health")]["message"]
    assert found[("z.safetensors", "wiring")]["status"] == "passed"  # it is wired: it only does nothing
    message = found[("nan.safetensors", "wiring")]["message"]
    assert "1 tensors hold NaN or Inf, first " + first in message


def test_an_sdxl_lycoris_file_with_sgm_block_names_lands_as_with_diffusers_names(pytester, tmp_path):
    """sd-scripts names SDXL's U-Net modules after SGM's blocks for LyCORIS files too; diffusers' mapping renames
    them by the base's layout (two layers per block, transformer depths 1/2/10), on a float16 folder."""
    from lora_harness.fixtures.adapter_writers import write_lycoris
    from lora_harness.fixtures.family_bases import save_base, sdxl_layout_pipeline, sgm_name

    pipeline = sdxl_layout_pipeline()
    names = write_lycoris(pipeline, tmp_path / "diffusers-names.safetensors", "lokr", rank=2, alpha=4, factor=4)
    paths = {"lora_unet_" + n.replace(".", "_"): n for n, _ in pipeline.unet.named_modules()}
    layers = pipeline.unet.config.layers_per_block

    def sgm(key):
        module, _, role = key.partition(".")
        if not module.startswith("lora_unet_"):
            return key
        return "lora_unet_" + sgm_name(paths[module], layers).replace(".", "_") + "." + role

    tensors = load_file(names)
    save_file({sgm(k): v for k, v in tensors.items()}, tmp_path / "sgm.safetensors")
    assert any(k.startswith("lora_unet_input_blocks_4_1_") for k in load_file(tmp_path / "sgm.safetensors"))
    base = save_base(pipeline, tmp_path / "base", torch.float16)
    adapters = ("--adapter", tmp_path / "sgm.safetensors", "--adapter", names)
    result = pytester.runpytest_inprocess(*adapters, "--base-model", base, *FAST, "-k", "wiring or pixel_diff")
    result.assert_outcomes(passed=4)
    applied = {a["name"]: a for a in results(pytester)["adapters"]}
    sgm_file, named = applied["sgm.safetensors"], applied["diffusers-names.safetensors"]
    count = len([k for k in tensors if not k.endswith(".alpha")])
    assert sgm_file["tensors_applied"] == named["tensors_applied"] == count
    checks = records(pytester)
    assert (
        checks[("sgm.safetensors", "pixel_diff")]["value"]
        == checks[("diffusers-names.safetensors", "pixel_diff")]["value"]
    )
