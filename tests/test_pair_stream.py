"""Pairs in WebDataset shards: the index opens a set without decoding, the stream splits shards over ranks,
resumes exactly from a sample position, skips damaged shards up to its bound, other WebDataset readers read
the shards, and version-1 data sets convert pair for pair."""
import json
import logging

import pytest
import torch
from safetensors.torch import save_file

from facekit import pairs as pair_format
from facekit.errors import UserError
from facekit.pair_convert import convert_v1
from facekit.pair_stream import PairStream
from facekit.pairs import PairDataset, read_index, read_manifest
from teacher.pairs import OracleTeacher, generate_pairs
from teacher_tiny import tiny_experts

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pair_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    generate_pairs(root, OracleTeacher(), tiny_experts(), total=24, shard_size=4, image_size=32, progress=False)
    return root


def _keys(samples, count):
    return [int(next(samples)["json"]["pair_index"]) for _ in range(count)]


def test_the_index_opens_a_set_without_decoding_an_image(pair_dir, monkeypatch):
    def no_decoding(data, name):
        raise AssertionError("an image was decoded")

    monkeypatch.setattr(pair_format, "_decode", no_decoding)
    records = read_index(pair_dir)
    assert [r["pair_index"] for r in records] == list(range(24))
    assert {r["shard"] for r in records} == {f"shard-{k:06d}" for k in range(6)}
    assert all(set(r) >= {"identity", "fraction", "id_similarity", "snapshot_id"} for r in records)
    assert len(PairDataset(pair_dir)) == 24


def test_ranks_read_disjoint_shards_and_a_resumed_stream_sees_the_same_pairs(pair_dir):
    records = read_index(pair_dir)
    ranks = [PairStream(pair_dir, records, seed=3, rank=r, world=2, mix=2) for r in range(2)]
    epochs = [[pair for _, pair in stream.epoch_order(0)] for stream in ranks]
    assert sorted(epochs[0] + epochs[1]) == list(range(24)) and not set(epochs[0]) & set(epochs[1])
    assert ranks[0].epoch_order(1) != ranks[0].epoch_order(0)  # reshuffled every epoch
    straight = _keys(ranks[0].samples(), 30)  # across the end of the first epoch
    assert straight[:12] == epochs[0]
    resumed = _keys(PairStream(pair_dir, records, seed=3, rank=0, world=2, mix=2, workers=3).samples(17), 13)
    assert resumed == straight[17:]


def test_a_stream_mixes_several_shards_into_every_batch_and_holds_only_those(pair_dir):
    """A shard holds one teacher snapshot and distill weighs a batch's pairs against each other only: batches
    must mix shards however many pairs a shard holds, while memory holds only the shards being mixed."""
    records = read_index(pair_dir)
    order = PairStream(pair_dir, records, seed=5, mix=3).epoch_order(0)
    shard_of = {pair: shard for shard, pair in order}
    windows = [order[:12], order[12:]]  # 6 shards of 4 pairs: two windows of 3 shards, each read whole
    assert [len({shard for shard, _ in w}) for w in windows] == [3, 3]
    assert not {shard for shard, _ in windows[0]} & {shard for shard, _ in windows[1]}
    batches = [[pair for _, pair in order[i : i + 4]] for i in range(0, 24, 4)]
    assert all(len({shard_of[p] for p in batch}) >= 2 for batch in batches), batches
    assert len({shard for shard, _ in PairStream(pair_dir, records, seed=5, mix=4).epoch_order(0)[:12]}) == 3  # 6 shards, mix 4: windows of 3 + 3, no lone shard


def test_streamed_pairs_are_the_stored_pairs(pair_dir):
    data = PairDataset(pair_dir)
    wanted = [r for r in data.records if r["pair_index"] % 3 == 0]  # a split: only these are decoded
    samples = PairStream(pair_dir, wanted, seed=0).samples()
    for _ in range(len(wanted)):
        pair = next(samples)
        index = int(pair["json"]["pair_index"])
        assert index % 3 == 0
        stored = data[index]
        assert torch.equal(pair["swap"].float() / 255, stored["swap"]) and torch.equal(pair["truth"].float() / 255, stored["truth"])
        assert pair["mask"].shape == (1, 32, 32)


def test_other_webdataset_readers_read_the_shards(pair_dir):
    webdataset = pytest.importorskip("webdataset")
    urls = [str(p) for p in sorted((pair_dir / "shards").glob("*.tar"))]
    samples = list(webdataset.WebDataset(urls, shardshuffle=False).decode("rgb8"))
    assert [s["__key__"] for s in samples] == [f"{i:09d}" for i in range(24)]
    first = samples[0]
    assert first["swap.png"].shape == (32, 32, 3) and first["json"]["pair_index"] == 0
    assert torch.equal(torch.from_numpy(first["swap.png"].copy()).permute(2, 0, 1).float() / 255, PairDataset(pair_dir)[0]["swap"])


def test_a_damaged_shard_is_skipped_and_named_until_too_many_are(pair_dir, tmp_path, caplog):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(pair_dir, root)
    records = read_index(root)
    (root / "shards" / "shard-000002.tar").write_bytes(b"not a tar at all")
    stream = PairStream(root, records, seed=0, max_bad_fraction=0.2)
    with caplog.at_level(logging.WARNING):
        got = _keys(stream.samples(), 20)
    assert sorted(got) == [i for i in range(24) if not 8 <= i < 12] and "skipping shard-000002.tar" in caplog.text
    (root / "shards" / "shard-000004.tar").write_bytes(b"")
    with pytest.raises(UserError, match="2 of 6 shards are damaged .* more than 20%"):
        _keys(PairStream(root, records, seed=0, max_bad_fraction=0.2).samples(), 20)


