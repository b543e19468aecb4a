"""The export folder's file names, spelled once: the export writes them, bench and the face-swap app read them."""
from __future__ import annotations

INJECTOR = "injector.onnx"
DYNAMIC = "swapper_dynamic.onnx"


def baked(identity: str) -> str:
    return f"swapper_{identity}.onnx"


def ort(identity: str) -> str:
    return f"swapper_{identity}.ort"


def int8(identity: str) -> str:
    return f"swapper_{identity}_int8.onnx"


def coreml(identity: str, palettized: bool = False) -> str:
    return f"swapper_{identity}{'_palettized' if palettized else ''}.mlpackage"
