"""The tensors of a `torch.save` file, read without unpickling it.

Its pickle is walked opcode by opcode (pickletools parses; nothing is imported or called) and only a state dict's
vocabulary is understood: dicts, lists, tuples, numbers, strings, and tensors rebuilt over the file's storages. Any
other object the pickle would build is refused by name. Both layouts torch writes are read: the zip archive (torch
1.6 on) and the legacy stream of consecutive pickles followed by the raw storages (earlier files, still published)."""

from __future__ import annotations

import io
import pickletools
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # the first of a legacy file's pickles
LEGACY_START = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."  # that pickle, as torch writes it
ZIP_START = b"PK\x03\x04"
STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class NotAStateDict(ValueError):
    """The file is not a torch.save file of tensors; the message says what was met."""


@dataclass
class _Storage:
    key: str
    dtype: torch.dtype
    numel: int


@dataclass
class _TensorView:
    storage: _Storage
    offset: int
    size: tuple
    stride: tuple


class _OrderedDict:
    """collections.OrderedDict as the pickle names it: called with no arguments, it makes a plain dict."""


def _rebuild_tensor(storage, offset, size, stride, *_requires_grad_hooks_metadata):
    if not isinstance(storage, _Storage):
        raise NotAStateDict("a tensor is built over something that is not one of the file's storages")
    return _TensorView(storage, offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, *_requires_grad_hooks):
    return data


# The only names the pickle may refer to, each mapped to our own stand-in: the file's names are looked up here,
# never imported.
_GLOBALS = {
    ("collections", "OrderedDict"): _OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): dtype for name, dtype in STORAGE_DTYPES.items()},
}
_LITERALS = {
    "BININT",
    "BININT1",
    "BININT2",
    "LONG1",
    "LONG4",
    "BINFLOAT",
    "BINUNICODE",
    "SHORT_BINUNICODE",
    "BINUNICODE8",
    "BINSTRING",
    "SHORT_BINSTRING",
    "BINBYTES",
    "SHORT_BINBYTES",
}


def _walk(stream, storages: dict[str, _Storage]):
    """The object one pickle in `stream` describes, built from the vocabulary above."""
    try:
        return _interpret(stream, storages)
    except NotAStateDict:
        raise
    except (ValueError, IndexError, KeyError, TypeError, AttributeError) as error:  # pickletools' and a bad stack's
        raise NotAStateDict(f"its pickle is malformed ({type(error).__name__}: {error})") from None


def _interpret(stream, storages: dict[str, _Storage]):
    stack: list = []
    marks: list[int] = []
    memo: dict = {}

    def since_mark() -> list:
        start = marks.pop()
        items = stack[start:]
        del stack[start:]
        return items

    for opcode, arg, position in pickletools.genops(stream):
        name = opcode.name
        if name in _LITERALS:
            stack.append(arg)
        elif name in ("PROTO", "FRAME"):
            pass
        elif name == "STOP":
            return stack.pop()
        elif name == "MARK":
            marks.append(len(stack))
        elif name == "NONE":
            stack.append(None)
        elif name in ("NEWTRUE", "NEWFALSE"):
            stack.append(name == "NEWTRUE")
        elif name == "EMPTY_DICT":
            stack.append({})
        elif name == "EMPTY_LIST":
            stack.append([])
        elif name == "EMPTY_TUPLE":
            stack.append(())
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            count = int(name[-1])
            items = tuple(stack[-count:])
            del stack[-count:]
            stack.append(items)
        elif name == "TUPLE":
            stack.append(tuple(since_mark()))
        elif name in ("BINPUT", "LONG_BINPUT"):
            memo[arg] = stack[-1]
        elif name == "MEMOIZE":
            memo[len(memo)] = stack[-1]
        elif name in ("BINGET", "LONG_BINGET"):
            stack.append(memo[arg])
        elif name == "SETITEM":
            value, key = stack.pop(), stack.pop()
            stack[-1][key] = value
        elif name == "SETITEMS":
            items = since_mark()
            stack[-1].update(zip(items[::2], items[1::2]))
        elif name == "APPEND":
            stack[-2].append(stack.pop())
        elif name == "APPENDS":
            items = since_mark()
            stack[-1].extend(items)
        elif name in ("GLOBAL", "STACK_GLOBAL"):
            if name == "GLOBAL":
                module, _, attribute = arg.partition(" ")
            else:  # protocol 4's: both names pushed as strings
                attribute, module = stack.pop(), stack.pop()
            if (module, attribute) not in _GLOBALS:
                raise NotAStateDict(f"its pickle asks for {module}.{attribute}, which a file of tensors never needs")
            stack.append(_GLOBALS[module, attribute])
        elif name == "REDUCE":
            args, function = stack.pop(), stack.pop()
            if function is _OrderedDict:
                stack.append({})
            elif function in (_rebuild_tensor, _rebuild_parameter):
                stack.append(function(*args))
            else:
                raise NotAStateDict(f"its pickle calls {function!r} at byte {position}")
        elif name == "BUILD":
            stack.pop()  # a state dict's `_metadata` attribute: module versions, not tensors
        elif name == "BINPERSID":
            stack.append(_persistent_storage(stack.pop(), storages))
        else:
            raise NotAStateDict(
                f"its pickle holds the opcode {name} at byte {position}, which a file of tensors never does"
            )
    raise NotAStateDict("its pickle ends without a STOP")


