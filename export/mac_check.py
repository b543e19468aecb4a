#!/usr/bin/env python3
"""Run the exported Core ML swappers on a Mac and compare with PyTorch's outputs (reference.npz).

Core ML only predicts on macOS, so the Linux export checks structure; this closes the loop.
Usage, in the export directory on a Mac with `pip install coremltools numpy pillow`:
    python3 mac_check.py [DIR]      # checks every *.mlpackage in DIR (default: next to this script)
Exit status 0 when every model is within the fp16 tolerance (palettized models get a looser one).
"""
import sys
from pathlib import Path

import numpy as np

FP16_MAX_ABS = 2e-2
PALETTIZED_MEAN_ABS = 2e-2


def check_directory(here: Path) -> int:
    import coremltools as ct
    from PIL import Image

    reference = np.load(here / "reference.npz")
    pixels = np.round(reference["target"][0].transpose(1, 2, 0) * 255).astype(np.uint8)
    target = Image.fromarray(pixels, "RGB")
    failed = False
    packages = sorted(here.glob("*.mlpackage"))
    if not packages:
        print(f"no .mlpackage in {here}")
        return 1
    for package in packages:
        outputs = ct.models.MLModel(str(package)).predict({"target": target})
        image_error = np.abs(outputs["image"] - reference["image"])
        mask_error = np.abs(outputs["mask"] - reference["mask"])
        worst, mean = max(image_error.max(), mask_error.max()), image_error.mean()
        ok = mean <= PALETTIZED_MEAN_ABS if "palettized" in package.name else worst <= FP16_MAX_ABS
        failed |= not ok
        print(f"{'ok  ' if ok else 'FAIL'} {package.name}: max abs {worst:.4g}, mean abs {mean:.4g}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(check_directory(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent))
