"""Swap metrics: perfect swaps score perfectly, errors show up where they are, expert-based errors
react to what they claim to measure."""
import math

import pytest
import torch
from torch import nn

from facekit.world import synthetic as S
from facekit.metrics import angular_error, format_table, ssim, swap_metrics

SIZE = 64


@pytest.fixture(scope="module")
def world():
    ids = S.sample_identities(6, 0)
    attrs = S.sample_attributes(6, 1)
    ctxs = S.match_neck(S.sample_contexts(6, 2), ids)
    source_ids = S.sample_identities(6, 3)
    target = S.render_batch(ids, attrs, ctxs, SIZE)
    truth = S.swap_truth(source_ids, attrs, ctxs, SIZE)
    source = S.render_batch(source_ids, S.sample_attributes(6, 4), S.match_neck(S.sample_contexts(6, 5), source_ids), SIZE)
    mask = target["face_mask"] | truth["face_mask"]
    return target, truth, source, mask


def test_perfect_swap_scores_perfectly(world):
    target, truth, source, mask = world
    m = swap_metrics(truth["image"], truth["image"], source["image"], target["image"], mask)
    assert m["l1_face"] == 0 and m["l1_outside"] == 0
    assert m["psnr_face"] == 100 and m["ssim"] == pytest.approx(1.0, abs=1e-5)
    # The truth keeps the target outside the mask (up to anti-aliased edge pixels).
    assert m["background_l1"] < 0.01


def test_returning_the_target_is_wrong_inside_only(world):
    target, truth, source, mask = world
    m = swap_metrics(target["image"], truth["image"], source["image"], target["image"], mask)
    assert m["l1_face"] > 0.02 and m["psnr_face"] < 35
    assert m["background_l1"] == 0 and m["l1_outside"] < m["l1_face"] / 5


def test_noise_outside_the_mask_is_caught_by_background_metrics(world):
    target, truth, source, mask = world
    noisy = truth["image"] + 0.1 * torch.randn_like(truth["image"]) * (~mask[:, None])
    m = swap_metrics(noisy, truth["image"], source["image"], target["image"], mask)
    assert m["l1_face"] == 0 and m["l1_outside"] > 0.03 and m["background_psnr"] < 30 and m["ssim"] < 0.95


def test_lowpass_face_error_separates_noise_from_a_wrong_tone(world):
    """Fine noise mostly averages out under the blur; a wrong skin tone does not."""
    target, truth, source, mask = world
    noisy = truth["image"] + 0.2 * torch.randn_like(truth["image"]) * mask[:, None]
    m = swap_metrics(noisy, truth["image"], source["image"], target["image"], mask)
    assert m["l1_face_lowpass"] < m["l1_face"] / 3
    darker = truth["image"] * torch.where(mask[:, None], 0.8, 1.0)
    m = swap_metrics(darker, truth["image"], source["image"], target["image"], mask)
    assert m["l1_face_lowpass"] > 0.7 * m["l1_face"]


def test_tone_errors_split_a_wrong_face_colour_into_brightness_and_chroma(world):
    """A darker face is a brightness error with no chroma error; a warmer one (R up, B down) the reverse."""
    target, truth, source, mask = world
    face = mask[:, None]
    darker = truth["image"] - torch.where(face, 0.1, 0.0)
    m = swap_metrics(darker, truth["image"], source["image"], target["image"], mask)
    assert abs(m["face_brightness_error"] - 0.1) < 1e-3 and m["face_chroma_error"] < 1e-3
    shift = torch.tensor([0.06, 0.0, -0.06])[None, :, None, None]
    warmer = truth["image"] + torch.where(face, shift, torch.zeros(()))
    m = swap_metrics(warmer, truth["image"], source["image"], target["image"], mask)
    assert m["face_brightness_error"] < 1e-3 and abs(m["face_chroma_error"] - 0.04) < 1e-3


def test_ssim_known_values():
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-5)
    assert (ssim(x, 1 - x) < 0).all()


def test_angular_error_degrees():
    a = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.2, 0.0]])
    b = torch.tensor([[0.0, 0.1], [0.0, 0.0], [-0.2, 0.0]])
    assert torch.allclose(angular_error(a, b), torch.tensor([math.degrees(0.1), 0.0, math.degrees(0.4)]), atol=1e-3)


class _LookupParser(nn.Module):
    """A test parser that knows the labels of the images it will be shown."""

    def __init__(self, pairs):
        super().__init__()
        self.pairs = pairs

    def forward(self, images):
        for image, labels in self.pairs:
            if torch.equal(image, images):
                return nn.functional.one_hot(labels, 19).permute(0, 3, 1, 2).float()
        raise AssertionError("unknown image")


def test_parser_geometry_and_expression_errors(world):
    target, truth, source, mask = world
    shifted_image = torch.roll(truth["image"], 5, dims=3)
    shifted_labels = torch.roll(truth["labels"], 5, dims=2)
    parser = _LookupParser([(target["image"], target["labels"]), (truth["image"], truth["labels"]),
                            (shifted_image, shifted_labels)])
    good = swap_metrics(truth["image"], truth["image"], source["image"], target["image"], mask, parser=parser)
    bad = swap_metrics(shifted_image, truth["image"], source["image"], target["image"], mask, parser=parser)
    assert bad["geometry_error"] > good["geometry_error"] + 0.05  # a 5 px shift is 5/64 of the width
    assert good["geometry_error"] < 0.05 and good["expression_error"] < 0.05


def test_embedder_and_gaze_metrics_are_reported(world):
    from facekit.experts.arcface import IRSEArcFace
    from facekit.experts.eyenet import EyeNet

    target, truth, source = ({key: value[:2] for key, value in d.items()} for d in world[:3])
    mask = world[3][:2]
    embedder = IRSEArcFace((1, 1, 1, 1), (8, 8, 8, 16), 32, 112).eval()
    gaze = EyeNet(1, 8, 4).eval()
    m = swap_metrics(truth["image"], truth["image"], source["image"], target["image"], mask, embedder=embedder,
                     gaze=gaze, target_landmarks=target["landmarks5"])
    assert -1 <= m["id_sim_target"] <= 1 and m["id_sim_source"] == pytest.approx(m["id_sim_truth_source"])
    assert m["gaze_error_deg"] >= 0
    with pytest.raises(ValueError):
        swap_metrics(truth["image"], truth["image"], source["image"], target["image"], mask, gaze=gaze)
    assert "| a |" in format_table({"a": m})


def test_shape_mismatch_is_refused(world):
    target, truth, source, mask = world
    with pytest.raises(ValueError):
        swap_metrics(truth["image"][:, :, :32], truth["image"], source["image"], target["image"], mask)
