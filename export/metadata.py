"""Provenance stamped on every artifact: which code, which checkpoint, which identity, when."""
from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Mapping


def project_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("distilswap")
    except PackageNotFoundError:
        return "unknown"


def artifact_metadata(
    checkpoint_sha256: str, identity: str, resolution: int, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """String -> string, the common denominator of ONNX metadata_props and Core ML user metadata."""
    return {
        "distilswap_version": project_version(),
        "resolution": str(resolution),
        "checkpoint_sha256": checkpoint_sha256,
        "identity": identity,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **{key: str(value) for key, value in (extra or {}).items()},
    }


REQUIRED_KEYS = ("distilswap_version", "resolution", "checkpoint_sha256", "identity", "date")


def set_onnx_metadata(path: str | Path, metadata: Mapping[str, str]) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=str(value))
    model.producer_name = "distilswap"
    model.producer_version = project_version()
    onnx.save(model, str(path))


def onnx_metadata(path: str | Path) -> dict[str, str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {prop.key: prop.value for prop in model.metadata_props}


def missing_keys(metadata: Mapping[str, str]) -> list[str]:
    return [key for key in REQUIRED_KEYS if not metadata.get(key)]
