"""Official expert checkpoints: every on-disk format loads into our networks, hostile files are refused."""
import pickle
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from facekit.experts import arcface as arcface_module
from facekit.experts.arcface import IRSEArcFace
from facekit.experts.bisenet import BiSeNet
from facekit.checkpoints import load_arcface, load_bisenet, load_eyenet
from facekit.errors import UserError
from facekit.experts.eyenet import EyeNet
from facekit.experts.frozen import is_frozen

SMALL = dict(blocks=(2, 1, 2, 1), widths=(16, 32, 32, 64))


def _randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and PReLU slopes, so a wrong mapping cannot go unnoticed."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            noise = torch.rand(tensor.shape, generator=generator)
            if name.endswith("running_var"):
                tensor.copy_(0.5 + noise)
            elif tensor.dim() == 1:  # BN affine and running means, PReLU slopes, biases
                tensor.copy_(0.8 + 0.4 * noise if name.endswith("weight") else 0.2 * noise - 0.1)
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * (2.0 / tensor[0].numel()) ** 0.5)
    return model.eval()


def _to_paddle(model: IRSEArcFace) -> dict[str, np.ndarray]:
    linear = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    out = {}
    for name, tensor in model.state_dict().items():
        if name.endswith("num_batches_tracked"):
            continue
        array = tensor.numpy().T if name in linear else tensor.numpy()
        head, last = name.rsplit(".", 1)
        last = {"running_mean": "_mean", "running_var": "_variance"}.get(last, last)
        if "prelu" in head or head.endswith("se.fc.1"):
            last = "_weight"
        out[f"{head}.{last}"] = np.ascontiguousarray(array, dtype=np.float32)
    return out


def _paddle_reference_forward(p: dict[str, np.ndarray], x: torch.Tensor, blocks) -> tuple[torch.Tensor, torch.Tensor]:
    """MobileFaceSwap's ResNet forward written directly on the Paddle arrays (independent of our modules)."""
    t = {k: torch.from_numpy(v) for k, v in p.items()}

    def bn(h, name):
        return F.batch_norm(h, t[f"{name}._mean"], t[f"{name}._variance"], t[f"{name}.weight"], t[f"{name}.bias"], False, 0.0, 1e-5)

    def prelu(h, name):
        return F.prelu(h, t[f"{name}._weight"])

    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    h = F.max_pool2d(prelu(bn(F.conv2d(x, t["conv1.weight"]), "bn1"), "prelu"), 2, 2)
    for layer, count in enumerate(blocks, start=1):
        for i in range(count):
            b = f"layer{layer}.{i}"
            stride = 2 if layer > 1 and i == 0 else 1
            out = prelu(bn(F.conv2d(bn(h, f"{b}.bn0"), t[f"{b}.conv1.weight"], padding=1), f"{b}.bn1"), f"{b}.prelu")
            out = bn(F.conv2d(out, t[f"{b}.conv2.weight"], stride=stride, padding=1), f"{b}.bn2")
            squeeze = out.mean((2, 3))
            squeeze = prelu(squeeze @ t[f"{b}.se.fc.0.weight"] + t[f"{b}.se.fc.0.bias"], f"{b}.se.fc.1")
            out = out * torch.sigmoid(squeeze @ t[f"{b}.se.fc.2.weight"] + t[f"{b}.se.fc.2.bias"])[:, :, None, None]
            if f"{b}.downsample.0.weight" in t:
                h = bn(F.conv2d(h, t[f"{b}.downsample.0.weight"], stride=stride), f"{b}.downsample.1")
            h = prelu(out + h, f"{b}.prelu")
    feature_map = bn(h, "bn2")
    z = feature_map.flatten(1) @ t["fc.weight"] + t["fc.bias"]
    z = (z - t["bn3._mean"]) / torch.sqrt(t["bn3._variance"] + 1e-5) * t["bn3.weight"] + t["bn3.bias"]
    return z, feature_map


def test_pdparams_reproduces_mobilefaceswaps_forward(tmp_path):
    params = _to_paddle(_randomised(IRSEArcFace(**SMALL)))
    path = tmp_path / "arcface.pdparams"
    path.write_bytes(pickle.dumps(params, protocol=2))
    model = load_arcface(path, **SMALL)
    assert is_frozen(model)
    images = torch.rand(2, 3, 112, 112)
    z_ref, map_ref = _paddle_reference_forward(params, images, SMALL["blocks"])
    z, feature_map = model(images)
    assert (feature_map - map_ref).abs().max() <= 1e-5 * map_ref.abs().max()
    assert torch.allclose(z, F.normalize(z_ref, dim=1), atol=1e-5)


# --- SimSwap's Arcface.tar: torch.save({"model": DataParallel(models.models.ResNet)}) --------------------------

