"""Distillation: losses and reweighting, the loop's outputs, exact resume, and refusals of bad input."""
import json

import pytest
import torch

from facekit.errors import UserError
from distill.data import split_by_identity
from distill.losses import ExpertPerceptual, LossWeights, background, mask_loss
from distill.train import (DistillConfig, batch_indices, compute_losses, distill, load_distill_config,
                           parameter_groups, recalibrate_batchnorm)
from student.checkpoint import load_student, save_student
from student.config import StudentConfig, scaled
from student.model import MobileFaceSwap
from tests.distill_fixtures import synthetic_pairs, tiny_embedder

TINY = dict(width=0.25, batch_size=4, val_fraction=0.3, amp=False, log_every=1, sample_every=2, checkpoint_every=2)


@pytest.fixture(scope="module")
def embedder():
    return tiny_embedder()


@pytest.fixture(scope="module")
def pairs(embedder):
    return synthetic_pairs(identities=4, per_identity=3, size=32, embedder=embedder)


def tiny_student(identity_dim: int = 32) -> MobileFaceSwap:
    torch.manual_seed(0)
    return MobileFaceSwap(scaled(StudentConfig(resolution=32, identity_dim=identity_dim), 0.25))


def test_weighted_terms_follow_a(pairs, embedder):
    """a scales each pair's teacher-matching loss; the identity and mask terms do not depend on it."""
    from torch.utils.data import default_collate

    student = tiny_student()
    batch = default_collate([pairs[i] for i in range(4)])
    weights = LossWeights(l1=1.0, perceptual=1.0, identity=0.5, mask=2.0)
    perceptual = ExpertPerceptual(embedder)
    args = (student, embedder, None, perceptual, batch)
    zero, terms = compute_losses(*args, torch.zeros(4), weights, 32)
    assert zero.item() == pytest.approx(0.5 * terms["identity"].item() + 2.0 * terms["mask"].item(), rel=1e-5)
    ones, _ = compute_losses(*args, torch.ones(4), weights, 32)
    only_first, _ = compute_losses(*args, torch.tensor([4.0, 0, 0, 0]), weights, 32)
    assert ones.item() > zero.item() and only_first.item() != pytest.approx(ones.item())
    # the mask term pulls the fusion mask to 0 on the target's background only
    keep = background(batch["target"], batch["swap"], batch["mask"], None)
    assert torch.equal(keep, (batch["mask"] < 0.5).float())
    assert mask_loss(torch.ones_like(keep), keep).tolist() == pytest.approx([1.0] * 4)
    assert mask_loss(1 - keep, keep).tolist() == pytest.approx([0.0] * 4)


