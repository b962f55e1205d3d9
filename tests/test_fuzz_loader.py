"""Fuzz the loader: mutated adapter files of every layout either load (and prove what landed) or raise the
harness's own AdapterLoadError naming the file. Nothing else escapes, nothing hangs, nothing is unpickled.

Short run in the suite; the long run (docs/safety.md, "Fuzzing"):
    LORA_FUZZ_EXAMPLES=10000 pytest tests/test_fuzz_loader.py -p no:cacheprovider
"""

import os
import pickle
import shutil
import signal
import struct
from functools import cache, lru_cache
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from lora_harness.bases.families import UNET, Signature
from lora_harness.bases.tiny_base import build_tiny_pipeline
from lora_harness.fixtures.adapter_writers import LAYOUTS, make_lora, write_adapter
from lora_harness.loading.adapter_file import AdapterLoadError, read_adapter
from lora_harness.loading.application import file_defects
from lora_harness.loading.kinds import apply_adapter

EXAMPLES = int(os.environ.get("LORA_FUZZ_EXAMPLES", "40"))
SECONDS_PER_LOAD = 20  # a load of the tiny base's adapter takes well under a second
DTYPES = [torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.int32, torch.uint8, torch.bool]
WORKDIR = Path(os.environ.get("LORA_FUZZ_DIR", "/tmp/lora-harness-fuzz")) / str(os.getpid())


@lru_cache(maxsize=1)
def _pipeline():
    return build_tiny_pipeline()


@cache
def _valid(layout: str) -> Path:
    """A valid adapter of `layout`, written once; examples mutate copies."""
    lora = make_lora(_pipeline().unet, rank=4, seed=1)
    target = WORKDIR / "valid" / (layout if layout in ("peft", "diffusers") else f"{layout}.safetensors")
    return write_adapter(layout, lora, target, 4, 8.0)


def _weights(path: Path) -> Path:
    return path / "adapter_model.safetensors" if path.is_dir() else path


byte_mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 4096), st.integers(0, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 4096), st.just(0)),
    st.tuples(st.just("append"), st.integers(1, 64), st.integers(0, 255)),
    st.tuples(st.just("header_size"), st.integers(0, 2**64 - 1), st.just(0)),
)
tensor_mutation = st.one_of(
    st.tuples(st.just("rename"), st.integers(0, 200), st.text(min_size=0, max_size=12)),
    st.tuples(st.just("reshape"), st.integers(0, 200), st.lists(st.integers(0, 70), min_size=0, max_size=4)),
    st.tuples(st.just("dtype"), st.integers(0, 200), st.sampled_from(range(len(DTYPES)))),
    st.tuples(st.just("drop"), st.integers(0, 200), st.just(None)),
    st.tuples(
        st.just("metadata"),
        st.sampled_from(["lora_adapter_metadata", "ss_network_dim", "format"]),
        st.text(max_size=40),
    ),
)


def _mutate_tensors(path: Path, mutation) -> None:
    kind, index, value = mutation
    tensors = load_file(path)
    metadata = _metadata(path)
    keys = sorted(tensors)
    key = keys[index % len(keys)] if isinstance(index, int) else None
    if kind == "rename":
        tensors[key.replace(key.split(".")[-2] if "." in key else key, value, 1) or "x"] = tensors.pop(key)
    elif kind == "reshape":
        tensors[key] = torch.randn(*value) if value else torch.tensor(1.0)
    elif kind == "dtype":
        tensors[key] = tensors[key].to(DTYPES[value])
    elif kind == "drop":
        del tensors[key]
    elif kind == "metadata":
        metadata[index] = value
    save_file(tensors, path, metadata=metadata)


def _metadata(path: Path) -> dict:
    import json

    with path.open("rb") as handle:
        (size,) = struct.unpack("<Q", handle.read(8))
        return json.loads(handle.read(size)).get("__metadata__", {})


def _mutate_bytes(path: Path, mutation) -> None:
    kind, position, value = mutation
    data = bytearray(path.read_bytes())
    if kind == "flip":
        data[position % len(data)] ^= value or 1
    elif kind == "truncate":
        data = data[: position % len(data)]
    elif kind == "append":
        data += bytes([value]) * position
    else:
        data[:8] = struct.pack("<Q", position)
    path.write_bytes(bytes(data))


def _on_alarm(*_):
    raise TimeoutError(f"a load took more than {SECONDS_PER_LOAD} s")


