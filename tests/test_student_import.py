"""Official MobileFaceSwap weights: a synthetic `.pdparams` in the exact official layout imports without
Paddle, reproduces an independent re-implementation of the official forward, and hostile files are refused."""
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facekit.errors import UserError
from student.checkpoint import load_student
from student.paddle_import import import_pdparams

REPO = Path(__file__).resolve().parents[1]


def official_pdparams(reference_tsv, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights with exactly the official names and shapes (Paddle layout: Linear is [in, out])."""
    rng = np.random.default_rng(seed)
    state = {}
    for name, shape in reference_tsv("mobilefaceswap_224_pdparams.tsv").items():
        if name.endswith("._variance"):
            state[name] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        elif name.endswith(".weight") and len(shape) == 1:  # BN scale
            state[name] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        else:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
            state[name] = (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
    return state


def write_pickle(path: Path, obj, protocol: int = 2) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


# --- an independent, functional re-implementation of the official Paddle forward (models/model.py) ----
def _bn(x, p, name):
    t = lambda k: torch.from_numpy(p[f"{name}.{k}"])  # noqa: E731
    return (x - t("_mean")[:, None, None]) / torch.sqrt(t("_variance")[:, None, None] + 1e-5) * t("weight")[:, None, None] + t("bias")[:, None, None]


def _conv(x, p, name, **kw):
    return F.conv2d(x, torch.from_numpy(p[f"{name}.weight"]), torch.from_numpy(p[f"{name}.bias"]), **kw)


def _lrelu(x):
    return F.leaky_relu(x, 0.1)


def _up(x):
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


def official_forward(p, emb, fmap, target):
    z = _lrelu(_bn(_conv(fmap, p, "predictor.first"), p, "predictor.norm"))
    enc_w, x = [], z
    for i in range(5):
        x = _lrelu(_bn(_conv(x, p, f"predictor.encoder.{i}.conv", padding=1), p, f"predictor.encoder.{i}.norm"))
        enc_w.append(_conv(x, p, f"predictor.encoder.{i}.weight", padding=1))
    enc_w = enc_w[::-1]
    dec_w, y = [], _lrelu(_bn(_conv(z, p, "predictor.first_decoder"), p, "predictor.decoder_norm"))
    for i in range(4):
        y = _lrelu(_bn(_conv(y, p, f"predictor.decoder.{i}.conv", padding=1), p, f"predictor.decoder.{i}.norm"))
        dec_w.append(_conv(y, p, f"predictor.decoder.{i}.weight", padding=1))

    def mod(name):
        style = emb @ torch.from_numpy(p[f"{name}.style.weight"]) + torch.from_numpy(p[f"{name}.style.bias"])
        w = torch.from_numpy(p[f"{name}.weight"])[None] * (style[:, None, :, None, None] + 1)
        w = w * torch.rsqrt((w**2).sum(dim=(2, 3, 4), keepdim=True) + 1e-16)
        return w[0]

    h = (target - 0.5) / 0.5
    skips = []
    for i in range(5):
        h = F.conv2d(h, enc_w[i][0].unsqueeze(1), stride=2, padding=1, groups=h.shape[1])
        h = _lrelu(F.conv2d(h, mod(f"EncoderModulation.{i}")))
        skips.append(h)
    m = h
    for i in range(5):
        m = _up(m)
        m = F.conv2d(m, torch.from_numpy(p[f"mask.{i}.1.weight"]), torch.from_numpy(p[f"mask.{i}.1.bias"]), padding=1, groups=m.shape[1])
        m = _lrelu(_bn(_conv(m, p, f"mask.{i}.2"), p, f"mask.{i}.3"))
    mask = torch.sigmoid(_conv(m, p, "mask.5", padding=1))
    y = h
    for i in range(4):
        y = _up(y)
        y = F.conv2d(y, dec_w[i][0].unsqueeze(1), padding=1, groups=y.shape[1])
        y = _lrelu(F.conv2d(y, mod(f"DecoderModulation.{i}")))
        if i < 3:
            y = torch.cat((y, skips[3 - i]), 1)
    y = _lrelu(_bn(_conv(_up(y), p, "final.1"), p, "final.2"))
    y = _lrelu(_bn(_conv(y, p, "final.4", padding=1), p, "final.5"))
    out = (1 + torch.tanh(_conv(y, p, "final.7", padding=1))) / 2
    return out * mask + target * (1 - mask), mask


@pytest.fixture(scope="module")
def pdparams(tmp_path_factory, reference_tsv):
    state = official_pdparams(reference_tsv)
    return state, write_pickle(tmp_path_factory.mktemp("official") / "MobileFaceSwap_224.pdparams", state)


def test_imported_weights_reproduce_the_official_forward(pdparams):
    state, path = pdparams
    # float64 on both sides: random weights amplify float32 rounding; the mapping itself must be exact.
    model = import_pdparams(path).double()
    gen = torch.Generator().manual_seed(3)
    emb = F.normalize(torch.randn(1, 512, generator=gen, dtype=torch.float64), dim=1)  # as the official code
    fmap = torch.randn(1, 512, 7, 7, generator=gen, dtype=torch.float64)
    target = torch.rand(1, 3, 224, 224, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        state64 = {k: v.astype(np.float64) for k, v in state.items()}
        expected_image, expected_mask = official_forward(state64, emb, fmap, target)
        image, mask = model.bake(emb, fmap)(target)
        train_image, _ = model(target, emb, fmap)
    torch.testing.assert_close(mask, expected_mask, atol=1e-9, rtol=0)
    torch.testing.assert_close(image, expected_image, atol=1e-9, rtol=0)
    torch.testing.assert_close(train_image, expected_image, atol=1e-9, rtol=0)


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_every_pickle_protocol_paddle_uses_loads(tmp_path, protocol, reference_tsv):
    state = official_pdparams(reference_tsv, seed=protocol)
    model = import_pdparams(write_pickle(tmp_path / "w.pdparams", state, protocol))
    torch.testing.assert_close(
        model.EncoderModulation[2].style.weight, torch.from_numpy(state["EncoderModulation.2.style.weight"]).t()
    )
    torch.testing.assert_close(model.final[2].running_var, torch.from_numpy(state["final.2._variance"]))


def test_cli_import_writes_a_student_checkpoint_and_never_overwrites(pdparams, tmp_path):
    _, path = pdparams
    out = tmp_path / "official.safetensors"
    cmd = [sys.executable, str(REPO / "distilswap.py"), "student", "import", str(path), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert load_student(out).predictor.first.weight.shape == (512, 512, 4, 4)
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_with_any_other_global_is_refused_before_anything_runs(tmp_path, reference_tsv):
    marker = tmp_path / "pwned"
    state = official_pdparams(reference_tsv)
    state["predictor.first.weight"] = _Exploit(marker)
    path = write_pickle(tmp_path / "evil.pdparams", state)
    with pytest.raises(UserError, match=r"refused to load: the pickle asks for '(posix|os)\.system'"):
        import_pdparams(path)
    assert not marker.exists()


def test_truncated_missing_extra_and_misshapen_checkpoints_get_one_clear_error(tmp_path, reference_tsv):
    state = official_pdparams(reference_tsv)
    good = write_pickle(tmp_path / "good.pdparams", state).read_bytes()
    (tmp_path / "cut.pdparams").write_bytes(good[: len(good) // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        import_pdparams(tmp_path / "cut.pdparams")

    missing = dict(state)
    del missing["predictor.norm._mean"]
    with pytest.raises(UserError, match=r"missing: predictor\.norm\.running_mean"):
        import_pdparams(write_pickle(tmp_path / "missing.pdparams", missing))

    extra = dict(state, **{"head.extra": np.zeros(3, np.float32)})
    with pytest.raises(UserError, match=r"unexpected: head\.extra"):
        import_pdparams(write_pickle(tmp_path / "extra.pdparams", extra))

    wrong = dict(state, **{"final.7.weight": np.zeros((3, 3, 5, 5), np.float32)})
    with pytest.raises(UserError, match=r"shape mismatch \(file vs model\): final\.7\.weight \(3, 3, 5, 5\)"):
        import_pdparams(write_pickle(tmp_path / "wrong.pdparams", wrong))

    with pytest.raises(UserError, match="no such file"):
        import_pdparams(tmp_path / "absent.pdparams")


def test_a_baked_static_file_is_told_apart_from_the_injection_network(tmp_path, reference_tsv):
    static = {k: np.zeros(v, np.float32) for k, v in reference_tsv("mobilefaceswap_unet_static.tsv").items()}
    with pytest.raises(UserError, match="baked static network"):
        import_pdparams(write_pickle(tmp_path / "static.pdparams", static))
