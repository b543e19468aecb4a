"""Reading tensors out of a torch *whole-model* pickle without importing or running anything from it.

SimSwap's `Arcface.tar` (used by DiffFace) is `torch.save` of a dict holding a DataParallel-wrapped model
whose classes live in the original repository (`models.models.ResNet`, ...). `torch.load(weights_only=True)`
refuses such a file and `weights_only=False` would import and run whatever it names. Here every module class
becomes an inert `ModulePlaceholder` that only records its pickled state, the only callables are our own
tensor/storage rebuilders, and anything else (`os.system`, `builtins.eval`, ...) is refused before it runs.
Both torch's zip format and the legacy (pre-1.6) stream format are read.
"""
from __future__ import annotations

import io
import struct
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from facekit.errors import UserError
from facekit.safe_pickle import NUMPY_GLOBALS, RestrictedUnpickler

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}
# Module trees only ever name classes from these packages (plus the model's own, non-stdlib package).
_PLACEHOLDER_PREFIXES = ("torch.nn.", "torch.optim.")
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class ModulePlaceholder:
    """Stands in for any pickled class: never calls anything, just keeps what the pickle hands it."""

    module_path = ""
    class_name = ""
    args: tuple = ()
    state: Any = None

    def __init__(self, *args: Any, **kwargs: Any):
        self.args, self.state = args, None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<placeholder {self.module_path}.{self.class_name}>"


@dataclass(frozen=True)
class _StorageType:
    dtype: torch.dtype


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: torch.dtype
    numel: int


@dataclass(frozen=True)
class TensorRef:
    """A tensor whose bytes are read once the whole pickle has been parsed (legacy files store them after)."""

    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage: _StorageRef, offset: int, size: Any, stride: Any, *unused: Any) -> TensorRef:
    return TensorRef(storage, int(offset), tuple(size), tuple(stride))


def _rebuild_parameter(data: TensorRef, *unused: Any) -> TensorRef:
    return data


_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): NUMPY_GLOBALS[("collections", "OrderedDict")],
    ("_codecs", "encode"): NUMPY_GLOBALS[("_codecs", "encode")],
    # Training checkpoints also pickle the optimizer, whose state is a defaultdict(dict).
    ("collections", "defaultdict"): lambda *unused: {},
    ("builtins", "set"): set,
    ("builtins", "dict"): dict,
    ("__builtin__", "set"): set,  # protocol-2 pickles name builtins the Python 2 way
    ("__builtin__", "dict"): dict,
    ("torch", "device"): lambda *args: ":".join(map(str, args)),
    ("torch", "Size"): tuple,
}


def _placeholder_allowed(module: str) -> bool:
    if module.startswith(_PLACEHOLDER_PREFIXES):
        return True
    top = module.split(".")[0]
    return top not in sys.stdlib_module_names and top not in {"torch", "numpy", "__builtin__", "builtins"}


class _ModelUnpickler(RestrictedUnpickler):
    """safe_pickle's allow-list unpickler, plus inert placeholders for model classes and torch storages."""

    def __init__(self, stream: io.BytesIO, source: str):
        super().__init__(stream, _SAFE_GLOBALS, source)
        self._placeholders: dict[tuple[str, str], type] = {}
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if (module, name) not in _SAFE_GLOBALS and _placeholder_allowed(module) and name[:1].isupper():
            key = (module, name)
            if key not in self._placeholders:
                self._placeholders[key] = type(name, (ModulePlaceholder,), {"module_path": module, "class_name": name})
            return self._placeholders[key]
        return super().find_class(module, name)  # the allow-list, or a refusal naming the global

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and len(pid) == 4 and pid[0] == "module" and isinstance(pid[1], type):
            return pid[1]  # legacy files record each module class' source text; the class is our placeholder
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise UserError(f"{self._source}: refused to load: unexpected persistent id {repr(pid)[:80]} in the pickle")
        if len(pid) > 5 and pid[5] is not None:
            raise UserError(f"{self._source}: storage views of pre-1.0 torch files are not supported; re-save the weights")
        ref = _StorageRef(str(pid[2]), pid[1].dtype, int(pid[4]))
        self.storages[ref.key] = ref
        return ref


def _unpickle(stream: io.BytesIO, source: str) -> tuple[Any, dict[str, _StorageRef]]:
    unpickler = _ModelUnpickler(stream, source)
    try:
        return unpickler.load(), unpickler.storages
    except UserError:
        raise
    except Exception as err:  # any parse failure of untrusted bytes is the file's fault
        raise UserError(f"{source}: not a readable torch checkpoint ({err.__class__.__name__}: {err})") from None