def test_the_evaluated_student_gets_batchnorm_statistics_of_its_own_weights(pairs, embedder):
    """The EMA carries the live model's BatchNorm statistics, which do not fit the averaged weights (it shut the
    fusion mask of evaluated students). Recalibrated on a batch, eval mode on that batch matches train mode."""
    from torch.utils.data import default_collate

    student = tiny_student()
    config = DistillConfig(**{**TINY, "batch_size": len(pairs)})
    batch = default_collate([pairs[i] for i in batch_indices(len(pairs), len(pairs), config.seed, 0)])
    identity = embedder(batch["source"])

    def eval_vs_train_gap() -> float:
        with torch.no_grad():
            evaluated = torch.cat(student.eval()(batch["target"], *identity), dim=1)
            trained = torch.cat(student.train()(batch["target"], *identity), dim=1)
        return (evaluated - trained).abs().mean().item()

    norms = [m for m in student.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:  # statistics of some other weights
        norm.running_mean.fill_(3.0)
        norm.running_var.fill_(0.01)
    mismatched = eval_vs_train_gap()
    assert recalibrate_batchnorm(student, embedder, pairs, config, 32, torch.device("cpu")) is student
    assert not student.training and all(norm.momentum == 0.1 for norm in norms)
    # left: BatchNorm's unbiased running variance (n/(n−1) on small maps of 12 samples)
    assert eval_vs_train_gap() < min(0.01, mismatched / 10)


def test_ranks_draw_disjoint_batches():
    a = batch_indices(20, 4, seed=0, step=3, rank=0, world=2)
    b = batch_indices(20, 4, seed=0, step=3, rank=1, world=2)
    assert len(a) == len(b) == 4 and not set(a) & set(b)
    assert a == batch_indices(20, 4, seed=0, step=3, rank=0, world=2)
    with pytest.raises(UserError, match="cannot fill one batch"):
        batch_indices(3, 4, 0, 0)


def test_run_writes_student_eval_samples_and_curves(pairs, embedder, tmp_path):
    scores = {pid: {"id_cosine": 0.9, "quality": 0.1 + 0.8 * (i % 2)} for i, pid in enumerate(pairs.pair_ids)}
    config = DistillConfig(steps=2, amp=True, **{k: v for k, v in TINY.items() if k != "amp"})  # bf16 where the CPU has it
    result = distill(pairs, embedder, None, config, tmp_path, scores, "scores", progress=False)
    student = load_student(tmp_path / "student.safetensors")
    assert student.config == scaled(StudentConfig(resolution=32, identity_dim=32), 0.25)
    table = json.loads((tmp_path / "eval.json").read_text())
    for key in ("l1_vs_teacher", "id_sim_source", "mask_iou_teacher", "truth_l1", "truth_psnr_face"):
        assert key in table["student"]
    assert {"id_sim_source", "truth_l1"} <= set(table["teacher"])
    assert table["pairs"] == result["run"]["val_pairs"] > 0
    # what `distilswap compare` groups and names runs by: the held-out set and the settings
    held_out = pairs.subset(split_by_identity(pairs.identities, config.val_fraction, config.seed)[1])
    assert table["held_out"] == held_out.fingerprint
    assert table["run"]["config"] == config.to_dict() and table["run"]["seed"] == config.seed
    assert (tmp_path / "eval.md").read_text().count("| student |") == 1
    assert (tmp_path / "samples" / "step_0000002.png").read_bytes()[:4] == b"\x89PNG"
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_identity_is_judged_by_the_named_model(pairs, embedder):
    """A second recognition model judges identity (the training one flatters the student), the table names
    it, and the ceiling (ground truth) and the teacher's final snapshot get their own rows."""
    from distill.evaluate import evaluate, format_table
    from facekit.experts.arcface import IRSEArcFace
    from facekit.experts.frozen import freeze

    torch.manual_seed(1)
    judge = freeze(IRSEArcFace(blocks=(1, 1, 1, 1), widths=(4, 8, 16, 24), embedding_dim=24))
    student = tiny_student()
    own = evaluate(student, embedder, pairs, 32)
    judged = evaluate(student, embedder, pairs, 32, judge=judge, judge_name="judge.safetensors")
    assert "training embedder" in own["identity_judge"] and judged["identity_judge"] == "judge.safetensors"
    assert judged["student"]["id_sim_source"] != pytest.approx(own["student"]["id_sim_source"])
    assert judged["student"]["truth_l1"] == pytest.approx(own["student"]["truth_l1"])  # only identity changes
    final = max(pairs.fractions.tolist())
    assert judged["final_snapshot_pairs"] == int((pairs.fractions == final).sum()) > 0
    assert judged["target (no swap)"]["truth_l1"] > 0
    for row in ("teacher, final snapshot", "ground truth"):
        assert set(judged[row]) == {"id_sim_source"}
    assert "judged by judge.safetensors" in format_table(judged)


def test_resume_continues_exactly(pairs, embedder, tmp_path):
    tiny = {**TINY, "checkpoint_every": 1}
    straight = DistillConfig(steps=2, reweight="off", **tiny)
    distill(pairs, embedder, None, straight, tmp_path / "a", progress=False)
    distill(pairs, embedder, None, DistillConfig(steps=1, reweight="off", **tiny), tmp_path / "b", progress=False)
    # as an older version wrote it: without settings added since (they resume at their defaults)
    state = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    old = json.loads(state["config"])
    del old["predictor_lr_scale"], old["weights"]["image"]
    torch.save({**state, "config": json.dumps(old)}, tmp_path / "b" / "checkpoint.pt")
    distill(pairs, embedder, None, straight, tmp_path / "b", progress=False)  # same command, longer: resumes
    state_a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    state_b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert state_a["step"] == state_b["step"] == 2
    for key in ("student", "ema"):
        for name, value in state_a[key].items():
            assert torch.equal(value, state_b[key][name]), f"{key}.{name} differs after resume"


@pytest.fixture(scope="module")
def pair_folder(tmp_path_factory, embedder):
    """Pairs on disk in shards (what streaming reads), from the oracle teacher."""
    from teacher.experts import Experts
    from teacher.pairs import OracleTeacher, generate_pairs

    from distill.data import open_pairs

    root = tmp_path_factory.mktemp("pairs") / "pairs"
    generate_pairs(root, OracleTeacher(), Experts(embedder), total=24, shard_size=3, image_size=32, progress=False)
    return open_pairs(root, progress=False)


@pytest.mark.parametrize("stream", [False, True])
def test_a_checkpoint_from_before_the_pair_order_was_recorded_resumes_saying_whether_order_changed(
        pair_folder, embedder, tmp_path, caplog, stream):
    config = DistillConfig(steps=1, reweight="off", stream=stream, **TINY)
    distill(pair_folder, embedder, None, config, tmp_path / "r", progress=False)
    state = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    inputs = json.loads(state["inputs"])
    assert inputs.pop("pair_order") == ("stream/2" if stream else "memory")
    torch.save({**state, "inputs": json.dumps(inputs)}, tmp_path / "r" / "checkpoint.pt")  # as older versions wrote it
    with caplog.at_level("WARNING"):
        distill(pair_folder, embedder, None, DistillConfig(steps=2, reweight="off", stream=stream, **TINY),
                tmp_path / "r", progress=False)
    assert ("reads its pairs in the new order" in caplog.text) == stream  # the in-memory draws never changed
    assert torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)["step"] == 2


