"""Export: ONNX/ORT/int8/Core ML artifacts of a tiny student, verified against PyTorch (ONNX Runtime)."""
import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from export import artifacts, verify
from export.artifacts import export_artifacts
from export.coreml_export import _check_weights, check_coreml, coreml_metadata
from facekit.identity import load_identity, save_identity
from export.metadata import REQUIRED_KEYS, onnx_metadata
from export.onnx_export import export_baked, identity_session, run_swapper
from facekit.onnx_runtime import ort_session
from facekit.errors import UserError
from student.checkpoint import load_student, save_student
from student.config import StudentConfig, scaled
from student.model import MobileFaceSwap

RES = 64
TOL = 1e-4


DIM = 64  # a narrow identity space keeps the injector small, so exports are quick


def _identity(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(1, DIM, generator=g), dim=1), torch.randn(1, DIM, 7, 7, generator=g)


def _config(width=0.25):
    return dataclasses.replace(scaled(StudentConfig(resolution=RES), width), identity_dim=DIM)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One tiny student whose identity visibly changes the output, two identities, crops, one full export."""
    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    model = MobileFaceSwap(_config())
    for modulation in (*model.EncoderModulation, *model.DecoderModulation):
        torch.nn.init.normal_(modulation.style.weight, std=2.0)  # random init barely depends on identity
    save_student(model, root / "student.safetensors")
    for name, seed in (("alice", 1), ("bob", 2)):
        embedding, feature_map = _identity(seed)
        save_identity(root / f"{name}.npz", embedding, feature_map)
    (root / "crops").mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        yy, xx = np.mgrid[0:80, 0:72] / 80.0
        image = np.stack([np.sin(3 * xx + i), np.cos(2 * yy + i), xx - yy], -1) * 0.4 + 0.5 + rng.normal(0, 0.03, (80, 72, 3))
        Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).save(root / "crops" / f"{i}.png")
    out = root / "alice_export"
    result = export_artifacts(
        root / "student.safetensors", root / "alice.npz", out, ("onnx", "ort", "int8", "coreml"), calibration=root / "crops"
    )
    return {"root": root, "out": out, "result": result, "model": load_student(root / "student.safetensors")}


def _baked(world, name):
    model = world["model"]
    _, embedding, feature_map = load_identity(world["root"] / f"{name}.npz", DIM)
    return model, model.bake(embedding, feature_map), embedding, feature_map


def test_export_writes_every_artifact_and_verifies(world):
    out = world["out"]
    assert world["result"].ok
    names = {"injector.onnx", "swapper_dynamic.onnx", "swapper_alice.onnx", "swapper_alice.ort", "swapper_alice_int8.onnx",
             "swapper_alice.mlpackage", "swapper_alice_palettized.mlpackage", "mac_check.py", "reference.npz",
             "manifest.json", "verification.json"}
    assert names <= {p.name for p in out.iterdir()}
    assert json.loads((out / "verification.json").read_text())["ok"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".alice_export")], "staging dirs left behind"


def test_every_artifact_carries_metadata(world):
    out = world["out"]
    for name in ("injector.onnx", "swapper_dynamic.onnx", "swapper_alice.onnx", "swapper_alice_int8.onnx"):
        metadata = onnx_metadata(out / name)
        assert all(metadata.get(key) for key in REQUIRED_KEYS), (name, metadata)
    assert onnx_metadata(out / "swapper_alice.onnx")["identity"] == "alice"
    ort_metadata = ort_session(out / "swapper_alice.ort", "disable").get_modelmeta().custom_metadata_map
    assert ort_metadata["identity"] == "alice" and ort_metadata["checkpoint_sha256"]
    assert "calibrated on 4 of 5 centre-cropped images" in onnx_metadata(out / "swapper_alice_int8.onnx")["calibration"]
    for name in ("swapper_alice.mlpackage", "swapper_alice_palettized.mlpackage"):
        metadata = coreml_metadata(out / name)
        assert metadata["identity"] == "alice" and metadata["resolution"] == str(RES)


def test_baked_onnx_matches_torch(world):
    _, net, _, _ = _baked(world, "alice")
    target = torch.rand(1, 3, RES, RES)
    with torch.no_grad():
        image, mask = net(target)
    got_image, got_mask = run_swapper(ort_session(world["out"] / "swapper_alice.onnx", "basic"), target.numpy())
    assert np.abs(got_image - image.numpy()).max() <= TOL
    assert np.abs(got_mask - mask.numpy()).max() <= TOL


def test_baked_mask_tail_has_no_narrow_conv_and_keeps_function_and_macs(world, tmp_path):
    """The mask's 1x1 conv to 2 channels and 3x3 conv to 1 become MatMul and depthwise + ReduceSum (ORT's
    NCHWc pads narrow conv outputs to 8-16 channels); the plain export computes the same with the same MACs."""
    import onnx

    from export.onnx_export import SWAP_OUTPUTS, export_graph
    from export.onnx_macs import onnx_counts

    _, net, _, _ = _baked(world, "alice")
    rewritten = world["out"] / "swapper_alice.onnx"
    plain = export_graph(net, (torch.rand(1, 3, RES, RES),), tmp_path / "plain.onnx", ("target",), SWAP_OUTPUTS, {})
    graph = onnx.load(str(rewritten)).graph
    producer = {out: node for node in graph.node for out in node.output}
    chain, name = [], "mask"
    for _ in range(5):  # Sigmoid <- Add (bias) <- ReduceSum <- depthwise Conv <- LeakyRelu
        chain.append(producer[name])
        name = producer[name].input[0]
    assert [node.op_type for node in chain] == ["Sigmoid", "Add", "ReduceSum", "Conv", "LeakyRelu"]
    assert any(a.name == "group" and a.i > 1 for a in chain[3].attribute)
    assert producer[producer[chain[4].input[0]].input[0]].op_type == "Add"  # the MatMul's bias
    assert "MatMul" in {node.op_type for node in graph.node}
    target = np.random.default_rng(1).random((1, 3, RES, RES), dtype=np.float32)
    for got, want in zip(run_swapper(ort_session(rewritten, "all"), target), run_swapper(ort_session(plain, "all"), target)):
        assert np.abs(got - want).max() <= 1e-6
    assert onnx_counts(rewritten)["macs"] == onnx_counts(plain)["macs"]


def test_injector_and_dynamic_graph_match_torch_at_any_size(world):
    model, _, embedding, feature_map = _baked(world, "bob")
    injector = ort_session(world["out"] / "injector.onnx", "basic")
    names = [o.name for o in injector.get_outputs()]
    weights = dict(zip(names, injector.run(names, {"embedding": embedding.numpy(), "feature_map": feature_map.numpy()})))
    with torch.no_grad():
        expected_weights = model.identity_weights(embedding, feature_map)
    assert set(weights) == set(expected_weights)
    for name, value in weights.items():
        assert np.abs(value - expected_weights[name][0].numpy()).max() <= TOL, name
    target = torch.rand(1, 3, 96, 128)  # the dynamic graph takes flexible sizes
    with torch.no_grad():
        image, mask = model.swap(target, {k: v[0] for k, v in expected_weights.items()})
    got_image, got_mask = run_swapper(ort_session(world["out"] / "swapper_dynamic.onnx", "basic"), target.numpy(), weights)
    assert got_image.shape == (1, 3, 96, 128)
    assert np.abs(got_image - image.numpy()).max() <= TOL and np.abs(got_mask - mask.numpy()).max() <= TOL


def test_add_initializer_swaps_identity_at_baked_graph(world, tmp_path):
    model, bob_net, embedding, feature_map = _baked(world, "bob")
    export_baked(bob_net, tmp_path / "swapper_bob.onnx", {"identity": "bob"})
    target = np.random.default_rng(3).random((1, 3, RES, RES), dtype=np.float32)
    bob_image, _ = run_swapper(ort_session(tmp_path / "swapper_bob.onnx", "basic"), target)
    alice_image, _ = run_swapper(ort_session(world["out"] / "swapper_alice.onnx", "basic"), target)
    with torch.no_grad():
        bob_weights = {k: v[0].numpy() for k, v in model.identity_weights(embedding, feature_map).items()}
    swapped, _ = run_swapper(identity_session(world["out"] / "swapper_alice.onnx", bob_weights, "basic"), target)
    gap = np.abs(bob_image - alice_image).max()
    assert gap > 5e-5, "identities must differ for this test to mean anything"
    assert np.abs(swapped - bob_image).max() <= min(TOL, gap / 100)


def test_coreml_is_image_in_fp16_constant_weights(world):
    import coremltools as ct

    out = world["out"]
    for name in ("swapper_alice.mlpackage", "swapper_alice_palettized.mlpackage"):
        assert check_coreml(out / name, RES) == []
    spec = ct.utils.load_spec(str(out / "swapper_alice.mlpackage"))
    assert spec.description.input[0].type.WhichOneof("Type") == "imageType"
    assert check_coreml(out / "swapper_alice.mlpackage", RES * 2)  # wrong size is reported
    function = spec.mlProgram.functions["main"]
    conv = next(op for op in function.block_specializations[function.opset].operations if op.type == "conv")
    conv.inputs["weight"].arguments[0].name = "target"  # a weight fed at run time must be caught
    assert any("non-constant weight" in problem for problem in _check_weights(spec))
    palettized = out / "swapper_alice_palettized.mlpackage"
    assert _size(palettized) < _size(out / "swapper_alice.mlpackage")


def _size(path):
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def test_verify_catches_a_tampered_artifact(world, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(world["out"], copy)
    assert verify.verify_export(copy).ok
    with np.load(copy / "reference.npz") as data:
        reference = {k: data[k] for k in data.files}
    reference["image"] = reference["image"] + 0.01
    np.savez(copy / "reference.npz", **reference)
    failed = {(c.artifact, c.check) for c in verify.verify_export(copy).failures}
    assert ("swapper_alice.onnx", "max abs vs PyTorch (basic)") in failed
    assert ("swapper_dynamic.onnx", "max abs vs PyTorch (basic)") in failed
    import distilswap

    assert distilswap.main(["export", "verify", str(copy)]) == 1
    (copy / "reference.npz").write_bytes(b"truncated")
    assert distilswap.main(["export", "verify", str(copy)]) == 2  # a one-line error, not a traceback


def test_refuses_existing_out_and_keeps_it_when_verification_fails(world, monkeypatch):
    root, out = world["root"], world["out"]
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(UserError, match="already exists"):
        export_artifacts(root / "student.safetensors", root / "bob.npz", out, ("onnx",))
    # the writing step is covered by the fixture: here copy its files, then really verify, with every parity check failing
    monkeypatch.setattr(artifacts, "write_artifacts", lambda directory, *args: shutil.copytree(out, directory, dirs_exist_ok=True))
    monkeypatch.setattr(verify, "FP32_TOLERANCE", -1.0)
    with pytest.raises(UserError, match="failed verification"):
        export_artifacts(root / "student.safetensors", root / "bob.npz", out, ("onnx",), force=True)
    assert sorted(p.name for p in out.iterdir()) == before  # the good export is untouched
    assert not [p for p in root.iterdir() if p.name.startswith(".")], "half-written files left behind"


def test_bad_input_is_one_line_user_error(world, tmp_path, capsys):
    import distilswap

    root = world["root"]
    base = ["export", "--checkpoint", str(root / "student.safetensors"), "--source", str(root / "alice.npz")]
    (tmp_path / "a_file").write_text("x")
    foreign = tmp_path / "foreign.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(foreign), metadata={"format": "something-else"})
    other_arch = tmp_path / "other_arch.safetensors"  # a student file whose tensors are another architecture's
    tensors = {k: v.contiguous() for k, v in world["model"].state_dict().items()}
    save_file(tensors, str(other_arch), metadata={"format": "distilswap-student/1", "config": json.dumps(_config(0.5).to_dict())})
    cases = [
        (base + ["--out", str(tmp_path / "o1"), "--formats", "onnx,tflite"], "unknown export format"),
        (base + ["--out", str(tmp_path / "a_file")], "is a file"),
        (base + ["--out", str(tmp_path / "o2"), "--formats", "int8"], "--calibration"),
        (["export", "--checkpoint", str(foreign), "--source", str(root / "alice.npz"), "--out", str(tmp_path / "o3")], "not a DistilSwap student"),
        (base[:-1] + [str(tmp_path / "a_file"), "--out", str(tmp_path / "o4")], "unknown source type"),
        (["export", "--checkpoint", str(other_arch), "--source", str(root / "alice.npz"), "--out", str(tmp_path / "o5")], "MobileFaceSwap"),
    ]
    for argv, message in cases:
        assert distilswap.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(("o1", "o2", "o3", "o4", "o5", "."))]


def test_mac_check_script_compares_core_ml_outputs_with_the_reference(world, monkeypatch, capsys):
    """Core ML only predicts on macOS: stand in for MLModel.predict to check the script's own logic."""
    import sys
    import types

    from export import mac_check

    with np.load(world["out"] / "reference.npz") as data:
        reference = {k: data[k] for k in data.files}
    seen = []

    def fake_model(offset):
        class Model:
            def __init__(self, path):
                self.path = path

            def predict(self, inputs):
                pixels = np.asarray(inputs["target"], np.float32).transpose(2, 0, 1)[None] / 255
                seen.append(np.abs(pixels - reference["target"]).max())
                return {"image": reference["image"] + offset, "mask": reference["mask"]}

        return types.SimpleNamespace(models=types.SimpleNamespace(MLModel=Model))

    monkeypatch.setitem(sys.modules, "coremltools", fake_model(1e-3))
    assert mac_check.check_directory(world["out"]) == 0
    assert max(seen) < 1e-6  # the reference target is exactly representable as an 8-bit image
    monkeypatch.setitem(sys.modules, "coremltools", fake_model(0.1))
    assert mac_check.check_directory(world["out"]) == 1
    assert "FAIL swapper_alice.mlpackage" in capsys.readouterr().out


