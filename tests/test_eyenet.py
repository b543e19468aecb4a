import torch

from facekit.experts.eyenet import EyeNet, crop_eyes, eye_boxes, soft_argmax2d
from facekit.experts.frozen import freeze


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
    crops = torch.rand(1, 1, 96, 160, requires_grad=True)
    landmarks, gaze = model(crops)
    assert landmarks.shape == (1, 6, 2) and gaze.shape == (1, 2)
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
    # 5-point boxes (eye centres) land where the 68-point corner rule puts them
    assert (eye_boxes(five, (256, 256)) - eye_boxes(_landmarks68(1.0), (256, 256))).abs().max() < 2


def _reference_eyenet(sd, x, nstack):
    """GazeML-pytorch's EyeNet forward (as shipped with DiffFace) written on the raw state dict."""
    import numpy as np
    import torch.nn.functional as F

    def bn(h, p):
        return F.batch_norm(h, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"], False, 0.0, 1e-5)

    def conv(h, p, stride=1):
        weight = sd[f"{p}.conv.weight"]
        return F.conv2d(h, weight, sd[f"{p}.conv.bias"], stride, (weight.shape[-1] - 1) // 2)

    def residual(h, p):
        skip = conv(h, f"{p}.skip_layer") if sd[f"{p}.bn1.weight"].numel() != sd[f"{p}.conv3.conv.weight"].shape[0] else h
        out = conv(F.relu(bn(h, f"{p}.bn1")), f"{p}.conv1")
        out = conv(F.relu(bn(out, f"{p}.bn2")), f"{p}.conv2")
        return conv(F.relu(bn(out, f"{p}.bn3")), f"{p}.conv3") + skip

    def hourglass(h, p, n):
        low = residual(F.max_pool2d(h, 2, 2), f"{p}.low1")
        low = hourglass(low, f"{p}.low2", n - 1) if n > 1 else residual(low, f"{p}.low2")
        low = residual(low, f"{p}.low3")
        return residual(h, f"{p}.up1") + F.interpolate(low, h.shape[2:], mode="bilinear")

    def stem(h, p, stride):
        h = F.relu(bn(conv(h, f"{p}.0", stride), f"{p}.0.bn"))
        h = F.max_pool2d(residual(h, f"{p}.1"), 2, 2)
        return residual(residual(h, f"{p}.3"), f"{p}.4")

    h = stem(x, "pre", 1)
    gaze_features = stem(h, "pre2", 2).flatten(1)
    for i in range(nstack):
        feature = residual(hourglass(h, f"hgs.{i}.0", 4), f"features.{i}.0")
        feature = F.relu(bn(conv(feature, f"features.{i}.1"), f"features.{i}.1.bn"))
        preds = conv(feature, f"outs.{i}")
        if i < nstack - 1:
            h = h + conv(preds, f"merge_preds.{i}.conv") + conv(feature, f"merge_features.{i}.conv")
    hm_h, hm_w = preds.shape[2:]
    probs = torch.softmax(100 * preds.flatten(2), -1)
    cols, rows = np.meshgrid(np.linspace(0, 1, hm_w), np.linspace(0, 1, hm_h), indexing="xy")
    r = torch.sum((hm_h - 1) * probs * torch.tensor(rows.reshape(1, -1)), -1)
    c = torch.sum((hm_w - 1) * probs * torch.tensor(cols.reshape(1, -1)), -1)
    landmarks = torch.stack([r, c], -1).float()
    hidden = F.relu(F.linear(torch.cat([gaze_features, landmarks.flatten(1)], 1), sd["gaze_fc1.weight"], sd["gaze_fc1.bias"]))
    return landmarks, F.linear(hidden, sd["gaze_fc2.weight"], sd["gaze_fc2.bias"])


def test_forward_reproduces_the_original_eyenet():
    torch.manual_seed(0)
    model = EyeNet(nstack=2, nfeatures=8, nlandmarks=6).eval()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("running_var"):
                tensor.uniform_(0.5, 1.5)
            elif name.endswith("running_mean"):
                tensor.uniform_(-0.1, 0.1)
    crops = torch.rand(1, 1, 96, 160)
    landmarks, gaze = model(crops)
    ref_landmarks, ref_gaze = _reference_eyenet(model.state_dict(), crops, nstack=2)
    assert torch.allclose(landmarks, ref_landmarks, atol=1e-3)
    assert torch.allclose(gaze, ref_gaze, atol=1e-4)
