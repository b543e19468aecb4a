"""Pairs: the shard format round-trips, a killed run resumes with no lost/duplicated/half-written pair."""
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from facekit.errors import UserError
from facekit import pairs as pair_format
from facekit.pairs import PairDataset, finished_shards, read_manifest
from teacher import pairs as pairs_module
from teacher.pairs import OracleTeacher, generate_pairs
from teacher_tiny import tiny_experts

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add overhead


def pair_indices(root):
    return sorted(int(item["pair_index"]) for item in PairDataset(root))


def test_format_roundtrip_and_oracle_degrades_with_fraction(tmp_path):
    summary = generate_pairs(tmp_path, OracleTeacher((0.1, 1.0)), tiny_experts(), total=6, shard_size=4,
                             image_size=32, seed=3, progress=False)
    assert summary == {"written": 6, "dropped": 0, "shards": 2}
    manifest = read_manifest(tmp_path)
    assert manifest["teacher"]["snapshots"] == [{"id": "oracle@0.1", "fraction": 0.1}, {"id": "oracle@1", "fraction": 1.0}]
    data = PairDataset(tmp_path)
    assert len(data) == 6 and pair_indices(tmp_path) == list(range(6))
    item = data[0]
    assert item["source"].shape == item["target"].shape == item["swap"].shape == (3, 32, 32)
    assert item["mask"].shape == (1, 32, 32) and set(item["mask"].unique().tolist()) <= {0.0, 1.0}
    for item in data:
        outside = 1 - item["mask"]
        assert torch.allclose(item["swap"] * outside, item["target"] * outside, atol=1 / 255)
        assert -1 <= float(item["id_similarity"]) <= 1
        assert float(item["fraction"]) == pytest.approx(manifest["teacher"]["snapshots"][int(item["snapshot"])]["fraction"])
        if float(item["fraction"]) == 1.0:  # synthetic pairs carry the exact swap; the final oracle snapshot is it
            assert torch.allclose(item["swap"] * item["mask"], item["truth"] * item["mask"], atol=1 / 255)
    # an early snapshot is further from the truth than the final one
    job = pairs_module.synthetic_job(0, 4, 32)
    early, _, _ = OracleTeacher((0.1,)).swap(job, 0, torch.Generator())
    final, _, _ = OracleTeacher((1.0,)).swap(job, 0, torch.Generator())
    assert torch.allclose(final, job.target * (1 - job.truth_mask) + job.truth * job.truth_mask)
    assert (early - job.truth).abs().mean() > (final - job.truth).abs().mean()


SLOW_RUN = textwrap.dedent("""
    import sys, time, torch
    sys.path[:0] = [{repo!r}, {tests!r}]
    torch.set_num_threads(1)
    from teacher.pairs import OracleTeacher, generate_pairs
    from teacher_tiny import tiny_experts

    class SlowOracle(OracleTeacher):
        def swap(self, job, snapshot, generator):
            time.sleep(0.15)
            return super().swap(job, snapshot, generator)

    generate_pairs({root!r}, SlowOracle((0.5, 1.0)), tiny_experts(), total=30, shard_size=3, image_size=32,
                   seed=1, progress=False)
""")


def test_killed_run_resumes_without_lost_or_duplicated_pairs(tmp_path):
    root = tmp_path / "pairs"
    script = SLOW_RUN.format(repo=str(REPO), tests=str(TESTS), root=str(root))
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "WORLD_SIZE": "1", "RANK": "0"})
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None and len(
                finished_shards(root) if (root / "progress").is_dir() else {}) < 2:
            time.sleep(0.05)
        time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        returncode = proc.wait()
    partial = len(finished_shards(root))
    assert returncode == -signal.SIGKILL, f"the generator exited on its own (code {returncode})"
    assert 2 <= partial < 10, f"the run must be killed mid-way ({partial} shards done)"
    # simulate the worst moment too: a half-written temporary of this rank is left behind
    (root / "shards" / ".shard-000009.abc123.tar").write_bytes(b"half a shard")
    summary = generate_pairs(root, OracleTeacher((0.5, 1.0)), tiny_experts(), total=30, shard_size=3,
                             image_size=32, seed=1, progress=False)
    assert summary["shards"] == 10 - partial
    assert pair_indices(root) == list(range(30))
    assert not list((root / "shards").glob(".*"))
    assert len(finished_shards(root)) == 10
    # the resumed data set is the one an uninterrupted run writes
    straight = tmp_path / "straight"
    generate_pairs(straight, OracleTeacher((0.5, 1.0)), tiny_experts(), total=30, shard_size=3, image_size=32,
                   seed=1, progress=False)
    a, b = PairDataset(root), PairDataset(straight)
    for i in (0, 13, 29):
        assert torch.equal(a[i]["swap"], b[i]["swap"]) and torch.allclose(a[i]["id_similarity"], b[i]["id_similarity"])
    with pytest.raises(UserError, match="different settings"):
        generate_pairs(root, OracleTeacher((0.5, 1.0)), tiny_experts(), total=31, shard_size=3, image_size=32,
                       seed=1, progress=False)