@pytest.fixture
def original_classes(monkeypatch):
    """Stand-ins for SimSwap's `models.models` classes, so torch.save pickles them under the original names."""
    package, module = types.ModuleType("models"), types.ModuleType("models.models")
    names = {"ResNet": arcface_module.IRSEArcFace, "IRBlock": arcface_module.IRBlock, "SEBlock": arcface_module.SEBlock}
    classes = {}
    for name, base in names.items():
        cls = type(name, (base,), {"__module__": "models.models"})
        setattr(module, name, cls)
        classes[base] = cls
    package.models = module
    monkeypatch.setitem(sys.modules, "models", package)
    monkeypatch.setitem(sys.modules, "models.models", module)
    return classes


def _as_original(model: nn.Module, classes) -> nn.Module:
    for sub in model.modules():
        if type(sub) in classes:
            sub.__class__ = classes[type(sub)]
    return model


@pytest.mark.filterwarnings("ignore:Couldn't retrieve source code")
@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_simswap_whole_model_pickle_loads_without_importing_its_classes(tmp_path, monkeypatch, original_classes, zip_format):
    reference = _randomised(IRSEArcFace(**SMALL))
    images = torch.rand(2, 3, 112, 112)
    expected = reference(images)
    original = _as_original(_randomised(IRSEArcFace(**SMALL)), original_classes)
    path = tmp_path / "Arcface.tar"
    optimizer = torch.optim.SGD(original.parameters(), lr=0.1, momentum=0.9)
    original(images).__getitem__(0).sum().backward()
    optimizer.step()  # momentum buffers: the training checkpoint also pickles the optimizer object
    original.load_state_dict(_randomised(IRSEArcFace(**SMALL)).state_dict())
    checkpoint = {"epoch": 3, "model": nn.DataParallel(original), "optimizer": optimizer}
    torch.save(checkpoint, path, _use_new_zipfile_serialization=zip_format)
    monkeypatch.delitem(sys.modules, "models.models")  # the original code is not importable when we load
    monkeypatch.delitem(sys.modules, "models")
    model = load_arcface(path, **SMALL)
    assert type(model) is IRSEArcFace
    for got, want in zip(model(images), expected):
        assert torch.allclose(got, want, atol=1e-5)


class _Hostile:
    def __init__(self, call, argument):
        self.call, self.argument = call, argument

    def __reduce__(self):
        return self.call, (self.argument,)


@pytest.mark.parametrize("loader", [load_arcface, load_bisenet, load_eyenet])
@pytest.mark.parametrize("attack", ["os.system", "builtins.eval"])
def test_malicious_pickles_are_refused_and_nothing_runs(tmp_path, loader, attack):
    marker = tmp_path / "pwned"
    import os
    import builtins

    call, argument = (os.system, f"touch {marker}") if attack == "os.system" else (builtins.eval, f"open({str(marker)!r}, 'w')")
    path = tmp_path / "Arcface.tar"
    torch.save({"model": _Hostile(call, argument)}, path)
    with pytest.raises(UserError, match="refused|unreadable"):
        loader(path)
    assert not marker.exists()


def test_bisenet_state_dict_and_wrong_width_error(tmp_path):
    source = _randomised(BiSeNet(width=0.125, input_size=32))
    path = tmp_path / "FaceParser.pth"
    torch.save(source.state_dict(), path)
    loaded = load_bisenet(path, width=0.125, input_size=32)
    images = torch.rand(1, 3, 32, 32)
    assert torch.allclose(loaded(images), source(images), atol=1e-5)
    with pytest.raises(UserError, match=r"shape mismatch.*cp\.resnet\.conv1\.weight"):
        load_bisenet(path, width=0.25, input_size=32)


def test_gaze_estimator_dict_carries_its_architecture(tmp_path):
    source = _randomised(EyeNet(nstack=2, nfeatures=8, nlandmarks=6))
    path = tmp_path / "GazeEstimator.pt"
    torch.save({"nstack": 2, "nfeatures": 8, "nlandmarks": 6, "model_state_dict": source.state_dict()}, path)
    loaded = load_eyenet(path)
    crops = torch.rand(1, 1, 96, 160)
    for got, want in zip(loaded(crops), source(crops)):
        assert torch.allclose(got, want, atol=1e-4)


def test_wrong_or_damaged_files_name_the_problem(tmp_path):
    parser = tmp_path / "FaceParser.pth"
    torch.save(BiSeNet(width=0.125).state_dict(), parser)
    with pytest.raises(UserError, match=r"FaceParser\.pth.*EyeNet.*missing: pre\.0\.conv\.weight"):
        load_eyenet(parser)
    truncated = tmp_path / "Arcface.tar"
    truncated.write_bytes(parser.read_bytes()[:300])
    with pytest.raises(UserError, match="Arcface.tar"):
        load_arcface(truncated, **SMALL)
    with pytest.raises(UserError, match="no such file"):
        load_bisenet(tmp_path / "missing.pth")
