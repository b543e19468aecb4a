"""Quality regressor Q, the reweighting coefficient a, the scores file and the identity split."""
import json
import logging

import pytest
import torch

from facekit.errors import UserError
from distill.data import PairList, split_by_identity
from distill.quality import QualityConfig, load_imagenet, load_quality, predict, save_quality, score_pairs, train_quality
from distill.quality import QualityRegressor, evaluate_fit
from distill.reweight import coefficient, read_scores, raw_coefficient, save_histogram, scores_for, write_scores
from tests.distill_fixtures import synthetic_pairs, tiny_embedder


@pytest.fixture(scope="module")
def pairs():
    return synthetic_pairs(identities=4, per_identity=3, size=32, embedder=tiny_embedder())


def test_coefficient_is_cos_squared_times_q_with_mean_one():
    cosine = torch.tensor([0.9, 0.5, -0.4, 0.9])
    quality = torch.tensor([0.8, 0.8, 0.9, 0.1])
    raw = raw_coefficient(cosine, quality)
    assert torch.allclose(raw, torch.tensor([0.81 * 0.8, 0.25 * 0.8, 0.0, 0.81 * 0.1]))
    a = coefficient(cosine, quality)
    assert a.mean().item() == pytest.approx(1.0)
    assert a[0] > a[1] > a[3] > a[2] == 0  # an identity pointing away from the source gets no weight
    assert torch.equal(coefficient(cosine, quality, "off"), torch.ones(4))
    assert torch.allclose(coefficient(cosine, quality, "quality"), quality / quality.mean())
    assert torch.equal(coefficient(torch.zeros(3), torch.zeros(3)), torch.ones(3))  # no signal: no reweighting
    with pytest.raises(UserError, match="combination"):
        coefficient(cosine, quality, "sum")


def test_split_by_identity_keeps_each_identity_on_one_side():
    identities = [f"id{i % 7}" for i in range(40)]
    train, val = split_by_identity(identities, 0.3, seed=1)
    assert sorted(train + val) == list(range(40)) and train and val
    assert not {identities[i] for i in train} & {identities[i] for i in val}
    # independent of order: the same identities are held out after shuffling
    shuffled = identities[::-1]
    _, val2 = split_by_identity(shuffled, 0.3, seed=1)
    assert {shuffled[i] for i in val2} == {identities[i] for i in val}
    with pytest.raises(UserError, match="at least 2"):
        split_by_identity(["a", "a"], 0.5)


def test_pair_list_refuses_mixed_resolutions(pairs):
    other = synthetic_pairs(identities=2, per_identity=1, size=64)
    with pytest.raises(UserError, match="mix resolutions"):
        PairList.from_records([pairs[i] for i in range(len(pairs))] + [other[0]])


def test_train_save_load_score(pairs, tmp_path):
    config = QualityConfig(input_size=32, steps=3, batch_size=4, val_fraction=0.3)
    model, report = train_quality(pairs, config, progress=False)
    assert report["init"] == "random init"
    assert report["train_pairs"] + report["val_pairs"] == len(pairs)
    assert report["val"]["count"] == report["val_pairs"] > 0
    assert 0 <= report["val"]["mae"] <= 1
    path = save_quality(model, tmp_path / "q.safetensors", pairs.resolution, report)
    loaded = load_quality(path, pair_resolution=32)
    assert torch.allclose(predict(loaded, pairs), predict(model, pairs))
    with pytest.raises(UserError, match="trained on 32² pairs but these pairs are 64²"):
        load_quality(path, pair_resolution=64)

    scores = score_pairs(pairs, loaded)
    assert scores["a"].mean().item() == pytest.approx(1.0, abs=1e-5)
    expected = scores["id_cosine"].clamp(min=0) ** 2 * scores["quality"]
    assert torch.allclose(scores["a"], expected / expected.mean(), atol=1e-6)
    out = write_scores(tmp_path / "scores.json", pairs.pair_ids, {k: v.tolist() for k, v in scores.items()}, {"x": 1})
    table, meta = read_scores(out)
    assert meta == {"x": 1} and set(table) == set(pairs.pair_ids)
    cosine, quality = scores_for(pairs.pair_ids[:3], table, str(out))
    assert torch.allclose(quality, scores["quality"][:3])
    with pytest.raises(UserError, match="1 of 2 pairs have no score"):
        scores_for(["p0000", "nope"], table, str(out))
    png = save_histogram(scores["a"], tmp_path / "a.png", "a")
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temp files


def test_bad_files_are_user_errors(tmp_path):
    (tmp_path / "scores.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(UserError, match="not a DistilSwap scores file"):
        read_scores(tmp_path / "scores.json")
    with pytest.raises(UserError, match="quality score"):
        read_scores(tmp_path / "missing.json")
    (tmp_path / "q.safetensors").write_bytes(b"garbage")
    with pytest.raises(UserError, match="not a readable safetensors"):
        load_quality(tmp_path / "q.safetensors")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(UserError, match="not a torchvision ResNet-18"):
        load_imagenet(QualityRegressor(32), str(tmp_path / "wrong.pth"))


def test_imagenet_weights_load_into_the_trunk(tmp_path):
    from torchvision.models import resnet18

    torch.manual_seed(3)
    reference = resnet18(weights=None)
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    model = QualityRegressor(32)
    assert load_imagenet(model, str(tmp_path / "resnet18.pth")) == "imagenet:resnet18.pth"
    assert torch.equal(model.net.conv1.weight, reference.conv1.weight)
    assert model.net.fc.out_features == 1


def test_spearman_reports_ranking():
    fraction = torch.linspace(0, 1, 10)
    fit = evaluate_fit(fraction**3, fraction)
    assert fit["spearman"] == pytest.approx(1.0) and fit["mae"] > 0
    assert evaluate_fit(-fraction, fraction)["spearman"] == pytest.approx(-1.0)


def test_scores_of_other_pairs_are_refused_and_another_combination_is_named(pairs, caplog):
    from distill.reweight import check_scores_match

    scored = {"pairs_fingerprint": pairs.fingerprint, "combination": "product"}
    with caplog.at_level(logging.WARNING):
        check_scores_match(scored, pairs.fingerprint, "s.json", "product")
        assert not caplog.records
        check_scores_match(scored, pairs.fingerprint, "s.json", "identity")
    assert "scored with --combination product; distill weighs the pairs with --reweight identity" in caplog.text
    other = synthetic_pairs(identities=4, per_identity=3, size=32, seed=5)
    assert other.pair_ids == pairs.pair_ids and other.fingerprint != pairs.fingerprint
    with pytest.raises(UserError, match="computed on another pair set"):
        check_scores_match(scored, other.fingerprint, "s.json", "product")