def test_an_int8_file_that_misses_its_bound_is_left_out_unless_required(world, tmp_path, monkeypatch, capsys):
    root = world["root"]
    monkeypatch.setattr(artifacts, "INT8_BOUND", 0.0)  # any real quantization misses a zero bound
    args = (root / "student.safetensors", root / "alice.npz")
    with pytest.raises(UserError, match=r"int8 mean abs error \(crops\) [0-9.e-]+ > bound 0"):
        export_artifacts(*args, tmp_path / "strict", ("onnx", "int8"), calibration=root / "crops", require=("int8",))
    assert not (tmp_path / "strict").exists()
    result = export_artifacts(*args, tmp_path / "lenient", ("onnx", "int8"), calibration=root / "crops")
    assert result.ok
    assert "int8 skipped" in capsys.readouterr().err
    out = tmp_path / "lenient"
    assert not (out / "swapper_alice_int8.onnx").exists() and (out / "swapper_alice.onnx").exists()
    skipped = json.loads((out / "manifest.json").read_text())["skipped"]["swapper_alice_int8.onnx"]
    assert skipped["bound"] == 0.0 and skipped["value"] > 0 and "> bound 0" in skipped["reason"]
    assert verify.verify_export(out).ok  # the directory re-verifies as written
    assert "swapper_alice_int8" not in (out / "README.md").read_text()


