"""The student: sizes from the paper, training mode == baked network, differentiability, bad input."""
import copy

import pytest
import torch

from facekit.errors import UserError
from student.complexity import count_macs, count_params
from student.config import StudentConfig, scaled
from student.idn import identity_weight_shapes
from student.model import MobileFaceSwap

PAPER_PARAMS = 0.50e6
PAPER_MACS = 0.33e9
OFFICIAL_STATIC_ENTRIES = 500_315  # reference/mobilefaceswap_unet_static.tsv, BN statistics included


def identities(batch: int, dim: int = 512, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, dim, generator=gen), torch.randn(batch, dim, 7, 7, generator=gen)


@pytest.fixture(scope="module")
def small_model() -> MobileFaceSwap:
    torch.manual_seed(0)
    return MobileFaceSwap(scaled(StudentConfig(resolution=64), 0.25)).eval()


def test_static_network_matches_paper_size_and_macs_by_two_counters():
    torch.manual_seed(0)
    net = MobileFaceSwap().bake(*identities(1))
    assert count_params(net, include_buffers=True) == OFFICIAL_STATIC_ENTRIES
    assert abs(count_params(net) - PAPER_PARAMS) / PAPER_PARAMS < 0.01
    target = torch.rand(1, 3, 224, 224)
    official_net = copy.deepcopy(net)
    official_net.final = torch.nn.Sequential(*net.final)  # the final head as the official code runs it
    official_order = count_macs(official_net, (target,))
    macs = count_macs(net, (target,))
    assert abs(official_order.flop_counter_macs - PAPER_MACS) / PAPER_MACS < 0.03
    assert abs(official_order.fvcore_macs - PAPER_MACS) / PAPER_MACS < 0.03
    # inference runs the final 1x1 conv (32 -> 8) before the upsampling: on a quarter of the pixels, and the
    # upsampling on a quarter of the channels
    assert official_order.flop_counter_macs - macs.flop_counter_macs > 32 * 8 * (224 * 224 - 112 * 112)
    fusion_head = sum(n for name, n in macs.by_module.items() if name.startswith("mask.") and name.count(".") == 1)
    assert 0.03e9 < fusion_head < 0.05e9  # SPEC: the fusion head alone is ≈0.041 G MACs


def test_static_network_names_and_shapes_follow_the_official_layout(reference_tsv):
    net = MobileFaceSwap().bake(*identities(1))
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    official = {k.replace("._mean", ".running_mean").replace("._variance", ".running_var"): v
                for k, v in reference_tsv("mobilefaceswap_unet_static.tsv").items()}
    assert ours == official


def test_inference_runs_the_final_head_in_a_cheaper_order_with_the_same_result():
    torch.manual_seed(0)
    head = MobileFaceSwap(StudentConfig(resolution=64)).final
    for norm in (head[2], head[5]):  # trained-looking statistics, so the BN's affine map matters
        norm.running_mean.normal_()
        norm.running_var.uniform_(0.5, 2.0)
        norm.weight.data.normal_()
        norm.bias.data.normal_()
    x = torch.randn(2, 32, 32, 32)
    official = torch.nn.Sequential.forward(head.eval(), x)  # upsample first, as the official code does
    assert torch.allclose(head(x), official, atol=1e-5)


def test_training_mode_and_baked_network_agree(small_model):
    embedding, feature_map = identities(3, seed=1)
    target = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        image, mask = small_model(target, embedding, feature_map)
    for b in range(3):
        baked = small_model.bake(embedding[b : b + 1], feature_map[b : b + 1])
        baked_image, baked_mask = baked(target[b : b + 1])
        torch.testing.assert_close(baked_image, image[b : b + 1], atol=1e-5, rtol=0)
        torch.testing.assert_close(baked_mask, mask[b : b + 1], atol=1e-5, rtol=0)
    assert not torch.allclose(image[0], image[1])  # each sample really used its own identity


