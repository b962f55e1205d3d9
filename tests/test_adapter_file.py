"""Bad files get a message naming the file, what is wrong and the fix; pickles are never unpickled."""

import pickle

import pytest
import torch
from safetensors.torch import save_file

from lora_harness.loading.adapter_file import AdapterLoadError, read_adapter


class _Marker:
    """Unpickling this writes a file: the proof that nothing was unpickled is that the file never appears."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".ckpt", ".safetensors"])
def test_pickles_are_refused_unread(tmp_path, suffix):
    marker = tmp_path / "unpickled.marker"
    path = tmp_path / f"evil{suffix}"
    path.write_bytes(pickle.dumps({"lora": _Marker(marker)}, protocol=4))
    with pytest.raises(AdapterLoadError, match="pickle-based checkpoint") as error:
        read_adapter(path)
    assert str(path) in str(error.value) and "save_file" in str(error.value)
    assert not marker.exists()


def test_torch_save_zip_is_refused(tmp_path):
    path = tmp_path / "adapter_model.safetensors"
    torch.save({"a": torch.zeros(2)}, path)
    with pytest.raises(AdapterLoadError, match="pickle-based"):
        read_adapter(path)


def test_folder_with_only_a_pickle_is_refused(tmp_path):
    (tmp_path / "adapter_model.bin").write_bytes(pickle.dumps({}))
    with pytest.raises(AdapterLoadError, match="pickle-based"):
        read_adapter(tmp_path)


def test_missing_empty_and_truncated(tmp_path):
    with pytest.raises(AdapterLoadError, match="no such file"):
        read_adapter(tmp_path / "nope.safetensors")
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(AdapterLoadError, match="empty"):
        read_adapter(empty)
    whole = tmp_path / "whole.safetensors"
    save_file({"unet.x.lora_A.weight": torch.ones(4, 32)}, whole)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(whole.read_bytes()[:-100])
    with pytest.raises(AdapterLoadError, match="truncated") as error:
        read_adapter(truncated)
    assert str(truncated) in str(error.value)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(AdapterLoadError, match="not valid JSON"):
        read_adapter(garbage)


def test_reads_tensors_metadata_and_hash(tmp_path):
    path = tmp_path / "a.safetensors"
    save_file({"unet.x.lora_A.weight": torch.ones(4, 32)}, path, metadata={"ss_network_dim": "4"})
    adapter = read_adapter(path)
    assert adapter.file_metadata == {"ss_network_dim": "4"}
    assert len(adapter.sha256) == 64 and list(adapter.tensors) == ["unet.x.lora_A.weight"]


def test_tensors_read_from_the_checked_header_equal_safetensors_own(tmp_path):
    """Each dtype a trainer writes, an empty tensor and a scalar alpha: the same values, dtypes and shapes as
    safetensors' `load_file`."""
    import torch
    from safetensors.torch import load_file, save_file

    from lora_harness.loading.adapter_file import read_adapter

    generator = torch.Generator().manual_seed(0)
    tensors = {
        f"m.{dtype}": torch.randn(3, 5, generator=generator).to(dtype)
        for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64)
    }
    tensors |= {"m.alpha": torch.tensor(4), "m.empty": torch.zeros(0, 4), "m.flags": torch.tensor([True, False])}
    save_file(tensors, tmp_path / "a.safetensors")
    read, expected = read_adapter(tmp_path / "a.safetensors").tensors, load_file(tmp_path / "a.safetensors")
    assert list(read) == sorted(expected)
    for key, tensor in expected.items():
        assert read[key].dtype == tensor.dtype and read[key].shape == tensor.shape and torch.equal(read[key], tensor), (
            key
        )