def test_int8_keeps_the_whole_mask_head_in_float_and_quantizes_the_rest(world, tmp_path, monkeypatch):
    """The mask gates every pixel between swap and target: quantized, it carried most of int8's error."""
    import onnx

    from export import quantize

    monkeypatch.setattr(quantize, "INT8_MIN_CHANNELS", 0)  # every conv eligible: only the mask rule keeps floats
    _, net, _, _ = _baked(world, "alice")
    baked = export_baked(net, tmp_path / "baked.onnx", {})
    crops, _ = quantize.calibration_crops(world["root"] / "crops", RES)
    int8 = onnx.load(str(quantize.quantize_int8(baked, tmp_path / "int8.onnx", crops)))
    head = quantize.mask_head_nodes(tmp_path / "int8.onnx")
    kinds = {n.name: n.op_type for n in int8.graph.node}
    assert sum(kinds[name] == "Conv" for name in head) >= 5  # the up / depthwise / pointwise blocks
    assert not [name for name in head if "Quantize" in kinds[name]]
    quantized = {n.output[0] for n in int8.graph.node if n.op_type == "DequantizeLinear"}
    convs_on_int8 = [n for n in int8.graph.node if n.op_type == "Conv" and n.input[1] in quantized]  # int8 weights
    assert convs_on_int8 and not [n for n in convs_on_int8 if n.name in head]


