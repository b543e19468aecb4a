"""Small experts: trained into a directory with scores, reused when unchanged, resumed exactly after an
interruption, loaded frozen with the shapes later stages rely on."""
import json

import pytest
import torch
from safetensors.torch import load_file

import distilswap
from experts import train as X
from facekit.experts.expert_loader import load_expert_set
from facekit.errors import UserError
from facekit.experts.frozen import is_frozen

# Tiny, and even tinier gaze (EyeNet's fixed 96x160 stem dominates the cost).
TINY = X.make_config("tiny", {"gaze": {"steps": 1, "eval_samples": 1}})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("experts")
    results = X.train_experts(out, TINY, progress=False)
    return out, results


def test_training_writes_checkpoints_and_scores(trained):
    out, results = trained
    for expert in X.EXPERTS:
        assert (out / f"{expert}.safetensors").exists()
        record = json.loads((out / f"{expert}.json").read_text())
        assert record["scores"] == results[expert]["scores"]
        assert not (out / f"{expert}.partial.pt").exists()
    assert 0.0 <= results["embedder"]["scores"]["verification_accuracy"] <= 1.0
    assert 0.0 <= results["parser"]["scores"]["miou"] <= 1.0
    assert results["gaze"]["scores"]["angular_error_deg"] >= 0.0
    summary = json.loads((out / "results.json").read_text())
    assert set(summary) == set(X.EXPERTS)
    assert "verification accuracy" in (out / "results.md").read_text()


def test_loaded_experts_are_frozen_with_the_student_shapes(trained):
    out, _ = trained
    embedder, parser, gaze = load_expert_set(out)
    assert all(is_frozen(m) for m in (embedder, parser, gaze))
    z, feature_map = embedder(torch.rand(2, 3, 96, 96))
    assert z.shape == (2, 512) and feature_map.shape == (2, 512, 7, 7)
    assert torch.allclose(z.norm(dim=1), torch.ones(2), atol=1e-5)
    assert parser(torch.rand(2, 3, 40, 40)).shape == (2, 19, 40, 40)


def test_same_config_is_reused_and_a_changed_one_retrains(trained, monkeypatch):
    out, results = trained

    def refuse(*args, **kwargs):
        raise AssertionError("retrained an expert whose config did not change")

    monkeypatch.setattr(X, "_train_one", refuse)
    assert X.train_experts(out, TINY, progress=False)["parser"]["scores"] == results["parser"]["scores"]
    changed = X.make_config("tiny", {"parser": {"steps": 4}})
    with pytest.raises(AssertionError, match="retrained"):
        X.train_experts(out, changed, experts=("parser",), progress=False)


def test_interrupted_training_resumes_to_the_same_weights(tmp_path, monkeypatch):
    config = X.make_config("tiny", {"parser": {"steps": 4}, "checkpoint_every": 2})
    X.train_experts(tmp_path / "straight", config, experts=("parser",), progress=False)

    real_loss = X._Task.loss

    def interrupted(self, step):
        if step == 3:
            raise KeyboardInterrupt
        return real_loss(self, step)

    monkeypatch.setattr(X._Task, "loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        X.train_experts(tmp_path / "resumed", config, experts=("parser",), progress=False)
    assert torch.load(tmp_path / "resumed" / "parser.partial.pt", weights_only=True)["step"] == 2
    monkeypatch.setattr(X._Task, "loss", real_loss)
    X.train_experts(tmp_path / "resumed", config, experts=("parser",), progress=False)
    a = load_file(str(tmp_path / "straight" / "parser.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "parser.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_scores():
    pos, neg = torch.tensor([0.9, 0.8, 0.3]), torch.tensor([0.1, 0.2, 0.85])
    assert X.best_threshold_accuracy(pos, neg) == pytest.approx(5 / 6)  # t = 0.25: only 0.85 is wrong
    assert X.best_threshold_accuracy(torch.tensor([0.9]), torch.tensor([0.1])) == 1.0
    labels = torch.tensor([[0, 0, 1, 1]])
    assert X.mean_iou(labels, labels) == 1.0
    assert X.mean_iou(torch.tensor([[0, 1, 1, 1]]), labels) == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_arc_margin_head_penalises_the_true_class():
    head = X.ArcMarginHead(4, 3, margin=0.5, scale=1.0)
    z = torch.randn(5, 4)
    labels = torch.tensor([0, 1, 2, 0, 1])
    with_margin = head(z, labels)
    plain = torch.nn.functional.linear(torch.nn.functional.normalize(z), torch.nn.functional.normalize(head.weight))
    rows = torch.arange(5)
    assert (with_margin[rows, labels] < plain[rows, labels]).all()
    others = torch.ones_like(plain, dtype=torch.bool)
    others[rows, labels] = False
    assert torch.allclose(with_margin[others], plain[others], atol=1e-5)


def test_bad_configs_are_user_errors(tmp_path):
    with pytest.raises(UserError):
        X.make_config("huge")
    with pytest.raises(UserError):
        X.make_config("demo", {"parser": {"no_such_field": 1}})
    with pytest.raises(UserError):
        load_expert_set(tmp_path)


def test_cli_trains_and_shows(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    out = tmp_path / "experts"
    config.write_text("parser: {steps: 1}\ngaze: {steps: 0}\n")
    argv = ["experts", "train", "--world", "synthetic", "--out", str(out), "--preset", "tiny", "--only", "parser",
            "gaze", "--config", str(config)]
    assert distilswap.main(argv) == 0
    printed = capsys.readouterr().out
    assert "mIoU" in printed and "gaze: skipped" in printed
    assert not (out / "gaze.json").exists()
    assert distilswap.main(["experts", "show", str(out)]) == 0
    assert distilswap.main(["experts", "show", str(tmp_path / "none")]) == 2
    sheet = tmp_path / "sheet.png"
    assert distilswap.main(["world", "sheet", "--out", str(sheet), "--sources", "1", "--targets", "2", "--size", "32"]) == 0
    assert sheet.exists()
    assert distilswap.main(["world", "sheet", "--out", str(tmp_path / "sheet.jpg")]) == 2
