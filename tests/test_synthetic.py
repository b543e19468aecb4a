"""The synthetic world: deterministic, labels where the shapes are, landmarks on the features, and a swap
truth that keeps everything of the target that identity does not touch."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from facekit.world import synthetic as S
from facekit.errors import UserError
from facekit.world.synthetic_dataset import WorldConfig, contact_sheet, write_dataset

SIZE = 96


def _world(n: int, seed: int):
    ids = S.sample_identities(n, seed)
    return ids, S.sample_attributes(n, seed + 1), S.match_neck(S.sample_contexts(n, seed + 2), ids)


def test_same_seed_same_faces_and_batch_independent():
    a = S.render_batch(*_world(8, 3), size=SIZE)
    b = S.render_batch(*_world(8, 3), size=SIZE)
    for key in ("image", "labels", "landmarks5", "gaze"):
        assert torch.equal(a[key], b[key])
    other = S.render_batch(*_world(8, 4), size=SIZE)
    assert not torch.equal(a["image"], other["image"])
    ids, attrs, ctxs = _world(8, 3)
    alone = S.render_batch(S.index(ids, 5), S.index(attrs, 5), S.index(ctxs, 5), size=SIZE)
    assert torch.equal(alone["image"][0], a["image"][5])


def test_outputs_shapes_ranges_and_classes():
    out = S.render_batch(*_world(16, 0), size=SIZE)
    assert out["image"].shape == (16, 3, SIZE, SIZE) and out["image"].dtype == torch.float32
    assert 0.0 <= out["image"].min() and out["image"].max() <= 1.0
    assert out["labels"].shape == (16, SIZE, SIZE) and out["labels"].dtype == torch.long
    assert out["landmarks5"].shape == (16, 5, 2) and out["gaze"].shape == (16, 2)
    present = set(out["labels"].unique().tolist())
    assert {S.BACKGROUND, S.SKIN, S.L_BROW, S.R_BROW, S.L_EYE, S.R_EYE, S.NOSE, S.U_LIP, S.L_LIP, S.NECK,
            S.HAIR} <= present


def test_landmarks_land_on_the_drawn_features():
    out = S.render_batch(*_world(64, 10), size=SIZE)
    points = out["landmarks5"].floor().long().clamp(0, SIZE - 1)
    rows = torch.arange(64)
    at = [out["labels"][rows, points[:, k, 1], points[:, k, 0]] for k in range(5)]
    assert (at[0] == S.L_EYE).all() and (at[1] == S.R_EYE).all()
    assert (at[2] == S.NOSE).all()
    # Mouth corners are where the lips end: the mouth classes lie within 3 px of each corner.
    mouth = (out["labels"] == S.U_LIP) | (out["labels"] == S.L_LIP) | (out["labels"] == S.MOUTH)
    ys, xs = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    for k in (3, 4):
        corner = out["landmarks5"][:, k]
        near = ((xs[None] + 0.5 - corner[:, 0, None, None]) ** 2 + (ys[None] + 0.5 - corner[:, 1, None, None]) ** 2) < 9
        assert (mouth & near).flatten(1).any(1).all()


def test_neutral_pose_matches_the_arcface_template():
    ids = S.sample_identities(200, 1)
    mean = {name: value.mean(0, keepdim=True) for name, value in ids.items()}
    out = S.render_batch(mean, S.neutral_attributes(1), S.sample_contexts(1, 0), size=112)
    assert torch.allclose(out["landmarks5"][0], S.ARCFACE_TEMPLATE * 112, atol=2.0)


def test_pupils_follow_the_gaze():
    ids, _, ctxs = _world(2, 5)
    attrs = S.neutral_attributes(2)
    attrs["gaze_yaw"] = torch.tensor([-0.5, 0.5])
    out = S.render_batch(S.index(ids, [0, 0]), attrs, S.index(ctxs, [0, 0]), size=SIZE)
    eye = out["labels"] == S.L_EYE
    darkness = (1 - out["image"].mean(1)) * eye
    xs = torch.arange(SIZE, dtype=torch.float32)
    centre = (darkness.sum(1) * xs).sum(1) / darkness.sum((1, 2))
    assert centre[1] > centre[0] + 1.0  # looking right moves the dark pupil right


def test_swap_truth_keeps_the_target_outside_the_identity_region():
    target_ids, attrs, ctxs = _world(32, 20)
    target = S.render_batch(target_ids, attrs, ctxs, size=SIZE)
    sources = S.sample_identities(32, 99)
    # Half the sources at the prior's extremes: the narrowest face with the widest-set, largest eyes,
    # the widest mouth and flattest brows (features that would poke out of a face if anything does).
    for name, extreme in (("face_width", 0), ("eye_spacing", 1), ("eye_size", 1), ("mouth_width", 1), ("brow_arch", 0)):
        sources[name][:16] = S.IDENTITY_RANGES[name][extreme]
    swap = S.swap_truth(sources, attrs, ctxs, size=SIZE)
    region = S.identity_region(attrs, ctxs, SIZE)
    outside = ~region[:, None].expand_as(target["image"])
    assert torch.equal(swap["image"][outside], target["image"][outside])
    assert torch.equal(swap["labels"][~region], target["labels"][~region])
    assert region.float().mean() < 0.6  # the region is the head, not the whole image
    assert (swap["image"] != target["image"]).any(1).flatten(1).any(1).all()  # every face did change
    # The pose is the target's: the eyes, nose and mouth corners move by less than the features differ.
    moved = (swap["landmarks5"] - target["landmarks5"]).norm(dim=-1)
    assert moved.median() < 0.06 * SIZE
    same = S.swap_truth(target_ids, attrs, ctxs, size=SIZE)
    assert torch.equal(same["image"], target["image"])


def test_a_recoloured_target_changes_colour_not_shape():
    """The colour-only yardstick of `teacher evaluate`: the target's labels (shape) with the source's skin."""
    target_ids, attrs, ctxs = _world(8, 30)
    sources = S.sample_identities(8, 31)
    target = S.render_batch(target_ids, attrs, ctxs, size=SIZE)
    recoloured = S.render_batch(S.recoloured(target_ids, sources), attrs, ctxs, size=SIZE)
    truth = S.swap_truth(sources, attrs, ctxs, size=SIZE)
    assert torch.equal(recoloured["labels"], target["labels"])
    skin = (target["labels"] == 1)[:, None].expand_as(target["image"])
    # on the target's skin, the recoloured face is much closer to the truth's colour than the target is
    assert (recoloured["image"] - truth["image"]).abs()[skin].mean() < 0.5 * (target["image"] - truth["image"]).abs()[skin].mean()


def test_dataset_is_deterministic_resumable_and_split_by_identity(tmp_path):
    config = WorldConfig(seed=2, identities=5, per_identity=3, size=64, test_fraction=0.4)
    first = write_dataset(tmp_path / "a", config, progress=False)
    manifest = json.loads((first / "dataset.json").read_text())
    assert manifest["format"] == "distilswap-faces/1" and manifest["num_samples"] == 15
    records = [json.loads(line) for line in (first / "meta.jsonl").read_text().splitlines()]
    assert len(records) == 15
    splits = {}
    for record in records:
        splits.setdefault(record["identity"], set()).add(record["split"])
        labels = np.asarray(Image.open(first / record["labels"]))
        image = np.asarray(Image.open(first / record["image"]))
        assert image.shape == (64, 64, 3) and labels.shape == (64, 64) and labels.max() <= 18
        x, y = (int(v) for v in record["landmarks5"][0])
        assert labels[y, x] == S.L_EYE
    assert all(len(s) == 1 for s in splits.values())
    assert sorted(s.pop() for s in splits.values()).count("test") == 2

    # An interrupted second write (meta and manifest missing, one image gone) finishes to the same bytes.
    second = tmp_path / "b"
    write_dataset(second, config, progress=False)
    (second / "dataset.json").unlink()
    (second / records[4]["image"]).unlink()
    write_dataset(second, config, progress=False)
    for record in records:
        for key in ("image", "labels"):
            assert (first / record[key]).read_bytes() == (second / record[key]).read_bytes()
    assert (first / "meta.jsonl").read_bytes() == (second / "meta.jsonl").read_bytes()

    with pytest.raises(UserError):
        write_dataset(first, WorldConfig(seed=3, identities=5, per_identity=3, size=64), progress=False)


def test_contact_sheet_layout():
    sheet = contact_sheet(sources=2, targets=3, size=32, seed=0, gap=2)
    assert sheet.shape == (3, 3 * 34 + 2, 4 * 34 + 2)
    assert torch.equal(sheet[:, 2:34, 2:34], torch.ones(3, 32, 32))  # the empty corner