def _persistent_storage(pid, storages: dict[str, _Storage]) -> _Storage:
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
        raise NotAStateDict(f"its pickle refers to {pid!r}, which is not one of torch's storages")
    dtype, key, numel = pid[1], str(pid[2]), pid[4]
    if not isinstance(dtype, torch.dtype):
        raise NotAStateDict(f"a storage of type {dtype!r}")
    if len(pid) == 6 and pid[5] is not None:
        raise NotAStateDict("it stores views of storages, as torch before 0.4 did")
    return storages.setdefault(key, _Storage(key, dtype, int(numel)))


def _tensors(obj, data: dict[str, bytes]) -> dict[str, torch.Tensor]:
    """The flat name → tensor dict the walked object is (a state dict, or a dict holding one as 'state_dict')."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(value, _TensorView) for value in obj.values()):
        raise NotAStateDict("it holds something other than a dict of tensors")
    tensors = {}
    for name, view in obj.items():
        storage = view.storage
        raw = data[storage.key]
        flat = torch.frombuffer(bytearray(raw), dtype=storage.dtype) if raw else torch.empty(0, dtype=storage.dtype)
        tensors[str(name)] = flat.as_strided(view.size, view.stride, view.offset).clone()
    return tensors


def looks_like_torch_save(path: Path) -> bool:
    """Whether the file begins as torch.save's zip archive or legacy stream do (its first bytes only)."""
    with path.open("rb") as file:
        head = file.read(len(LEGACY_START))
    return head.startswith(ZIP_START) or head == LEGACY_START


def read_torch_tensors(raw: bytes) -> dict[str, torch.Tensor]:
    """The tensors of a torch.save file's bytes, holding a state dict; NotAStateDict naming what else it holds."""
    storages: dict[str, _Storage] = {}
    if zipfile.is_zipfile(io.BytesIO(raw)):
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            pickles = [name for name in archive.namelist() if name.endswith("/data.pkl")]
            if len(pickles) != 1:
                raise NotAStateDict("a zip archive that is not one torch.save file (no single data.pkl)")
            root = pickles[0].removesuffix("data.pkl")
            if f"{root}byteorder" in archive.namelist() and archive.read(f"{root}byteorder") != b"little":
                raise NotAStateDict("its tensors are big-endian")
            obj = _walk(io.BytesIO(archive.read(pickles[0])), storages)
            data = {key: archive.read(f"{root}data/{key}") for key in storages}
        return _tensors(obj, data)
    stream = io.BytesIO(raw)
    try:
        magic = _walk(stream, storages)
    except NotAStateDict:
        magic = None
    if magic != LEGACY_MAGIC:
        raise NotAStateDict("not a torch.save file: neither its zip archive nor its legacy stream")
    _walk(stream, storages)  # the protocol version
    if not _walk(stream, storages).get("little_endian", True):
        raise NotAStateDict("its tensors are big-endian")
    obj = _walk(stream, storages)
    data = {}
    for key in _walk(stream, storages):
        storage = storages[str(key)]
        (numel,) = struct.unpack("<q", stream.read(8))
        size = numel * storage.dtype.itemsize
        data[storage.key] = stream.read(size)
        if len(data[storage.key]) != size:
            raise NotAStateDict("it ends inside a storage: the file is cut short")
    return _tensors(obj, data)