@pytest.fixture(autouse=True)
def no_unpickling(monkeypatch):
    """Any unpickling anywhere during a load fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the loader tried to unpickle")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)


# The short run in CI is derandomized (the same cases every time); long runs explore.
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=EXAMPLES <= 100,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(layout=st.sampled_from(LAYOUTS), mutation=st.one_of(byte_mutation, tensor_mutation), case=st.integers(0, 2**31))
def test_mutated_adapters_load_or_fail_clearly(layout, mutation, case):
    source = _valid(layout)
    target = WORKDIR / "case" / f"{case}-{source.name}"
    shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, target) if source.is_dir() else shutil.copyfile(source, target)
    if mutation[0] in ("flip", "truncate", "append", "header_size"):
        _mutate_bytes(_weights(target), mutation)
    else:
        _mutate_tensors(_weights(target), mutation)
    _load_or_fail_clearly(target, _pipeline(), Signature(UNET, 32))


TRAINER_FILES = Path(__file__).parent.parent / "fixtures" / "trainer_files"


@lru_cache(maxsize=4)
def _twin(family: str):
    from lora_harness.bases.families import EMBEDDED

    return EMBEDDED[f"tiny-{family}"].tiny.build()


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=EXAMPLES <= 100,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    family=st.sampled_from(["qwen-image", "z-image", "flux2", "wan"]),
    mutation=st.one_of(byte_mutation, tensor_mutation),
    case=st.integers(0, 2**31),
)
def test_mutated_trainer_files_converted_by_the_pipeline_load_or_fail_clearly(family, mutation, case):
    """musubi-tuner's files (Qwen-Image, Z-Image, Flux.2's fused BFL names, Wan's original names), which the base
    pipeline's own `lora_state_dict` converts and the harness traces back."""
    from lora_harness.bases.families import pipeline_signature

    target = WORKDIR / "case" / f"{case}-musubi-{family}.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(TRAINER_FILES / f"musubi-{family}.safetensors", target)
    if mutation[0] in ("flip", "truncate", "append", "header_size"):
        _mutate_bytes(target, mutation)
    else:
        _mutate_tensors(target, mutation)
    pipeline = _twin(family)
    _load_or_fail_clearly(target, pipeline, pipeline_signature(pipeline))


@cache
def _peft_tuner_folder(kind: str) -> Path:
    """diffusion-pipe's LoKr folder for Qwen-Image, or peft's own LoHa folder for the SD1.x twin, written once."""
    from peft import LoHaConfig, get_peft_model

    from lora_harness.bases.tiny_base import build_tiny_qwen_image_pipeline
    from lora_harness.fixtures.adapter_writers import write_diffusion_pipe

    folder = WORKDIR / "valid" / kind
    if kind == "diffusion-pipe-lokr":
        return write_diffusion_pipe(build_tiny_qwen_image_pipeline().transformer, folder, "lokr")  # peft wraps it
    config = LoHaConfig(r=4, alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    get_peft_model(build_tiny_pipeline().unet, config).save_pretrained(folder)
    return folder


@settings(
    max_examples=max(EXAMPLES // 2, 1),
    deadline=None,
    derandomize=EXAMPLES <= 100,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    kind=st.sampled_from(["diffusion-pipe-lokr", "peft-loha"]),
    mutation=st.one_of(byte_mutation, tensor_mutation),
    case=st.integers(0, 2**31),
)
def test_mutated_peft_loha_and_lokr_folders_load_or_fail_clearly(kind, mutation, case):
    """Folders peft's own tuners apply (kinds/peft_tuners.py): a config beside the weights peft sets."""
    from lora_harness.bases.families import pipeline_signature

    target = WORKDIR / "case" / f"{case}-{kind}"
    shutil.copytree(_peft_tuner_folder(kind), target)
    if mutation[0] in ("flip", "truncate", "append", "header_size"):
        _mutate_bytes(_weights(target), mutation)
    else:
        _mutate_tensors(_weights(target), mutation)
    pipeline = _twin("qwen-image") if kind == "diffusion-pipe-lokr" else _pipeline()
    _load_or_fail_clearly(target, pipeline, pipeline_signature(pipeline))


def _load_or_fail_clearly(target: Path, pipeline, signature) -> None:
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(SECONDS_PER_LOAD)
    try:
        adapter = read_adapter(target)
        application = apply_adapter(pipeline, signature, adapter, "fuzz")
        # Loaded: every tensor landed with its value, or the run names the file and what did not (a defect fails
        # every check of the adapter); never a partial load that passes.
        defects = file_defects(adapter.weights_path, application)
        assert application.tensors_applied == application.tensors or any(target.name in d for d in defects)
        assert not application.value_mismatches or defects
    except AdapterLoadError as error:
        assert target.name in str(error) and len(str(error)) > len(str(target)) + 10
    finally:
        signal.alarm(0)
        if pipeline.get_list_adapters():
            pipeline.unload_lora_weights()
        shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
