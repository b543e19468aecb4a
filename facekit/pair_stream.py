"""Streaming pairs from WebDataset shards for training at scale: shards split across ranks, several shards
mixed at once, several threads decoding, and an exact resume from a sample position.

The order of one rank's samples is computed from the metadata index alone (no image is read for it): per
epoch, the shards holding wanted pairs are permuted with the seed, every `world`-th goes to this rank, and its
shards are read `mix` at a time, the pairs of those shards shuffled together. A shard holds one teacher
snapshot, and `distill` weighs the pairs of a batch against each other only, so a batch must draw from
several shards whatever their size: a shuffle buffer counted in pairs would not, once shards hold more pairs
than it. Sample n of a rank is a pure function of (seed, rank, world, n): a run resumed at step s starts at
sample s·batch and sees exactly the data it would have seen. Decoding follows that order: shards are decoded
whole (wanted pairs only) by a pool of threads, ahead of use, and dropped once their last pair is handed out,
so memory holds about `mix` shards and those being decoded ahead.
"""
from __future__ import annotations

import logging
import random
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

from facekit.errors import UserError
from facekit.pairs import ShardMismatch, read_manifest, read_shard, shard_path

log = logging.getLogger(__name__)

ORDER_VERSION = 2  # of `epoch_order`: a resumed run checks it (1: a 256-pair shuffle buffer; 2: shards mixed)


class PairStream:
    """Pairs (decoded as `read_shard` gives them) for one rank, endlessly, epoch after epoch.

    records: the index rows of the wanted pairs (e.g. a training split), the same list on every rank.
    max_bad_fraction: damaged shards are skipped with their name logged; more than this fraction of the data
    set's shards stops the run."""

    def __init__(self, root: str | Path, records: Sequence[dict], seed: int = 0, rank: int = 0, world: int = 1,
                 workers: int = 2, mix: int = 8, max_bad_fraction: float = 0.05):
        if not records:
            raise UserError("no pairs to stream: the pair set (or its split) is empty")
        self.root, self.seed, self.rank, self.world = Path(root), seed, rank, world
        self.image_size = int(read_manifest(root)["image_size"])
        self.workers, self.mix, self.max_bad_fraction = max(1, workers), max(1, mix), max_bad_fraction
        self.by_shard: dict[str, list[int]] = defaultdict(list)
        for record in records:
            self.by_shard[record["shard"]].append(int(record["pair_index"]))
        self.shards = sorted(self.by_shard)
        if len(self.shards) < world:
            raise UserError(f"{len(self.shards)} shards cannot feed {world} processes: write smaller shards")
        self.bad: list[str] = []

    def epoch_order(self, epoch: int) -> list[tuple[str, int]]:
        """(shard, pair index) in the order this rank reads them in `epoch`; from the index only."""
        shards = list(self.shards)
        random.Random(self.seed * 1_000_003 + epoch).shuffle(shards)
        mine = shards[self.rank :: self.world]
        rng = random.Random((self.seed * 1_000_003 + epoch) * 4099 + self.rank)
        windows = -(-len(mine) // self.mix)  # of at most `mix` shards, as even as can be: no lone shard at the end
        order = []
        for k in range(windows):
            window = [(shard, pair) for shard in mine[k::windows] for pair in self.by_shard[shard]]
            rng.shuffle(window)
            order += window
        return order

    def samples(self, start: int = 0) -> Iterator[dict]:
        """Samples from position `start` of this rank's stream on (position = samples already consumed)."""
        epoch = 0
        while True:
            order = self.epoch_order(epoch)
            if start < len(order):
                yield from self._decode(order[start:])
                start = 0
            else:
                start -= len(order)
            epoch += 1

    def _decode(self, order: list[tuple[str, int]]) -> Iterator[dict]:
        wanted: dict[str, set[int]] = defaultdict(set)
        for shard, pair in order:
            wanted[shard].add(pair)
        first_use = list(dict.fromkeys(shard for shard, _ in order))
        with ThreadPoolExecutor(self.workers) as pool:
            pending: dict[str, Future] = {}
            decoded: dict[str, dict[int, dict]] = {}
            left = {shard: len(pairs) for shard, pairs in wanted.items()}
            ahead = iter(first_use)
            for shard, pair in order:
                while len(pending) < 2 * self.workers + 1:  # keep the threads busy ahead of use
                    nxt = next(ahead, None)
                    if nxt is None:
                        break
                    pending[nxt] = pool.submit(self._read, nxt, wanted[nxt])
                if shard not in decoded:
                    if shard not in pending:
                        pending[shard] = pool.submit(self._read, shard, wanted[shard])
                    decoded[shard] = pending.pop(shard).result()
                sample = decoded[shard].get(pair)
                left[shard] -= 1
                if left[shard] == 0:
                    del decoded[shard]
                if sample is not None:
                    yield sample

    def _read(self, shard: str, wanted: set[int]) -> dict[int, dict]:
        path = shard_path(self.root, shard)
        try:
            pairs = {int(p["json"]["pair_index"]): p for p in read_shard(path, wanted, self.image_size)}
        except ShardMismatch:
            raise
        except UserError as err:
            pairs = {}
            self.bad.append(shard)
            log.warning("skipping %s: %s", path.name, err)
        else:
            if len(pairs) < len(wanted):  # the index lists pairs the shard does not hold
                self.bad.append(shard)
                log.warning("%s lacks %d of the %d pairs its index lists: using the rest", path.name,
                            len(wanted) - len(pairs), len(wanted))
        if len(set(self.bad)) > self.max_bad_fraction * len(self.shards):
            raise UserError(f"{len(set(self.bad))} of {len(self.shards)} shards are damaged ({', '.join(sorted(set(self.bad))[:3])}): "
                            f"more than {self.max_bad_fraction:.0%} of the data set; regenerate them (rerun "
                            "`distilswap pairs generate` with the same settings)")
        return pairs
