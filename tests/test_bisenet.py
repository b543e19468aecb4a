import torch

from facekit.experts.bisenet import BACKGROUND_CLASSES, CLASS_NAMES, KEPT_CLASSES, BiSeNet, class_mask
from facekit.experts.frozen import freeze


def test_full_size_names_and_shapes_match_faceparser_pth(reference_tsv):
    with torch.device("meta"):
        model = BiSeNet()
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert own == reference_tsv("bisenet_faceparser.tsv")


def test_logits_come_back_at_the_callers_size_and_are_differentiable():
    model = freeze(BiSeNet(width=0.125, input_size=32))
    images = torch.rand(2, 3, 50, 70, requires_grad=True)
    logits = model(images)
    assert logits.shape == (2, 19, 50, 70)
    logits[:, list(KEPT_CLASSES)].abs().mean().backward()
    assert images.grad.abs().sum() > 0


def test_class_groups_and_masks():
    assert len(CLASS_NAMES) == 19 and CLASS_NAMES[10] == "nose" and CLASS_NAMES[17] == "hair"
    assert not set(KEPT_CLASSES) & set(BACKGROUND_CLASSES)
    labels = torch.tensor([[0, 1, 17], [10, 16, 6]])
    assert class_mask(labels, KEPT_CLASSES)[0, 0].tolist() == [[0, 1, 0], [1, 0, 0]]
    assert class_mask(labels, BACKGROUND_CLASSES)[0, 0].tolist() == [[1, 0, 1], [0, 1, 0]]
    logits = torch.nn.functional.one_hot(labels, 19).permute(2, 0, 1)[None].float()
    assert torch.equal(class_mask(logits, KEPT_CLASSES), class_mask(labels, KEPT_CLASSES))


def _reference_parser(sd, x):
    """zllrunning/face-parsing.PyTorch's BiSeNet forward written on the raw state dict (main head only)."""
    import torch.nn.functional as F

    def bn(h, p):
        return F.batch_norm(h, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"], False, 0.0, 1e-5)

    def cbr(h, p, pad=1):
        return F.relu(bn(F.conv2d(h, sd[f"{p}.conv.weight"], padding=pad), f"{p}.bn"))

    def arm(h, p):
        feat = cbr(h, f"{p}.conv")
        return feat * torch.sigmoid(bn(F.conv2d(feat.mean((2, 3), keepdim=True), sd[f"{p}.conv_atten.weight"]), f"{p}.bn_atten"))

    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    h = (x - mean) / std
    h = F.relu(bn(F.conv2d(h, sd["cp.resnet.conv1.weight"], stride=2, padding=3), "cp.resnet.bn1"))
    h = F.max_pool2d(h, 3, 2, 1)
    feats = []
    for layer in range(1, 5):
        for block in range(2):
            p, stride = f"cp.resnet.layer{layer}.{block}", 2 if layer > 1 and block == 0 else 1
            r = F.relu(bn(F.conv2d(h, sd[f"{p}.conv1.weight"], stride=stride, padding=1), f"{p}.bn1"))
            r = bn(F.conv2d(r, sd[f"{p}.conv2.weight"], padding=1), f"{p}.bn2")
            if f"{p}.downsample.0.weight" in sd:
                h = bn(F.conv2d(h, sd[f"{p}.downsample.0.weight"], stride=stride), f"{p}.downsample.1")
            h = F.relu(h + r)
        feats.append(h)
    feat8, feat16, feat32 = feats[1:]
    avg = F.interpolate(cbr(feat32.mean((2, 3), keepdim=True), "cp.conv_avg", pad=0), feat32.shape[2:], mode="nearest")
    up32 = cbr(F.interpolate(arm(feat32, "cp.arm32") + avg, feat16.shape[2:], mode="nearest"), "cp.conv_head32")
    up16 = cbr(F.interpolate(arm(feat16, "cp.arm16") + up32, feat8.shape[2:], mode="nearest"), "cp.conv_head16")
    fused = cbr(torch.cat([feat8, up16], 1), "ffm.convblk", pad=0)
    atten = torch.sigmoid(F.conv2d(F.relu(F.conv2d(fused.mean((2, 3), keepdim=True), sd["ffm.conv1.weight"])), sd["ffm.conv2.weight"]))
    out = F.conv2d(cbr(fused * atten + fused, "conv_out.conv"), sd["conv_out.conv_out.weight"])
    return F.interpolate(out, x.shape[2:], mode="bilinear", align_corners=True)


def test_forward_reproduces_the_original_parser():
    torch.manual_seed(0)
    model = BiSeNet(width=0.125, input_size=64).eval()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("running_var"):
                tensor.uniform_(0.5, 1.5)
            elif name.endswith(("running_mean", "bn.bias", "bn1.bias", "bn2.bias")):
                tensor.uniform_(-0.1, 0.1)
    images = torch.rand(2, 3, 64, 64)
    expected = _reference_parser(model.state_dict(), images)
    assert torch.allclose(model(images), expected, atol=1e-5)
