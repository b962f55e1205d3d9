"""Raw safetensors files, for tests that need headers no well-behaved writer would produce."""

from __future__ import annotations

import json
import struct


def raw_file(header: dict | list | bytes, data: bytes = b"", header_size: int | None = None) -> bytes:
    encoded = header if isinstance(header, bytes) else json.dumps(header).encode()
    size = len(encoded) if header_size is None else header_size
    return struct.pack("<Q", size) + encoded + data


def one_tensor_header(key: str = "unet.x.lora_A.weight", dtype: str = "F32", shape=(4, 32), offsets=(0, 512)) -> dict:
    return {key: {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}}
