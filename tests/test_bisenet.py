import torch

from facekit.bisenet import BACKGROUND_CLASSES, CLASS_NAMES, KEPT_CLASSES, BiSeNet, class_mask
from facekit.frozen import freeze


def test_full_size_names_and_shapes_match_faceparser_pth(reference_tsv):
    with torch.device("meta"):
        model = BiSeNet()
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert own == reference_tsv("bisenet_faceparser.tsv")


def test_logits_come_back_at_the_callers_size_and_are_differentiable():
    model = freeze(BiSeNet(width=0.125, input_size=64))
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
