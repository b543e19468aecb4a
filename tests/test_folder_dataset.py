import json
from pathlib import Path

import numpy as np
import pytest
import torch

from facekit.experts.arcface import IRSEArcFace
from facekit.errors import UserError
from facekit.world.folder_dataset import FORMAT, FolderDataset, write_dataset_json
from facekit.experts.frozen import freeze
from facekit.faces.imageio import read_image, write_image

insightface = pytest.importorskip("insightface")
SAMPLES = Path(insightface.__file__).parent / "data" / "images"


def _write_synthetic_style(root: Path, n: int = 4, size: int = 32) -> None:
    """What the synthetic world writes: aligned PNGs with labels, gaze and landmarks."""
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        identity = f"id{i % 2}"
        write_image(root / f"images/{identity}/{i}.png", rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        write_image(root / f"labels/{identity}/{i}.png", (np.arange(size * size).reshape(size, size) % 19).astype(np.uint8))
        lines.append({
            "image": f"images/{identity}/{i}.png", "identity": identity, "split": "test" if i == 3 else "train",
            "landmarks5": [[8, 12], [24, 12], [16, 18], [10, 24], [22, 24]], "labels": f"labels/{identity}/{i}.png",
            "gaze": [0.1 * i, -0.2], "attributes": {"age": 30 + i},
        })
    (root / "meta.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    write_dataset_json(root, size, True, n)


def test_reads_the_shared_format_with_all_optional_fields(tmp_path):
    _write_synthetic_style(tmp_path)
    train = FolderDataset(tmp_path, split="train")
    assert len(train) == 3 and len(FolderDataset(tmp_path, split="test")) == 1
    sample = train[1]
    assert sample["image"].shape == (3, 32, 32) and sample["image"].dtype == torch.float32
    assert 0 <= sample["image"].min() and sample["image"].max() <= 1
    assert sample["identity"] == "id1" and sample["index"] == 1
    assert sample["labels"].dtype == torch.int64 and sample["labels"].max() == 18
    assert torch.allclose(sample["gaze"], torch.tensor([0.1, -0.2]))
    resized = FolderDataset(tmp_path, resolution=16)[0]
    assert resized["image"].shape == (3, 16, 16) and resized["labels"].shape == (16, 16)
    assert torch.allclose(resized["landmarks5"][0], torch.tensor([4.0, 6.0]))


def test_bad_sample_is_skipped_and_reported(tmp_path, capsys):
    _write_synthetic_style(tmp_path)
    (tmp_path / "images/id0/2.png").write_bytes(b"broken")
    dataset = FolderDataset(tmp_path)
    assert dataset[2]["index"] == 3  # the next good one
    assert "images/id0/2.png" in dataset.bad_files and "2.png" in capsys.readouterr().err
    assert list(FolderDataset(tmp_path).check()) == ["images/id0/2.png"]


def test_wrong_format_and_bad_meta_lines_are_clear_errors(tmp_path):
    _write_synthetic_style(tmp_path)
    (tmp_path / "meta.jsonl").write_text('{"image": "a.png", "identity": "x", "split": "val"}\n')
    with pytest.raises(UserError, match=r"meta.jsonl:1: split"):
        FolderDataset(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"format": "other/2", "resolution": 8}))
    with pytest.raises(UserError, match=FORMAT):
        FolderDataset(tmp_path)


class CountingDetector:
    def __init__(self):
        from facekit.faces.detect import DlibDetector

        self.inner, self.calls = DlibDetector(upsample=0), 0

    def detect(self, image):
        self.calls += 1
        return self.inner.detect(image)