def test_disk_full_leaves_no_shard_and_resume_works(tmp_path, monkeypatch):
    real = pair_format._add
    calls = []

    def failing(out, name, data):
        calls.append(name)
        if len(calls) == 6 * 4 + 1:  # the first member of the second shard (6 members a pair, 4 pairs a shard)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(out, name, data)

    monkeypatch.setattr(pair_format, "_add", failing)
    with pytest.raises(UserError, match="No space left on device.*rerun"):
        generate_pairs(tmp_path, OracleTeacher(), tiny_experts(), total=8, shard_size=4, image_size=32, progress=False)
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["shard-000000.tar"]  # no temporary left
    monkeypatch.setattr(pair_format, "_add", real)
    generate_pairs(tmp_path, OracleTeacher(), tiny_experts(), total=8, shard_size=4, image_size=32, progress=False)
    assert pair_indices(tmp_path) == list(range(8))


def test_nan_pair_is_dropped_and_logged(tmp_path, caplog):
    class SometimesNaN(OracleTeacher):
        def swap(self, job, snapshot, generator):
            swap, mask, valid = super().swap(job, snapshot, generator)
            swap[0] = float("nan")
            return swap, mask, valid

    with caplog.at_level("WARNING"):
        summary = generate_pairs(tmp_path, SometimesNaN((1.0,)), tiny_experts(), total=6, shard_size=3,
                                 image_size=32, progress=False)
    assert summary == {"written": 4, "dropped": 2, "shards": 2}
    assert pair_indices(tmp_path) == [1, 2, 4, 5]
    assert "pair 3 dropped" in caplog.text
    progress = json.loads((tmp_path / "progress" / "rank-00000.json").read_text())
    assert progress["shards"]["shard-000001"]["dropped"][0]["pair"] == 3


def test_diffusion_teacher_on_a_folder_data_set(tmp_path):
    """Real-photo route: pairs of different people from a facekit folder data set, swapped by a teacher."""
    from facekit.world.folder_dataset import write_dataset_json
    from facekit.faces.imageio import write_image
    from teacher.checkpoint import save_weights
    from teacher.pairs import DiffusionTeacher
    from teacher.sampling import load_swap_config
    from teacher_tiny import tiny_unet

    faces = tmp_path / "faces"
    rng = torch.Generator().manual_seed(0)
    faces.mkdir()
    with open(faces / "meta.jsonl", "w") as meta:
        for person in ("ann", "ben"):
            for k in range(2):
                write_image(faces / f"{person}{k}.png", torch.rand(48, 48, 3, generator=rng).numpy())
                meta.write(json.dumps({"image": f"{person}{k}.png", "identity": person, "split": "train",
                                       "landmarks5": None}) + "\n")
    write_dataset_json(faces, 48, True, 4)
    save_weights(tiny_unet(), tmp_path / "teacher.safetensors", {"snapshot_id": "t1", "fraction": 0.5})
    experts = tiny_experts()
    config = load_swap_config("paper", {"respacing": 4, "skip": 1, "views": 2, "mask_ramp": 2, "gaze_weight": 0})
    teacher = DiffusionTeacher([str(tmp_path / "teacher.safetensors")], experts, config)
    summary = generate_pairs(tmp_path / "pairs", teacher, experts, total=3, shard_size=3, image_size=32,
                             progress=False, data=str(faces))
    assert summary["written"] + summary["dropped"] == 3
    data = PairDataset(tmp_path / "pairs")
    assert read_manifest(tmp_path / "pairs")["data"] == str(faces)
    assert all(float(item["fraction"]) == 0.5 and item["snapshot_id"] == "t1" for item in data)
    # each pair records its source's person, so the held-out split keeps all photos of one person on one side
    assert {record["identity"] for record in data.records} <= {"ann", "ben"}
    with pytest.raises(UserError, match="oracle"):
        generate_pairs(tmp_path / "o", OracleTeacher(), experts, total=3, image_size=32, data=str(faces))