def test_ctrl_c_mid_step_finishes_the_step_and_resumes_exactly(pairs, embedder, tmp_path, monkeypatch):
    import signal

    from facekit.training import EMA

    config = DistillConfig(steps=3, reweight="off", **{**TINY, "checkpoint_every": 10})
    distill(pairs, embedder, None, config, tmp_path / "a", progress=False)
    update = EMA.update

    def interrupted_in_step_two(self, model, *args):
        if not hasattr(self, "calls"):
            self.calls = 0
        self.calls += 1
        if self.calls == 2:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C after the optimizer step, before the step is counted
        return update(self, model, *args)

    monkeypatch.setattr(EMA, "update", interrupted_in_step_two)
    with pytest.raises(KeyboardInterrupt):
        distill(pairs, embedder, None, config, tmp_path / "b", progress=False)
    monkeypatch.setattr(EMA, "update", update)
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["step"] == 2  # the step was finished
    distill(pairs, embedder, None, config, tmp_path / "b", progress=False)
    state_a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    state_b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    for key in ("student", "ema"):
        for name, value in state_a[key].items():
            assert torch.equal(value, state_b[key][name]), f"{key}.{name} differs after the interrupted run resumed"


def test_resume_refuses_other_pairs_or_weights(pairs, embedder, tmp_path):
    config = DistillConfig(steps=1, reweight="off", **TINY)
    distill(pairs, embedder, None, config, tmp_path / "r", progress=False)
    longer = DistillConfig(steps=2, reweight="off", **TINY)
    other = pairs.subset(list(range(len(pairs) - 1)))  # one pair fewer: another data set
    with pytest.raises(UserError, match="cannot resume with changed pairs"):
        distill(other, embedder, None, longer, tmp_path / "r", progress=False)
    scores = {pid: {"id_cosine": 1.0, "quality": float(i % 3) / 2} for i, pid in enumerate(pairs.pair_ids)}
    with pytest.raises(UserError, match="reweight"):  # a setting and an input changed: both named
        distill(pairs, embedder, None, DistillConfig(steps=2, **TINY), tmp_path / "r", scores, "s.json",
                progress=False)


def test_refuses_mismatched_inputs(pairs, embedder, tmp_path):
    config = DistillConfig(steps=1, **TINY)
    with pytest.raises(UserError, match="run `distilswap quality score` first"):
        distill(pairs, embedder, None, config, tmp_path / "r", None, progress=False)
    partial = {pid: {"id_cosine": 1.0, "quality": 1.0} for pid in pairs.pair_ids[:2]}
    with pytest.raises(UserError, match="have no score"):
        distill(pairs, embedder, None, config, tmp_path / "r", partial, "s.json", progress=False)
    other = save_student(MobileFaceSwap(scaled(StudentConfig(resolution=32, identity_dim=32), 0.5)), tmp_path / "w.st")
    with pytest.raises(UserError, match="student checkpoint is 32² encoder"):
        distill(pairs, embedder, None, DistillConfig(steps=1, reweight="off", **TINY), tmp_path / "r", init=str(other),
                progress=False)
    distill(pairs, embedder, None, DistillConfig(steps=1, reweight="off", **TINY), tmp_path / "r2", progress=False)
    wider = DistillConfig(steps=2, reweight="off", **{**TINY, "width": 0.5})
    with pytest.raises(UserError, match="another configuration"):
        distill(pairs, embedder, None, wider, tmp_path / "r2", progress=False)
    with pytest.raises(UserError, match="changed lr"):
        distill(pairs, embedder, None, DistillConfig(steps=2, reweight="off", lr=1.0, **TINY), tmp_path / "r2",
                progress=False)


