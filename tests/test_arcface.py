import torch
from torch import nn

from facekit.experts.arcface import IRSEArcFace, imagenet_normalize, resize_to
from facekit.checkpoints import paddle_name_to_torch
from facekit.experts.frozen import freeze, is_frozen

SMALL = dict(blocks=(1, 1, 1, 1), widths=(16, 32, 64, 512))  # the synthetic world's size
TINY = dict(blocks=(1, 1, 1, 1), widths=(8, 8, 16, 16))


def test_full_size_names_and_shapes_match_the_official_checkpoint(reference_tsv):
    with torch.device("meta"):
        model = IRSEArcFace()
    own = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    expected = {}
    for name, shape in reference_tsv("mobilefaceswap_arcface_pdparams.tsv").items():
        torch_name = paddle_name_to_torch(name)
        is_linear = name in {"fc.weight"} or (".se.fc." in name and name.endswith(("0.weight", "2.weight")))
        expected[torch_name] = shape[::-1] if is_linear else shape
    assert own == expected


def test_small_network_gives_normalised_embedding_and_7x7_map_from_any_size():
    model = IRSEArcFace(**SMALL).eval()
    embedding, feature_map = model(torch.rand(3, 3, 96, 80))
    assert embedding.shape == (3, 512) and feature_map.shape == (3, 512, 7, 7)
    assert torch.allclose(embedding.norm(dim=1), torch.ones(3), atol=1e-5)
    assert model.embedding_space == "irse-arcface"


def test_resizing_inside_matches_feeding_112():
    torch.manual_seed(0)
    model = IRSEArcFace(**TINY).eval()
    # smooth content (a face crop is not white noise), so a 2x larger copy holds the same picture
    images = torch.nn.functional.interpolate(torch.rand(2, 3, 14, 14), size=112, mode="bilinear")
    direct = model.features(imagenet_normalize(images))[0]
    assert torch.equal(model(images)[0], direct)  # at 112 nothing is resized
    big = torch.nn.functional.interpolate(images, size=224, mode="bilinear")
    cos = (model(big)[0] * direct).sum(1)
    assert (cos > 0.99).all(), cos  # same content at another resolution -> nearly the same identity


def test_frozen_expert_stays_in_eval_and_passes_gradients_to_the_input():
    model = freeze(IRSEArcFace(**TINY))
    parent = nn.ModuleDict({"expert": model, "head": nn.Linear(2, 2)})
    parent.train()
    assert parent["head"].training and is_frozen(model)
    assert not any(m.training for m in model.modules())
    images = torch.rand(2, 3, 112, 112, requires_grad=True)
    embedding, feature_map = model(images)
    (embedding.sum() + feature_map.mean()).backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())
    # eval BN: the output of one sample does not depend on the rest of the batch
    alone = model(images[:1])[0]
    assert torch.allclose(alone, embedding[:1], atol=1e-5)


def test_resize_to_keeps_label_maps_discrete_with_nearest():
    labels = torch.tensor([[0.0, 1.0], [17.0, 4.0]])[None, None]
    assert set(resize_to(labels, 5, mode="nearest").unique().tolist()) == {0.0, 1.0, 4.0, 17.0}
    assert resize_to(labels, (2, 2)) is labels
    assert resize_to(torch.rand(1, 3, 40, 40), 16).shape == (1, 3, 16, 16)