def _tensor_from_bytes(raw: bytes, ref: _StorageRef, source: str) -> torch.Tensor:
    itemsize = torch.empty((), dtype=ref.dtype).element_size()
    if len(raw) < ref.numel * itemsize:
        raise UserError(f"{source}: storage {ref.key} is truncated ({len(raw)} of {ref.numel * itemsize} bytes)")
    if ref.numel == 0:
        return torch.empty(0, dtype=ref.dtype)
    return torch.frombuffer(bytearray(raw[: ref.numel * itemsize]), dtype=ref.dtype)


def _load_zip(path: Path) -> tuple[Any, dict[str, torch.Tensor]]:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pickles:
            raise UserError(f"{path}: a zip file but not a torch checkpoint (no data.pkl)")
        prefix = pickles[0][: -len("data.pkl")]
        if f"{prefix}byteorder" in names and archive.read(f"{prefix}byteorder").strip() != b"little":
            raise UserError(f"{path}: big-endian torch checkpoints are not supported")
        obj, refs = _unpickle(io.BytesIO(archive.read(pickles[0])), str(path))
        storages = {}
        for key, ref in refs.items():
            try:
                raw = archive.read(f"{prefix}data/{key}")
            except KeyError:
                raise UserError(f"{path}: storage {key} is missing from the archive (truncated file?)") from None
            storages[key] = _tensor_from_bytes(raw, ref, str(path))
    return obj, storages


def _load_legacy(path: Path, data: bytes) -> tuple[Any, dict[str, torch.Tensor]]:
    # The stream holds, in order: magic, protocol, sys_info, the object, the storage keys, then for each
    # key an int64 element count followed by the raw bytes.
    stream = io.BytesIO(data)
    magic, _protocol, _sys_info = (_unpickle(stream, str(path))[0] for _ in range(3))
    if magic != _LEGACY_MAGIC:
        raise UserError(f"{path}: not a torch checkpoint (unknown header)")
    obj, refs = _unpickle(stream, str(path))
    keys, _ = _unpickle(stream, str(path))
    if not isinstance(keys, list):
        raise UserError(f"{path}: not a torch checkpoint (no storage list)")
    storages = {}
    for key in keys:
        ref = refs.get(str(key))
        count = stream.read(8)
        if ref is None or len(count) < 8:
            raise UserError(f"{path}: storage {key} is missing or truncated")
        numel = struct.unpack("<q", count)[0]
        itemsize = torch.empty((), dtype=ref.dtype).element_size()
        storages[ref.key] = _tensor_from_bytes(stream.read(numel * itemsize), ref, str(path))
    return obj, storages


def _resolve(obj: Any, storages: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, TensorRef):
        flat = storages[obj.storage.key]
        return torch.as_strided(flat, obj.size, obj.stride, obj.offset)  # a view: no second copy of the weights
    if isinstance(obj, dict):
        return type(obj)((key, _resolve(value, storages)) for key, value in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_resolve(value, storages) for value in obj)
    if isinstance(obj, ModulePlaceholder):
        obj.state = _resolve(obj.state, storages)
        obj.args = _resolve(obj.args, storages)
    return obj


def load_torch_pickle(path: str | Path) -> Any:
    """Unpickle a torch checkpoint of any content into plain containers, tensors and `ModulePlaceholder`s."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: the file is empty")
    if zipfile.is_zipfile(path):
        try:
            obj, storages = _load_zip(path)
        except zipfile.BadZipFile as err:
            raise UserError(f"{path}: corrupt zip archive ({err})") from None
    else:
        obj, storages = _load_legacy(path, path.read_bytes())
    try:
        return _resolve(obj, storages)
    except (KeyError, RuntimeError, ValueError, TypeError) as err:  # tensor views that do not fit their storage
        raise UserError(f"{path}: inconsistent tensor data in the checkpoint ({err.__class__.__name__}: {err})") from None


def placeholder_state_dict(module: ModulePlaceholder, prefix: str = "") -> dict[str, torch.Tensor]:
    """The state dict a pickled nn.Module would have returned: its parameters and persistent buffers."""
    state = module.state if isinstance(module.state, dict) else {}
    out: dict[str, torch.Tensor] = {}
    skip = state.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        for name, value in (state.get(group) or {}).items():
            if isinstance(value, torch.Tensor) and not (group == "_buffers" and name in skip):
                out[prefix + name] = value
    for name, child in (state.get("_modules") or {}).items():
        if isinstance(child, ModulePlaceholder):
            out.update(placeholder_state_dict(child, f"{prefix}{name}."))
    return out