def test_a_diffusion_teacher_samples_with_its_snapshots_noise_and_refuses_mixed_ones(tmp_path):
    from teacher.checkpoint import save_weights
    from teacher.pairs import DiffusionTeacher
    from teacher.sampling import load_swap_config
    from teacher_tiny import tiny_unet

    config = load_swap_config("demo")
    for name, share in (("white", 0.0), ("smooth", 0.2), ("smooth_later", 0.2)):
        save_weights(tiny_unet(), tmp_path / f"{name}.safetensors", {"low_frequency_noise": share})
    paths = [str(tmp_path / f"{name}.safetensors") for name in ("smooth", "smooth_later")]
    assert DiffusionTeacher(paths, tiny_experts(), config).settings()["low_frequency_noise"] == 0.2
    assert "low_frequency_noise" not in DiffusionTeacher([str(tmp_path / "white.safetensors")], tiny_experts(),
                                                         config).settings()
    with pytest.raises(UserError, match=r"trained with different noise \(low_frequency_noise \[0.0, 0.2\]\)"):
        DiffusionTeacher([str(tmp_path / "white.safetensors"), paths[0]], tiny_experts(), config)


def tiny_onnx_swapper(path, size=16):
    """A stand-in one-shot swapper with inswapper's interface (batch 1): out = sigmoid(2·target + W·source)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(0).normal(size=(512, 3)).astype(np.float32), "W")
    shape = numpy_helper.from_array(np.array([1, 3, 1, 1], dtype=np.int64), "shape")
    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")
    emap = numpy_helper.from_array(np.eye(512, dtype=np.float32), "emap")
    nodes = [helper.make_node("MatMul", ["source", "W"], ["s3"]), helper.make_node("Reshape", ["s3", "shape"], ["s4"]),
             helper.make_node("Mul", ["target", "two"], ["t2"]), helper.make_node("Add", ["t2", "s4"], ["sum"]),
             helper.make_node("Sigmoid", ["sum"], ["output"])]
    graph = helper.make_graph(
        nodes, "swapper",
        [helper.make_tensor_value_info("target", TensorProto.FLOAT, [1, 3, size, size]),
         helper.make_tensor_value_info("source", TensorProto.FLOAT, [1, 512])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, size, size])],
        [weight, shape, two, emap])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_onnx_swapper_teacher_writes_the_same_format(tmp_path):
    from teacher.pairs import OnnxTeacher

    tiny_onnx_swapper(tmp_path / "swapper.onnx")
    experts = tiny_experts()
    teacher = OnnxTeacher(str(tmp_path / "swapper.onnx"), experts, use_emap=True)
    summary = generate_pairs(tmp_path / "pairs", teacher, experts, total=3, shard_size=2, image_size=32, progress=False)
    assert summary == {"written": 3, "dropped": 0, "shards": 2}
    data = PairDataset(tmp_path / "pairs")
    item = data[0]
    assert item["swap"].shape == (3, 32, 32) and float(item["fraction"]) == 1.0
    outside = 1 - item["mask"]
    assert torch.allclose(item["swap"] * outside, item["target"] * outside, atol=1 / 255)
    assert read_manifest(tmp_path / "pairs")["teacher"]["kind"] == "onnx"
    import onnx

    import numpy as np
    from onnx import numpy_helper

    model = onnx.load(str(tmp_path / "swapper.onnx"))  # the identity a constant: one input, not a one-shot swapper
    model.graph.input.pop()
    model.graph.initializer.append(numpy_helper.from_array(np.zeros((1, 512), np.float32), "source"))
    onnx.save(model, tmp_path / "bad.onnx")
    with pytest.raises(UserError, match=r"needs two inputs, a \[B,3,S,S\] face crop and a \[B,D\] identity vector; "
                       r"found target \(rank 4\)"):
        OnnxTeacher(str(tmp_path / "bad.onnx"), experts)


def simswap_like(path, size=16):
    """A SimSwap-style stand-in with its own input names, fed an ImageNet-normalised crop: it undoes the
    normalisation and adds 0·W·identity, so run the right way it returns the crop unchanged."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.zeros((512, 3), np.float32), "W"),
             numpy_helper.from_array(np.array([-1, 3, 1, 1], dtype=np.int64), "shape"),
             numpy_helper.from_array(np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1), "std"),
             numpy_helper.from_array(np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1), "mean")]
    nodes = [helper.make_node("MatMul", ["id_latent", "W"], ["s3"]), helper.make_node("Reshape", ["s3", "shape"], ["s4"]),
             helper.make_node("Mul", ["img", "std"], ["a"]), helper.make_node("Add", ["a", "mean"], ["b"]),
             helper.make_node("Add", ["b", "s4"], ["result"])]
    graph = helper.make_graph(
        nodes, "simswap",
        [helper.make_tensor_value_info("img", TensorProto.FLOAT, ["N", 3, size, size]),
         helper.make_tensor_value_info("id_latent", TensorProto.FLOAT, ["N", 512])],
        [helper.make_tensor_value_info("result", TensorProto.FLOAT, ["N", 3, size, size])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_a_simswap_style_swapper_with_its_own_input_names_and_imagenet_pixels(tmp_path):
    import numpy as np

    from facekit.onnx_swapper import OneShotOnnxSwapper

    simswap_like(tmp_path / "simswap.onnx")
    crops = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
    latent = np.ones((1, 512), np.float32)
    swapper = OneShotOnnxSwapper(tmp_path / "simswap.onnx", pixels="imagenet")
    assert (swapper.image_input, swapper.vector_input, swapper.batched) == ("img", "id_latent", True)
    assert np.allclose(swapper(crops, latent), crops, atol=1e-6)
    assert not np.allclose(OneShotOnnxSwapper(tmp_path / "simswap.onnx")(crops, latent), crops, atol=1e-2)
    with pytest.raises(UserError, match="--onnx-pixels bgr: not one of unit, imagenet, signed"):
        OneShotOnnxSwapper(tmp_path / "simswap.onnx", pixels="bgr")


def test_pairs_never_mix_into_another_folder_and_refuse_empty_sets(tmp_path):
    faces = tmp_path / "faces"  # e.g. a face data set
    faces.mkdir()
    (faces / "dataset.json").write_text("{}")
    (faces / "p0.png").write_bytes(b"png")
    before = sorted(p.name for p in faces.rglob("*"))
    with pytest.raises(UserError, match="already holds other files .*dataset.json"):
        generate_pairs(faces, OracleTeacher(), tiny_experts(), total=4, shard_size=4, image_size=32, progress=False)
    assert sorted(p.name for p in faces.rglob("*")) == before
    for total, shard in ((0, 4), (4, 0)):
        with pytest.raises(UserError, match="--total and --shard-size must be at least 1"):
            generate_pairs(tmp_path / "new", OracleTeacher(), tiny_experts(), total=total, shard_size=shard,
                           image_size=32, progress=False)
    assert not (tmp_path / "new").exists()


def test_a_damaged_shard_is_named_and_the_rerun_writes_it_again(tmp_path):
    generate_pairs(tmp_path, OracleTeacher(), tiny_experts(), total=8, shard_size=4, image_size=32, progress=False)
    shard = tmp_path / "shards" / "shard-000001.tar"
    good = shard.read_bytes()
    shard.write_bytes(good[:4000])  # truncated after it was finished
    with pytest.raises(UserError, match="shard-000001.tar is damaged: delete it and rerun"):
        PairDataset(tmp_path)
    generate_pairs(tmp_path, OracleTeacher(), tiny_experts(), total=8, shard_size=4, image_size=32, progress=False)
    assert shard.read_bytes() == good and pair_indices(tmp_path) == list(range(8))
    progress = tmp_path / "progress" / "rank-00000.json"
    progress.write_text(progress.read_text()[:20])  # the record of finished shards cut short
    with pytest.raises(UserError, match="rank-00000.json: damaged, not valid JSON .*delete it and rerun"):
        generate_pairs(tmp_path, OracleTeacher(), tiny_experts(), total=8, shard_size=4, image_size=32, progress=False)
    progress.unlink()
    generate_pairs(tmp_path, OracleTeacher(), tiny_experts(), total=8, shard_size=4, image_size=32, progress=False)
    assert shard.read_bytes() == good and pair_indices(tmp_path) == list(range(8))


def test_a_second_writer_into_the_same_folder_is_refused(tmp_path):
    from teacher.pairs import _lock

    generate_pairs(tmp_path, OracleTeacher(), tiny_experts(), total=4, shard_size=4, image_size=32, progress=False)
    held = _lock(tmp_path / "progress" / ".lock-rank-00000")  # as a running writer holds it
    with pytest.raises(UserError, match="another `pairs generate` is writing into"):
        generate_pairs(tmp_path, OracleTeacher(), tiny_experts(), total=4, shard_size=4, image_size=32, progress=False)
    held.close()
    generate_pairs(tmp_path, OracleTeacher(), tiny_experts(), total=4, shard_size=4, image_size=32, progress=False)
