"""Every broken or hostile adapter gets one clear answer: its checks fail with a message naming the file and the
fix, the good adapter beside it still passes, nothing is unpickled, and no traceback reaches the user."""

import json
import pickle
import tracemalloc

import pytest
import torch
from safetensors.torch import load_file, save_file

from lora_harness.safetensors_file import DamagedFile, read_header
from tests.expectations import CHECKS, expected_status
from tests.safetensors_bytes import one_tensor_header, raw_file

FAST = ("--reference-steps", "0", "--render-seeds", "1", "--render-steps", "2", "-p", "no:cacheprovider")


class _Marker:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _misspell_half(lora):
    return {(k.replace("attn1", "attn_1") if i % 2 else k): v for i, (k, v) in enumerate(sorted(lora.items()))}


def _match_nothing(lora):
    return {k.replace("transformer_blocks", "blocks"): v for k, v in lora.items()}


def _sd2(lora):
    return {
        k: (torch.randn(a.shape[0], 1024), b) if k.endswith(("attn2.to_k", "attn2.to_v")) else (a, b)
        for k, (a, b) in lora.items()
    }


def _nan(lora):
    first = sorted(lora)[0]
    return {**lora, first: (lora[first][0], torch.full_like(lora[first][1], float("nan")))}


def _ranks_disagree(lora):
    first = sorted(lora)[0]
    return {**lora, first: (lora[first][0], torch.randn(lora[first][1].shape[0], 8))}


def _rename_keys(path, old, new):
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    save_file({k.replace(old, new): v for k, v in tensors.items()}, path)
    return path