def test_config_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 7\nwidth: 0.5\nweights: {identity: 3.0}\n")
    config = load_distill_config(str(path), {"steps": 9, "lr": None})
    assert (config.steps, config.width, config.weights.identity, config.weights.l1) == (9, 0.5, 3.0, 1.0)
    path.write_text("stepz: 7\n")
    with pytest.raises(UserError, match=r"unknown distill settings \['stepz'\]; known: \['amp'"):
        load_distill_config(str(path))
    path.write_text("weights: {identiy: 3.0}\n")
    with pytest.raises(UserError, match=r"unknown weights settings \['identiy'\]; known: \['identity'"):
        load_distill_config(str(path))
    path.write_text("weights: 3\n")
    with pytest.raises(UserError, match="weights must be a mapping of its settings, got 3"):
        load_distill_config(str(path))


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    from distilswap import main

    assert main(["distill", "--pairs", str(tmp_path / "none"), "--out", str(tmp_path / "o"), "--reweight", "off"]) == 2
    assert "no such pair directory" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["distill_paper.yaml", "distill_finetune.yaml", "distill_synthetic.yaml"])
def test_shipped_configs_load(name):
    from pathlib import Path

    assert load_distill_config(str(Path(__file__).resolve().parents[1] / "configs" / name)).steps > 0


def test_a_fresh_student_learns_to_reproduce_its_input():
    """Trainability from scratch (what the shared base kernels and the slower kernel predictor are for): on
    one batch of faces the generated image gets close to the target in 80 steps of the distillation optimizer;
    without the bases, or with the predictor at the full learning rate, it stays above 0.1."""
    from facekit.world import synthetic as world

    torch.manual_seed(0)
    faces = world.render_batch(world.sample_identities(4, 0), world.sample_attributes(4, 1),
                               world.sample_contexts(4, 2), 64)["image"]
    model = MobileFaceSwap(scaled(StudentConfig(resolution=64, identity_dim=32), 0.25))
    embedding, feature_map = torch.nn.functional.normalize(torch.randn(4, 32), dim=1), torch.randn(4, 32, 7, 7)
    optimizer = torch.optim.Adam(parameter_groups(model, DistillConfig(lr=2e-3, predictor_lr_scale=0.05, steps=1)))
    losses = []
    for _ in range(80):
        image, _ = model(faces, embedding, feature_map, fuse=False)
        loss = (image - faces).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.4 * losses[0] and losses[-1] < 0.09, losses[::10]



DDP_RUN = """
import logging, sys, torch
logging.basicConfig(level=logging.INFO)
sys.path[:0] = [{repo!r}]
torch.set_num_threads(1)
from distill.data import open_pairs
from distill.train import DistillConfig, distill
from tests.distill_fixtures import tiny_embedder
config = DistillConfig(steps=2, width=0.25, batch_size=2, val_fraction=0.3, amp=False, reweight="off",
                       log_every=1, sample_every=2, checkpoint_every=2, stream=True)
distill(open_pairs({pairs!r}, progress=False), tiny_embedder(), None, config, {out!r}, progress=False)
"""


def test_two_process_ddp_run_streams_the_shards_trains_and_writes_once(pair_folder, tmp_path):
    """torchrun with two CPU processes (gloo) streaming WebDataset shards: the same code path as a multi-GPU
    run; each rank reads its own shards, rank 0 alone writes."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_RUN.format(repo=str(Path(__file__).resolve().parents[1]), pairs=str(pair_folder.root),
                                     out=str(tmp_path / "run")))
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script)], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "streaming" in done.stderr
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["step"] == 2
    assert load_student(tmp_path / "run" / "student.safetensors").config.resolution == 32
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["pairs"] > 0