def test_identity_weights_have_the_static_shapes(small_model):
    weights = small_model.identity_weights(*identities(2))
    shapes = identity_weight_shapes(small_model.config)
    assert len(weights) == 18 and list(weights) == list(shapes)
    for name, value in weights.items():
        assert tuple(value.shape) == (2, *shapes[name])


def test_gradients_reach_the_injection_network_in_training_mode(small_model):
    model = MobileFaceSwap(small_model.config).train()
    embedding, feature_map = identities(2)
    image, mask = model(torch.rand(2, 3, 64, 64), embedding, feature_map)
    (image.mean() + mask.mean()).backward()
    for name in ("predictor.first.weight", "predictor.encoder.4.weight.weight", "EncoderModulation.0.style.weight",
                 "DecoderModulation.3.weight", "final.7.weight", "mask.5.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_fusion_mask_does_not_backpropagate_into_the_encoder(small_model):
    model = MobileFaceSwap(small_model.config)
    _, mask = model(torch.rand(1, 3, 64, 64), *identities(1))
    mask.mean().backward()
    assert model.predictor.first.weight.grad is None or model.predictor.first.weight.grad.abs().sum() == 0
    assert model.mask[5].weight.grad.abs().sum() > 0


def test_output_composites_target_outside_the_mask(small_model):
    target = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        image, mask = small_model(target, *identities(1))
    assert image.min() >= 0 and image.max() <= 1 and mask.min() >= 0 and mask.max() <= 1
    hard_off = mask < 1e-3
    if hard_off.any():
        assert torch.allclose(image[hard_off.expand_as(image)], target[hard_off.expand_as(target)], atol=1e-3)


@pytest.mark.parametrize(
    "target_shape, emb_shape, map_shape, message",
    [
        ((1, 3, 60, 64), (1, 512), (1, 512, 7, 7), "multiple of 32"),
        ((1, 4, 64, 64), (1, 512), (1, 512, 7, 7), "RGB"),
        ((1, 3, 64, 64), (1, 256), (1, 512, 7, 7), "embedding"),
        ((1, 3, 64, 64), (1, 512), (1, 512, 8, 8), "feature map"),
        ((2, 3, 64, 64), (1, 512), (1, 512, 7, 7), "batch mismatch"),
    ],
)
def test_wrong_shapes_are_named(small_model, target_shape, emb_shape, map_shape, message):
    with pytest.raises(UserError, match=message):
        small_model(torch.rand(target_shape), torch.randn(emb_shape), torch.randn(map_shape))


def test_bad_identities_are_refused_before_baking(small_model):
    embedding, feature_map = identities(1)
    with pytest.raises(UserError, match="NaN"):
        small_model.bake(torch.full_like(embedding, float("nan")), feature_map)
    with pytest.raises(UserError, match="all zeros"):
        small_model.bake(torch.zeros_like(embedding), feature_map)
    with pytest.raises(UserError, match="batch 1"):
        small_model.bake(*identities(2))


def test_config_rejects_non_multiple_of_32_and_unknown_keys():
    with pytest.raises(UserError, match="multiple of 32"):
        StudentConfig(resolution=100)
    with pytest.raises(UserError, match="unknown student config keys: colour"):
        StudentConfig.from_dict({"colour": 1})
    config = scaled(StudentConfig(resolution=128), 0.5)
    assert StudentConfig.from_dict(config.to_dict()) == config



@pytest.mark.parametrize("width", [0.125, 0.25, 0.5])
def test_narrow_students_keep_enough_channels_for_rgb_in_the_final_head(width):
    """The final head narrows the first level to a quarter before its RGB convs: 2 channels there cannot carry
    a colour image (a quarter-width student lost its backgrounds that way)."""
    model = MobileFaceSwap(scaled(StudentConfig(resolution=64), width))
    head_width = model.final[1].out_channels
    assert head_width >= 3
    assert model.config.encoder_channels[2] == max(2, round(64 * width))  # only the first level is held up