def build_bad_adapters(root, write_lora, marker):
    """name -> (path, a fragment the message must hold)."""
    root.mkdir()
    cases = {}

    def raw(name, content, expect):
        path = root / name
        path.write_bytes(content)
        cases[name] = (path, expect)

    cases["missing.safetensors"] = (root / "missing.safetensors", "no such file or folder")
    (root / "empty-folder").mkdir()
    cases["empty-folder"] = (root / "empty-folder", "no adapter weights found")
    raw("empty.safetensors", b"", "the file is empty (0 bytes)")
    good_bytes = write_lora("kohya", "source.safetensors").read_bytes()
    raw("truncated.safetensors", good_bytes[: len(good_bytes) // 2], "truncated: the header promises")
    raw("huge-header.safetensors", raw_file(b"{}", header_size=2**60), "the header promises 1152921504606846976 bytes")
    raw("not-json.safetensors", raw_file(b"\xff\xfe not json"), "the header is not valid JSON")
    raw("json-list.safetensors", raw_file([1, 2, 3]), "the header is not a JSON object")
    raw(
        "outside.safetensors",
        raw_file(one_tensor_header(offsets=(0, 512)), b"\0" * 100),
        "truncated: the header promises 512 bytes",
    )
    overlapping = {
        **one_tensor_header("unet.a.lora_A.weight"),
        **one_tensor_header("unet.a.lora_B.weight", offsets=(256, 768)),
    }
    raw("overlapping.safetensors", raw_file(overlapping, b"\0" * 768), "overlaps the tensor before it")
    raw("unknown-dtype.safetensors", raw_file(one_tensor_header(dtype="F42"), b"\0" * 512), "unknown dtype 'F42'")
    for suffix in (".bin", ".pt", ".ckpt", ".pth"):
        raw(f"evil{suffix}", pickle.dumps({"w": _Marker(marker)}), "pickle-based checkpoint")
    bin_only = root / "peft-bin-only"
    bin_only.mkdir()
    (bin_only / "adapter_config.json").write_text("{}")
    (bin_only / "adapter_model.bin").write_bytes(pickle.dumps({"w": _Marker(marker)}))
    cases["peft-bin-only"] = (bin_only, "pickle-based checkpoint")
    broken_config = write_lora("peft", "config-not-json")
    (broken_config / "adapter_config.json").write_text("{not json")
    cases["config-not-json"] = (broken_config, "adapter_config.json: not valid JSON")
    foreign_targets = write_lora("peft", "config-foreign-targets")
    config = json.loads((foreign_targets / "adapter_config.json").read_text())
    (foreign_targets / "adapter_config.json").write_text(json.dumps({**config, "target_modules": ["query", "value"]}))
    cases["config-foreign-targets"] = (
        foreign_targets,
        "target_modules names modules the base's unet lacks: query, value",
    )
    cases["nothing.safetensors"] = (
        write_lora("peft-file", "nothing.safetensors", edit=_match_nothing),
        "none of its 64 LoRA tensors matches",
    )
    cases["half.safetensors"] = (
        write_lora("kohya", "half.safetensors", edit=_misspell_half),
        "48 of 64 LoRA tensors applied",
    )
    cases["sd2"] = (
        write_lora("diffusers", "sd2", edit=_sd2).parent,
        "made for SD2.x (cross-attention 1024), but the base is tiny SD1.x (cross-attention 32)",
    )
    cases["ranks.safetensors"] = (
        write_lora("kohya", "ranks.safetensors", edit=_ranks_disagree),
        "down and up ranks disagree",
    )
    cases["nan"] = (write_lora("peft", "nan", edit=_nan), "hold NaN or Inf")
    cases["zero-b.safetensors"] = (
        write_lora("peft-file", "zero-b.safetensors", zero_b=True),
        "every up matrix (lora_B / lora_up) is all zero",
    )
    cases["loha-incomplete.safetensors"] = (_loha_without_a_factor(root), "LyCORIS could not build its LoHa module")
    dora = _rename_keys(write_lora("kohya", "dora.safetensors"), ".alpha", ".dora_scale")
    cases["dora.safetensors"] = (dora, "dora_scale has shape [], but a LoRA matrix is 2-D")
    return cases


def _loha_without_a_factor(folder):
    """A LoHa written by LyCORIS with one module's last factor cut out: LyCORIS cannot build that module."""
    from lora_harness.bases.tiny_base import build_tiny_pipeline
    from lora_harness.fixtures.adapter_writers import write_lycoris

    path = write_lycoris(build_tiny_pipeline(), folder / "loha-incomplete.safetensors", "loha")
    tensors = load_file(path)
    del tensors[sorted(k for k in tensors if k.endswith(".hada_w2_b"))[0]]
    save_file(tensors, path)
    return path


def test_every_bad_adapter_fails_every_check_with_a_message_naming_it(pytester, write_lora, tmp_path):
    marker = tmp_path / "unpickled.marker"
    cases = build_bad_adapters(tmp_path / "bad", write_lora, marker)
    good = write_lora("kohya", "good.safetensors")
    args = [a for path, _ in cases.values() for a in ("--adapter", path)]
    result = pytester.runpytest_inprocess("--adapter", good, *args, *FAST)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert not marker.exists()
    assert "Traceback" not in result.stdout.str()
    document = json.loads((pytester.path / "lora-report" / "results.json").read_text())
    records = {(r["adapter"], r["check"]): r for r in document["results"]}
    assert all(records[("good.safetensors", check)]["status"] == expected_status(check) for check in CHECKS)
    for name, (_, expect) in cases.items():
        for check in CHECKS:
            record = records[(name, check)]
            assert record["status"] in ("failed", "error"), (name, check, record)
            assert name in record["message"], (name, check, record["message"])
            assert expect in record["message"], (name, check, record["message"])
    assert document["run"]["status"] == "complete" and document["run"]["not_finished"] == []


def test_a_multi_gigabyte_header_check_reads_only_the_header(tmp_path):
    """A sparse 4 GiB file: its header is checked without reading the data or holding more than a few MB."""
    path = tmp_path / "huge.safetensors"
    header = raw_file(one_tensor_header("unet.x.lora_A.weight", shape=(2**30,), offsets=(0, 2**32)))
    path.write_bytes(header)
    with path.open("r+b") as handle:
        handle.truncate(len(header) + 2**32)
    tracemalloc.start()
    parsed = read_header(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert parsed["unet.x.lora_A.weight"]["shape"] == [2**30]
    assert peak < 4 * 2**20


@pytest.mark.parametrize(
    "content, expect",
    [
        (
            raw_file({**one_tensor_header(), "__metadata__": {"a": 1}}, b"\0" * 512),
            "`__metadata__` must map names to strings",
        ),
        (raw_file({"unet.x": {"dtype": "F32"}}), "lacks dtype, shape or data_offsets"),
        (raw_file(one_tensor_header(shape=(4, -1)), b"\0" * 512), "malformed shape"),
        (raw_file(one_tensor_header(offsets=(0, 100)), b"\0" * 100), "does not fill bytes 0-100"),
        (raw_file(one_tensor_header(offsets=(512, 0)), b"\0" * 512), "run backwards"),
        (raw_file(one_tensor_header(), b"\0" * 600), "88 bytes after the last tensor belong to none"),
    ],
)
def test_malformed_headers(tmp_path, content, expect):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(DamagedFile, match="bad.safetensors") as error:
        read_header(path)
    assert expect in str(error.value)


def test_ctrl_c_leaves_a_valid_report_of_what_finished(pytester, write_lora):
    pytester.makeconftest(
        """
        def pytest_lora_check_result(result, adapter):
            if result.check == "pixel_diff":
                raise KeyboardInterrupt
        """
    )
    recorder = pytester.inline_run("--adapter", write_lora("kohya", "good.safetensors"), *FAST, no_reraise_ctrlc=True)
    assert recorder.ret == pytest.ExitCode.INTERRUPTED
    document = json.loads((pytester.path / "lora-report" / "results.json").read_text())
    assert document["run"]["status"] == "interrupted"
    assert {(r["check"], r["status"]) for r in document["results"]} == {
        ("wiring", "passed"),
        ("param_budget", "passed"),
    }
    assert document["run"]["not_finished"] == [{"adapter": "good.safetensors", "check": c} for c in CHECKS[2:]]