def test_from_images_aligns_caches_embeddings_resumes_and_reports_bad_files(tmp_path, capsys):
    source, cache = tmp_path / "photos", tmp_path / "cache"
    hanks = read_image(SAMPLES / "Tom_Hanks_54745.png")
    big = np.kron(hanks, np.ones((2, 2, 1), np.uint8))  # 224², so the detector needs no upsampling
    write_image(source / "hanks/a.png", big)
    write_image(source / "hanks/b.jpg", big[:, ::-1])
    write_image(source / "blank/none.png", np.full((224, 224, 3), 90, np.uint8))
    (source / "hanks/broken.jpg").write_bytes(b"\xff\xd8\xff truncated")
    detector = CountingDetector()
    embedder = freeze(IRSEArcFace(blocks=(1, 1, 1, 1), widths=(8, 16, 16, 32)))
    dataset = FolderDataset.from_images(source, cache, resolution=64, detector=detector, embedder=embedder)
    assert len(dataset) == 2 and set(dataset.identities) == {"hanks"}
    assert sorted(dataset.bad_files) == ["blank/none.png", "hanks/broken.jpg"]
    err = capsys.readouterr().err
    assert "2 of 4 images skipped" in err and "no face found" in err and "broken.jpg" in err
    info = json.loads((cache / "dataset.json").read_text())
    assert info == {"format": FORMAT, "resolution": 64, "aligned": True, "num_samples": 2, "alignment": "ffhq",
                    "embedding_space": "irse-arcface"}
    sample = dataset[0]
    assert sample["image"].shape == (3, 64, 64) and sample["embedding"].shape == (512,)
    with torch.no_grad():
        assert torch.allclose(sample["embedding"], embedder(sample["image"][None])[0][0], atol=1e-4)
    eyes = sample["landmarks5"][:2]
    assert 0.3 * 64 < eyes[:, 0].mean() < 0.7 * 64 and eyes[0, 0] < eyes[1, 0]
    calls = detector.calls
    again = FolderDataset.from_images(source, cache, resolution=64, detector=detector, embedder=embedder)
    assert len(again) == 2 and detector.calls - calls == 1  # only the faceless photo is detected again
    assert (cache / "meta.jsonl").read_text().count("\n") == 2


def test_flat_aligned_folder_gives_one_identity_per_file(tmp_path):
    for i in range(3):
        write_image(tmp_path / "ffhq" / f"{i:05d}.png", np.full((40, 40, 3), 40 * i, np.uint8))
    dataset = FolderDataset.from_images(tmp_path / "ffhq", tmp_path / "cache", resolution=32, aligned=True)
    assert sorted(dataset.identities) == ["00000", "00001", "00002"]
    assert dataset[2]["image"].shape == (3, 32, 32) and "landmarks5" not in dataset[2]
    with pytest.raises(UserError, match="no images"):
        FolderDataset.from_images(tmp_path / "empty", tmp_path / "c2")


def test_faces_command_builds_resumes_and_refuses_other_crop_settings(tmp_path, capsys):
    import distilswap

    for identity in ("ann", "bob"):
        for i in range(2):
            write_image(tmp_path / "photos" / identity / f"{i}.png", np.full((40, 40, 3), 60 * i + 30, np.uint8))
    argv = ["faces", "--photos", str(tmp_path / "photos"), "--out", str(tmp_path / "faces"), "--resolution", "32",
            "--aligned", "--test-fraction", "0"]
    assert distilswap.main(argv) == 0
    assert "4 faces of 2 identities" in capsys.readouterr().out
    dataset = FolderDataset(tmp_path / "faces", "train")
    assert sorted(set(dataset.identities)) == ["ann", "bob"] and dataset[0]["image"].shape == (3, 32, 32)
    assert distilswap.main(argv) == 0  # a rerun resumes: nothing is appended twice
    assert (tmp_path / "faces" / "meta.jsonl").read_text().count("\n") == 4
    before = (tmp_path / "faces" / "dataset.json").read_text()
    assert distilswap.main(argv[:-4] + ["64", "--aligned"]) == 2  # other crop size into the same folder
    assert "holds crops of 32 px" in capsys.readouterr().err
    assert (tmp_path / "faces" / "dataset.json").read_text() == before
