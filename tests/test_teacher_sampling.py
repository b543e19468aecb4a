"""Guided batched sampling: one UNet forward per step, independent pairs, target-preserving blending."""
from pathlib import Path

import pytest
import torch

from facekit.errors import UserError
from teacher.sampling import guided_swap, identity_similarity, load_swap_config
from teacher.unet import ID_DIM
from teacher_tiny import tiny_experts, tiny_unet


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add overhead


@pytest.fixture(scope="module")
def parts():
    return tiny_unet(), tiny_experts()


def images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def half_mask(n: int) -> torch.Tensor:
    mask = torch.zeros(n, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1
    return mask


FAST = {"respacing": 8, "skip": 2, "views": 3, "mask_ramp": 3, "gaze_weight": 0}


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_one_forward_per_step_and_target_kept_outside_mask(parts, sampler):
    model, experts = parts
    calls = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    config = load_swap_config("official", {**FAST, "sampler": sampler})
    source, target = images(2, 0), images(2, 1)
    try:
        result = guided_swap(model, experts, source, target, config, mask=half_mask(2),
                             generator=torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    assert len(calls) == config.respacing - config.skip  # T = 6 steps, ONE forward each, guidance included
    outside = 1 - result.mask
    assert torch.equal(result.swap * outside, target * outside)  # final hard composite
    assert result.valid.all() and result.swap.abs().max() <= 1
    assert not torch.allclose(result.swap, target)  # the masked region was resampled


def test_pairs_in_a_batch_are_independent(parts):
    """Sample 0 of [a, b] and of [a, c] agree: the batch is many pairs, not one coupled problem."""
    model, experts = parts
    config = load_swap_config("official", {**FAST, "sampler": "ddpm"})
    source, target = images(3, 2), images(3, 3)
    one = guided_swap(model, experts, source[[0, 1]], target[[0, 1]], config,
                      generator=torch.Generator().manual_seed(5))
    two = guided_swap(model, experts, source[[0, 2]], target[[0, 2]], config,
                      generator=torch.Generator().manual_seed(5))
    assert torch.allclose(one.swap[0], two.swap[0], atol=1e-5)
    assert not torch.allclose(one.swap[1], two.swap[1])
    # without a given mask it comes from the parser on the target's kept classes
    assert set(one.mask.unique().tolist()) <= {0.0, 1.0}


def test_guidance_changes_the_swap_and_identity_guidance_pulls_toward_source(parts):
    model, experts = parts
    source, target = images(2, 4), images(2, 5)
    mask = torch.ones(2, 1, 32, 32)
    unguided = load_swap_config("official", {**FAST, "id_weight": 0, "sem_weight": 0, "target_mse_weight": 0})
    guided = load_swap_config("official", {**FAST, "id_weight": 3e5, "sem_weight": 0, "target_mse_weight": 0})
    a = guided_swap(model, experts, source, target, unguided, mask=mask, generator=torch.Generator().manual_seed(1))
    b = guided_swap(model, experts, source, target, guided, mask=mask, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(a.swap, b.swap)
    assert (identity_similarity(experts, source, b.swap) > identity_similarity(experts, source, a.swap)).all()


def test_gaze_guidance_runs_within_its_window():
    model, experts = tiny_unet(), tiny_experts(gaze=True)
    source, target = images(1, 6), images(1, 7)
    landmarks = torch.tensor([[[11.0, 13.0], [21.0, 13.0], [16.0, 18.0], [12.0, 24.0], [20.0, 24.0]]])
    config = load_swap_config("paper", {**FAST, "gaze_weight": 200, "gaze_window": [1, 4], "id_weight": 0})
    result = guided_swap(model, experts, source, target, config, landmarks=landmarks, mask=half_mask(1),
                         generator=torch.Generator().manual_seed(0))
    assert result.valid.all()
    with pytest.raises(UserError, match="landmarks"):
        guided_swap(model, experts, source, target, config, mask=half_mask(1))


def test_nan_pair_is_flagged_and_others_survive(parts):
    model, experts = parts

    class Diverges(torch.nn.Module):
        config = model.config

        def forward(self, x, t, identity):
            out = model(x, t, identity)
            return torch.cat([out[:1], out[1:] * float("nan")])

    config = load_swap_config("official", {**FAST, "id_weight": 0, "sem_weight": 0})
    result = guided_swap(Diverges(), experts, images(2, 8), images(2, 9), config, mask=half_mask(2),
                         generator=torch.Generator().manual_seed(0))
    assert result.valid.tolist() == [True, False]
    assert torch.isfinite(result.swap[0]).all()


def test_presets_and_bad_settings():
    paper, official = load_swap_config("paper"), load_swap_config("official")
    assert (paper.id_weight, paper.sem_weight, paper.gaze_weight, paper.target_mse_weight) == (2000, 150, 200, 0)
    assert (official.id_weight, official.sem_weight, official.gaze_weight, official.target_mse_weight) == (6000, 200, 200, 50)
    assert (official.respacing, official.skip, official.mask_ramp, official.views) == (100, 25, 45, 8)
    configs = sorted(Path(__file__).resolve().parents[1].glob("configs/teacher_swap_*.yaml"))
    assert configs and all(load_swap_config(str(path)).respacing == 100 for path in configs)
    shape, structure = (load_swap_config(str(p)) for p in configs)  # source_shape, target_structure
    assert shape.mask_ramp > official.mask_ramp > structure.mask_ramp and shape.sem_weight < structure.sem_weight
    with pytest.raises(UserError, match="unknown sampling preset"):
        load_swap_config("fastest")
    with pytest.raises(UserError, match="skip"):
        load_swap_config("paper", {"skip": 100})


def test_bf16_unet_stays_close_to_fp32(parts):
    model, experts = parts
    config = load_swap_config("paper", {**FAST, "sem_weight": 0})
    args = (model, experts, images(1, 10), images(1, 11), config)
    full = guided_swap(*args, mask=half_mask(1), generator=torch.Generator().manual_seed(0))
    half = guided_swap(*args, mask=half_mask(1), generator=torch.Generator().manual_seed(0), autocast=torch.bfloat16)
    assert half.valid.all() and (half.swap - full.swap).abs().mean() < 0.1


def test_classifier_free_guidance_extrapolates_eps_from_the_zero_identity_and_keeps_the_variance(parts):
    model, _ = parts
    diffusion = load_swap_config("official", FAST).diffusion()
    x, t = images(2, 20), torch.tensor([5, 1])
    identity = torch.nn.functional.normalize(torch.randn(2, ID_DIM), dim=1)
    with torch.no_grad():
        conditional = diffusion.run_model(model, x, t, identity)
        unconditional = diffusion.run_model(model, x, t, torch.zeros_like(identity))
        guided = diffusion.run_model(model, x, t, identity, cfg_scale=3.0)
    assert torch.allclose(guided[:, :3], unconditional[:, :3] + 3 * (conditional[:, :3] - unconditional[:, :3]),
                          atol=1e-5)
    assert torch.allclose(guided[:, 3:], conditional[:, 3:], atol=1e-5)  # the learned variance stays conditional


def test_classifier_free_guidance_needs_a_teacher_trained_for_it(parts):
    from teacher.sampling import for_teacher

    model, experts = parts
    config = load_swap_config("official", {**FAST, "cfg_scale": 2.0})
    with pytest.raises(UserError, match="cfg_scale 2 needs a teacher trained with identity_dropout; t.safetensors"):
        for_teacher(config, {"identity_dropout": 0.0}, "t.safetensors")
    for_teacher(config, {"identity_dropout": 0.2}, "t.safetensors")
    for_teacher(load_swap_config("official", FAST), {}, "official.pt")  # off: any teacher
    with pytest.raises(UserError, match="cfg_scale must be ≥ 0"):
        load_swap_config("official", {"cfg_scale": -1.0})
    assert "cfg_scale" not in load_swap_config("official").to_dict()  # pair data sets made before it still resume
    with pytest.raises(UserError, match="low_frequency_noise is the teacher's, read from its snapshot"):
        load_swap_config("official", {"low_frequency_noise": 0.2})
    calls = []
    handle = model.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    try:
        result = guided_swap(model, experts, images(2, 0), images(2, 1), config, mask=half_mask(2),
                             generator=torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    assert result.valid.all() and set(calls) == {4}  # one batched forward: both halves of both pairs