def _digest(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_force_replaces_only_an_earlier_export_never_the_inputs(world, tmp_path, capsys):
    import distilswap

    root = world["root"]
    holder = tmp_path / "d"  # the case: the inputs live in the folder --out names
    holder.mkdir()
    shutil.copy(root / "student.safetensors", holder)
    shutil.copy(root / "alice.npz", holder)
    home = tmp_path / "home"  # a folder of the user's that is no export
    home.mkdir()
    (home / "notes.txt").write_text("mine")
    cases = [
        (["--checkpoint", str(holder / "student.safetensors"), "--source", str(holder / "alice.npz"), "--out", str(holder)],
         "not an earlier export"),
        (["--checkpoint", str(root / "student.safetensors"), "--source", str(root / "alice.npz"), "--out", str(home)],
         "not an earlier export"),
    ]
    shutil.copytree(world["out"], tmp_path / "old_export")
    shutil.copy(root / "alice.npz", tmp_path / "old_export" / "input.npz")
    cases.append((["--checkpoint", str(root / "student.safetensors"), "--source", str(tmp_path / "old_export" / "input.npz"),
                   "--out", str(tmp_path / "old_export")], "holds this export's input"))
    for argv, message in cases:
        before = _digest(tmp_path)
        assert distilswap.main(["export", *argv, "--formats", "onnx", "--force"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("distilswap: error:") and message in err and "\n" not in err, err
        assert _digest(tmp_path) == before
