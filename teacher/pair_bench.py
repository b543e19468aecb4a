"""`distilswap pairs bench`: what the pair format costs on this machine: pairs/s encoded and written, pairs/s
streamed back (decoding threads 1, 2, 4), bytes per pair against raw uint8, at the resolutions asked for.

The pairs are synthetic-world faces (source, target, the exact swap as both swap and truth, its mask), rendered
once per resolution, so the timings are the format's alone, not a teacher's."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import torch

from facekit.errors import UserError
from facekit.pair_stream import PairStream
from facekit.pairs import FORMAT, VERSION, claim, read_index, shard_name, write_json, write_shard


def bench_pairs(out: str | Path, sizes: Sequence[int] = (64, 256), count: int = 256, shard_size: int = 64,
                workers: Sequence[int] = (1, 2, 4), codec: str = "png") -> dict:
    from teacher.pairs import synthetic_job  # the synthetic world's pairs, rendered once

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} is not empty; choose a new folder for the benchmark's pairs")
    rows = []
    for size in sizes:
        job = synthetic_job(0, shard_size, size)
        pairs = {"source": job.source, "target": job.target, "swap": job.truth, "truth": job.truth,
                 "mask": job.truth_mask, "id_similarity": torch.ones(shard_size), "fraction": torch.ones(shard_size),
                 "snapshot": torch.zeros(shard_size, dtype=torch.long)}
        root = out / f"{size}"
        shards = max(1, count // shard_size)
        manifest = {"format": FORMAT, "version": VERSION, "image_size": size, "image_codec": codec,
                    "total_pairs": shards * shard_size, "shard_size": shard_size, "num_shards": shards, "seed": 0,
                    "teacher": {"kind": "bench", "snapshots": [{"id": "truth", "fraction": 1.0}]}, "sampling": {}}
        claim(root, manifest)
        progress, stored = {"shards": {}}, 0
        start = time.perf_counter()
        for k in range(shards):
            size_bytes = write_shard(root, k, {**pairs, "pair_index": torch.arange(shard_size) + k * shard_size}, manifest)
            progress["shards"][shard_name(k)] = {"pairs": shard_size, "bytes": size_bytes, "dropped": []}
            write_json(root / "progress" / "rank-00000.json", progress)
            stored += size_bytes
        written = shards * shard_size
        row = {"size": size, "pairs": written, "write_pairs_per_s": written / (time.perf_counter() - start),
               "bytes_per_pair": stored / written, "raw_bytes_per_pair": 13 * size * size,
               "raw_bytes_per_pair_without_truth": 10 * size * size}
        records = read_index(root)
        for threads in workers:
            samples = PairStream(root, records, seed=0, workers=threads).samples()
            start = time.perf_counter()
            for _ in range(written):
                next(samples)
            row[f"read_pairs_per_s_{threads}_threads"] = written / (time.perf_counter() - start)
        rows.append(row)
    report = {"codec": codec, "shard_size": shard_size, "workers": list(workers), "rows": rows}
    write_json(out / "bench.json", report)
    (out / "bench.md").write_text(_markdown(report))
    return report


def _markdown(report: dict) -> str:
    threads = report["workers"]
    head = ["size", "written pairs/s", "kB per pair", "% of raw (with truth)", *[f"read pairs/s, {t} threads" for t in threads]]
    lines = [f"# Pair format cost ({report['codec']}, shards of {report['shard_size']})", "",
             "| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for row in report["rows"]:
        cells = [f"{row['size']}²", f"{row['write_pairs_per_s']:.0f}", f"{row['bytes_per_pair'] / 1e3:.1f}",
                 f"{100 * row['bytes_per_pair'] / row['raw_bytes_per_pair']:.0f} %",
                 *[f"{row[f'read_pairs_per_s_{t}_threads']:.0f}" for t in threads]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Raw: uint8 source, target, swap and truth (3 channels each) and mask (1), as format version 1 stored them."]
    return "\n".join(lines) + "\n"
