"""A multi-GB adapter is read one tensor at a time: the reader's peak memory follows the largest tensor, not the
file. Measured on a sparse file (the disk holds only its header) in a fresh process, by its peak resident set."""

import json
import os
import struct
import subprocess
import sys

import pytest

TENSORS, ELEMENTS = 16, 2**25  # sixteen F32 tensors of 128 MiB: a 2 GiB file
TENSOR_BYTES = ELEMENTS * 4
FILE_BYTES = TENSORS * TENSOR_BYTES

MEASURE = r"""
import json, sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from lora_harness.bases.families import UNET, architecture_family
from lora_harness.loading.adapter_file import read_adapter
from lora_harness.loading.damaged_tensors import refuse_damaged
from lora_harness.loading.kinds import kind_of


def peak():
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return int(status["VmHWM"].split()[0]) * 1024


path = Path(sys.argv[1])
start = peak()
adapter = read_adapter(path)
refuse_damaged(adapter)  # a pass over every tensor's shape and dtype
kind = kind_of(adapter, architecture_family(UNET)).name
# The passes the harness makes over a file's values (NaN or Inf anywhere, an all-zero up), one tensor at a time.
nonfinite = [key for key in adapter.tensors if not torch.isfinite(adapter.tensors[key].float()).all()]
zero = [key for key in adapter.tensors if not adapter.tensors[key].any()]
lazy = peak() - start
# The control: the same passes over the whole file held at once, as safetensors' load_file returns it.
whole = load_file(path)
assert all(torch.isfinite(tensor).all() and not tensor.any() for tensor in whole.values())
print(json.dumps({"kind": kind, "lazy": lazy, "whole": peak() - start, "zero": len(zero), "nonfinite": nonfinite,
                  "sha256": adapter.sha256}))
"""


def sparse_adapter(path):
    """Kohya keys and shapes a LoRA could have (rank 4), the data a hole: zeros, and no disk used."""
    header = {
        f"lora_unet_block_{i}.lora_down.weight": {
            "dtype": "F32",
            "shape": [4, ELEMENTS // 4],
            "data_offsets": [i * TENSOR_BYTES, (i + 1) * TENSOR_BYTES],
        }
        for i in range(TENSORS)
    }
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    with path.open("wb") as out:
        out.write(struct.pack("<Q", len(encoded)) + encoded)
        out.truncate(8 + len(encoded) + FILE_BYTES)
    return path


def test_a_multi_gb_adapter_is_read_with_memory_for_one_tensor_not_the_file(tmp_path):
    path = sparse_adapter(tmp_path / "big.safetensors")
    if os.stat(path).st_blocks * 512 > FILE_BYTES // 100:
        pytest.skip("this file system does not keep sparse files sparse")
    run = subprocess.run([sys.executable, "-c", MEASURE, str(path)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    measured = json.loads(run.stdout)
    assert measured["kind"] == "Kohya LoRA" and measured["zero"] == TENSORS and measured["nonfinite"] == []
    assert len(measured["sha256"]) == 64  # the whole file was hashed, streamed
    assert measured["whole"] > 0.9 * FILE_BYTES  # the control: holding the file shows in the measure
    # One tensor and its pass's temporaries (torch.isfinite makes about 2.7 times the tensor), not the file.
    assert measured["lazy"] < 4 * TENSOR_BYTES, measured