def test_a_version_1_set_converts_pair_for_pair_and_old_or_unknown_versions_are_named(tmp_path):
    old = tmp_path / "v1"
    (old / "shards").mkdir(parents=True)
    (old / "progress").mkdir()
    manifest = {"format": "distilswap-pairs", "version": 1, "image_size": 16, "total_pairs": 5, "shard_size": 3,
                "num_shards": 2, "seed": 0, "teacher": {"kind": "oracle", "snapshots": [{"id": "a", "fraction": 0.5},
                                                                                       {"id": "b", "fraction": 1.0}]}}
    (old / "manifest.json").write_text(json.dumps(manifest))
    gen = torch.Generator().manual_seed(0)
    shards = {}
    for k, count in ((0, 3), (1, 2)):
        shards[k] = {"source": torch.randint(0, 256, (count, 3, 16, 16), generator=gen, dtype=torch.uint8),
                     "target": torch.randint(0, 256, (count, 3, 16, 16), generator=gen, dtype=torch.uint8),
                     "swap": torch.randint(0, 256, (count, 3, 16, 16), generator=gen, dtype=torch.uint8),
                     "mask": torch.randint(0, 2, (count, 1, 16, 16), generator=gen, dtype=torch.uint8) * 255,
                     "id_similarity": torch.rand(count, generator=gen), "fraction": torch.full((count,), 0.5),
                     "snapshot": torch.zeros(count, dtype=torch.long), "pair_index": torch.arange(count) + 3 * k}
        save_file(shards[k], str(old / "shards" / f"shard-{k:06d}.safetensors"))
    (old / "progress" / "rank-00000.json").write_text(json.dumps({"shards": {"shard-000000": {"pairs": 3, "dropped": []},
                                                                            "shard-000001": {"pairs": 2, "dropped": []}}}))
    with pytest.raises(UserError, match="version-1 pairs data set: convert it with `distilswap pairs convert"):
        read_manifest(old)
    before = {p: p.read_bytes() for p in old.rglob("*") if p.is_file()}
    summary = convert_v1(old, tmp_path / "v2")
    assert summary["pairs"] == 5 and {p: p.read_bytes() for p in old.rglob("*") if p.is_file()} == before
    data = PairDataset(tmp_path / "v2")
    for i in range(5):
        k, row = divmod(i, 3)
        for key in ("source", "swap", "mask"):
            assert torch.equal(data[i][key], shards[k][key][row].float() / 255)
        assert float(data[i]["id_similarity"]) == pytest.approx(float(shards[k]["id_similarity"][row]))
    manifest_v2 = json.loads((tmp_path / "v2" / "manifest.json").read_text())
    (tmp_path / "v2" / "manifest.json").write_text(json.dumps({**manifest_v2, "version": 7}))
    with pytest.raises(UserError, match="version 7 is unknown to this distilswap"):
        read_manifest(tmp_path / "v2")


def test_training_batches_stream_a_split_and_resume_at_a_step(pair_dir):
    from distill.data import open_pairs, split_by_identity, training_batches

    pairs = open_pairs(pair_dir, progress=False)
    train_idx, _ = split_by_identity(pairs.identities, 0.25, seed=0)
    train = pairs.subset(train_idx)
    straight = training_batches(train, 4, seed=1, stream=True)
    batches = [straight() for _ in range(5)]
    assert {s["pair_id"] for b in batches for s in b} <= set(train.pair_ids)
    assert set(batches[0][0]) >= {"source", "target", "swap", "mask", "truth", "pair_id", "identity", "id_cosine", "fraction"}
    resumed = training_batches(train, 4, seed=1, step=3, stream=True)
    assert [s["pair_id"] for s in resumed()] == [s["pair_id"] for s in batches[3]]
    in_memory = training_batches(train, 4, seed=1)  # the same split drawn from memory
    assert {s["pair_id"] for s in in_memory()} <= set(train.pair_ids)
    for stream in (True, False):  # too few pairs for one batch: refused either way, not repeated pairs
        with pytest.raises(UserError, match="cannot fill one batch"):
            training_batches(train, len(train) + 1, seed=1, stream=stream)


def test_the_format_benchmark_measures_writing_reading_and_size(tmp_path):
    from teacher.pair_bench import bench_pairs

    report = bench_pairs(tmp_path / "bench", sizes=(64,), count=8, shard_size=4, workers=(1, 2))
    row, = report["rows"]
    assert row["pairs"] == 8 and 0 < row["bytes_per_pair"] < row["raw_bytes_per_pair"]
    assert row["write_pairs_per_s"] > 0 and row["read_pairs_per_s_2_threads"] > 0
    assert "| 64² |" in (tmp_path / "bench" / "bench.md").read_text()


def test_a_shard_of_another_resolution_is_refused_with_the_reason(pair_dir, tmp_path):
    import shutil

    other = tmp_path / "other"
    generate_pairs(other, OracleTeacher(), tiny_experts(), total=24, shard_size=4, image_size=16, progress=False)
    root = tmp_path / "copy"
    shutil.copytree(pair_dir, root)
    shutil.copy(other / "shards" / "shard-000003.tar", root / "shards" / "shard-000003.tar")
    with pytest.raises(UserError, match="shard-000003.tar holds 16x16 images but its data set is 32²"):
        _keys(PairStream(root, read_index(root), seed=0).samples(), 24)
