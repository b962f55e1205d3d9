"""`--shard K/N`: this run checks the K-th of N disjoint shares of the adapters, so N machines split one run."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    index: int  # K, from 1
    count: int  # N

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def select(self, adapters: Sequence[T]) -> list[T]:
        """Round-robin over the `--adapter` order: every shard is given the same list, so the shares are disjoint,
        cover it, and differ in size by one adapter at most."""
        return [adapter for position, adapter in enumerate(adapters) if position % self.count == self.index - 1]


def parse_shard(value: str, adapters: int) -> Shard:
    """`K/N` with 1 <= K <= N <= `adapters` (a shard with no adapter would run no test, which pytest fails)."""
    text = value.strip()
    index, slash, count = text.partition("/")
    if not (slash and index.strip().isdigit() and count.strip().isdigit()):
        raise ValueError(f"--shard must be K/N, this run's shard K of N (e.g. 2/4), got {value!r}")
    shard = Shard(int(index), int(count))
    if not 1 <= shard.index <= shard.count:
        raise ValueError(f"--shard K/N needs K between 1 and N (shards count from 1), got {value!r}")
    if shard.count > adapters:
        raise ValueError(
            f"--shard {text}: {shard.count} shards of {adapters} adapter(s) leave some shards nothing to check; "
            f"split into at most {adapters} shards"
        )
    return shard
