#!/usr/bin/env python3
"""Medians of benches/c/run.sh's CSV as Markdown tables.

Usage: summarize.py RESULTS.csv

Workloads: median operations per second for each allocator over the rounds
(a round that ran a workload more than once under an allocator counts its
fastest run),
then each allocator's ratio to glibc (above 1 is faster than glibc) and, when
the drop-in malloc ("lle") ran, its ratio to jemalloc and mimalloc. Pairs:
median ns per pair for each path and its ratio to the Rust pair on a default
pool (above 1 is slower than Rust). The C API's pools are default pools
too (lle_create_memory_pool); the Rust pair on a checked pool shows what
checked mode costs.
"""

import csv
import statistics
import sys
from collections import defaultdict

ALLOCATORS = ["glibc", "mimalloc", "jemalloc", "lle"]
PAIR_PATHS = ["rust", "rust-checked", "lle-static", "lle-shared"] + ALLOCATORS
PAIR_LABELS = {
    "rust": "MemoryPool::allocate_fast / free_fast (Rust), default pool",
    "rust-checked": "MemoryPool::allocate_fast / free_fast (Rust), checked pool",
    "lle-static": "lle_pool_allocate_fast / lle_pool_free_fast, liblle_mempool.a",
    "lle-shared": "lle_pool_allocate_fast / lle_pool_free_fast, liblle_mempool.so",
    "glibc": "malloc / free, glibc",
    "mimalloc": "malloc / free, libmimalloc.so preloaded",
    "jemalloc": "malloc / free, libjemalloc.so preloaded",
    "lle": "malloc / free, liblle_malloc.so preloaded",
}


def rate(value):
    """Operations per second, short: 12.3M, 4.56k."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def median_ratio(top, bottom):
    """The median over rounds of top / bottom, each round's values divided
    within the round: the machine's speed drifts between rounds, and a
    ratio of two medians would mix rounds."""
    if not top or not bottom:
        return "-"
    ratios = [top[r] / bottom[r] for r in top if r in bottom and bottom[r]]
    return f"{statistics.median(ratios):.2f}" if ratios else "-"


def main(path):
    # (workload, allocator) -> {round: value}
    throughput = defaultdict(dict)
    pair_ns = defaultdict(dict)
    workloads = []
    with open(path, newline="") as results:
        for row in csv.DictReader(results):
            if row["workload"] == "pair":
                pair_ns[row["allocator"]][row["round"]] = float(row["ns_per_pair"])
                continue
            if row["workload"] not in workloads:
                workloads.append(row["workload"])
            runs = throughput[row["workload"], row["allocator"]]
            runs[row["round"]] = max(runs.get(row["round"], 0.0), float(row["ops_per_s"]))

    median = {key: statistics.median(values.values()) for key, values in throughput.items()}
    present = [a for a in ALLOCATORS if any((w, a) in median for w in workloads)]
    peers = [a for a in present if a != "glibc"]
    header = ["workload"] + [f"{a} ops/s" for a in present] + [f"{a} / glibc" for a in peers]
    drop_in = "lle" in present
    if drop_in:
        header += ["lle / jemalloc", "lle / mimalloc"]

    def ratio(workload, numerator, denominator):
        return median_ratio(throughput.get((workload, numerator)), throughput.get((workload, denominator)))

    rows = []
    for workload in workloads:
        row = [workload] + [rate(median[workload, a]) if (workload, a) in median else "-" for a in present]
        row += [ratio(workload, a, "glibc") for a in peers]
        if drop_in:
            row += [ratio(workload, "lle", "jemalloc"), ratio(workload, "lle", "mimalloc")]
        rows.append(row)
    rounds = max((len(v) for v in throughput.values()), default=0)
    print(f"Workloads, 2 threads: median of {rounds} round(s); ratios above 1 mean more operations per second.")
    print()
    print(table(header, rows))

    if pair_ns:
        rows = []
        for path_name in PAIR_PATHS:
            if not pair_ns.get(path_name):
                continue
            ns = statistics.median(pair_ns[path_name].values())
            rows.append([PAIR_LABELS[path_name], f"{ns:.1f}", median_ratio(pair_ns[path_name], pair_ns.get("rust"))])
        print()
        print("64-byte allocate/free pairs, one byte written into each block: median ns per pair.")
        print()
        print(table(["path", "ns per pair", "/ Rust pair (default pool)"], rows))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: summarize.py RESULTS.csv")
    main(sys.argv[1])
