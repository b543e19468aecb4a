import torch

from facekit.eyenet import EyeNet, crop_eyes, eye_boxes, soft_argmax2d
from facekit.frozen import freeze


def test_full_size_names_and_shapes_match_gazeestimator_pt(reference_tsv):
    with torch.device("meta"):
        model = EyeNet()
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert own == reference_tsv("eyenet_gaze.tsv")


def test_soft_argmax_finds_the_peak_as_row_col():
    heatmaps = torch.zeros(1, 2, 48, 80)
    heatmaps[0, 0, 10, 70] = 1.0
    heatmaps[0, 1, 40, 3] = 1.0
    assert torch.allclose(soft_argmax2d(heatmaps), torch.tensor([[[10.0, 70.0], [40.0, 3.0]]]), atol=1e-2)


def test_gaze_and_landmarks_shapes_and_gradients():
    model = freeze(EyeNet(nstack=2, nfeatures=8, nlandmarks=6))
    crops = torch.rand(3, 1, 96, 160, requires_grad=True)
    landmarks, gaze = model(crops)
    assert landmarks.shape == (3, 6, 2) and gaze.shape == (3, 2)
    gaze.sum().backward()
    assert crops.grad.abs().sum() > 0


def _landmarks68(scale: float) -> torch.Tensor:
    points = torch.full((1, 68, 2), 128.0)
    points[0, 36], points[0, 39] = torch.tensor([80.0, 110.0]), torch.tensor([110.0, 112.0])
    points[0, 42], points[0, 45] = torch.tensor([146.0, 112.0]), torch.tensor([176.0, 110.0])
    return points * scale


def test_eye_boxes_follow_difffaces_margins_scaled_with_image_size():
    boxes = eye_boxes(_landmarks68(1.0), (256, 256))
    assert torch.allclose(boxes[0, 0], torch.tensor([75.0, 102.0, 115.0, 120.0]))
    assert torch.allclose(eye_boxes(_landmarks68(2.0), (512, 512)), boxes * 2)


def test_crop_eyes_samples_the_eye_region_differentiably():
    image = torch.zeros(1, 3, 256, 256)
    image[:, :, 102:120, 75:115] = 1.0  # a bright left-eye box, dark elsewhere
    image.requires_grad_(True)
    crops = crop_eyes(image, _landmarks68(1.0))
    assert crops.shape == (2, 1, 96, 160)
    assert crops[0, 0, 10:-10, 10:-10].min() > 0.99 and crops[1].max() < 0.01
    crops.sum().backward()
    assert image.grad[0, 0, 110, 90] > 0 and image.grad[0, 0, 10, 10] == 0
    five = torch.tensor([[[95.0, 111.0], [161.0, 111.0], [128.0, 140.0], [100.0, 170.0], [156.0, 170.0]]])
    assert crop_eyes(image.detach(), five).shape == (2, 1, 96, 160)
