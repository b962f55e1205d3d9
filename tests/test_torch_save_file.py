"""A torch.save file's tensors read without unpickling: the tensors saved, in both of torch's layouts; anything a file of tensors never holds refused by name, and never run."""

import os
import pickle

import pytest
import torch

from lora_harness.torch_save_file import NotAStateDict, looks_like_torch_save, read_torch_tensors


def _state_dict():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))
    tensors = dict(model.state_dict())  # keeps the OrderedDict's _metadata, which torch pickles too
    tensors["strided_half"] = torch.randn(3, 5).half()[:, 1:4]  # a view: offset and strides into a larger storage
    tensors["bf16"] = torch.randn(7).bfloat16()
    tensors["empty"] = torch.zeros(0)
    return tensors


@pytest.mark.parametrize(
    "layout",
    [
        {},  # the zip archive (torch 1.6 on)
        {"_use_new_zipfile_serialization": False},  # the legacy stream (earlier files)
        {"pickle_protocol": 4},  # STACK_GLOBAL instead of GLOBAL
    ],
    ids=["zip", "legacy", "protocol-4"],
)
def test_the_tensors_read_are_the_tensors_saved(tmp_path, layout):
    path = tmp_path / "weights.pth"
    expected = _state_dict()
    torch.save(expected, path, **layout)
    read = read_torch_tensors(path.read_bytes())
    assert list(read) == list(expected)
    for name, tensor in expected.items():
        assert read[name].dtype == tensor.dtype and torch.equal(read[name], tensor), name
    assert looks_like_torch_save(path)


class _Payload:
    """What a malicious checkpoint holds: unpickling it runs a command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("layout", [{}, {"_use_new_zipfile_serialization": False}], ids=["zip", "legacy"])
def test_a_pickle_that_would_run_code_is_refused_naming_what_it_calls(tmp_path, layout):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(2), "payload": _Payload(marker)}, path, **layout)
    with pytest.raises(NotAStateDict, match=r"asks for (posix|nt)\.system, which a file of tensors never needs"):
        read_torch_tensors(path.read_bytes())
    assert not marker.exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (pickle.dumps({"a": 1}), "neither its zip archive nor its legacy stream"),
        (b"garbage", "neither its zip archive nor its legacy stream"),
    ],
)
def test_what_is_not_a_torch_save_file_is_named(content, message):
    with pytest.raises(NotAStateDict, match=message):
        read_torch_tensors(content)


def test_a_legacy_file_cut_short_is_named(tmp_path):
    path = tmp_path / "cut.pth"
    torch.save({"w": torch.randn(64)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(NotAStateDict, match="cut short"):
        read_torch_tensors(path.read_bytes()[:-10])


def test_a_file_of_other_objects_is_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(NotAStateDict, match="something other than a dict of tensors"):
        read_torch_tensors(path.read_bytes())
