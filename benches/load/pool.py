#!/usr/bin/env python3
"""pool.py: pools several compare.sh runs into one table of back-to-back ratios.

usage: benches/load/pool.py RESULTS.tsv [RESULTS.tsv ...]

Each argument is one run's results.tsv (compare.sh -o DIR writes DIR/results.tsv). Within a run,
the kube-persist row of a point and repetition is paired with the reference row of the same point
and repetition (measured right before or after it), and the pair gives one CPU-per-review ratio
and one p99 ratio. Pairs never cross runs, so a VM that changes speed between runs does not bias
the ratios. Printed per point: the number of pairs, the median and interquartile range of both
ratios, kube-persist's and the reference's median p99, and how many of kube-persist's
repetitions had a p99 under 1 ms.
"""

import csv
import statistics
import sys
from collections import defaultdict


def quartiles(values):
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def main(paths):
    pairs = defaultdict(list)
    for run, path in enumerate(paths):
        rows = defaultdict(dict)
        with open(path, newline="") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                server, point, rep = row["label"].split("|")
                rows[(point, rep)][server] = row
        for (point, _), by_server in rows.items():
            kp, ref = by_server.get("kp"), by_server.get("ref")
            if kp is None or ref is None:
                continue  # an interrupted run: a repetition without its partner
            pairs[point].append(
                (
                    float(kp["srv_cpu_us_per_req"]) / float(ref["srv_cpu_us_per_req"]),
                    float(kp["p99_ms"]) / float(ref["p99_ms"]),
                    float(kp["p99_ms"]),
                    float(ref["p99_ms"]),
                )
            )
    print(
        "| point | pairs | CPU ratio, median (IQR) | p99 ratio, median (IQR) "
        "| kube-persist p99 median (reference) | kube-persist p99 < 1 ms |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for point in sorted(pairs):
        v = pairs[point]
        cpu = [p[0] for p in v]
        p99 = [p[1] for p in v]
        kp99 = [p[2] for p in v]
        ref99 = [p[3] for p in v]
        under = sum(x < 1.0 for x in kp99) / len(kp99)
        print(
            f"| {point} | {len(v)} "
            f"| {statistics.median(cpu):.2f} ({quartiles(cpu)[0]:.2f}-{quartiles(cpu)[1]:.2f}) "
            f"| {statistics.median(p99):.2f} ({quartiles(p99)[0]:.2f}-{quartiles(p99)[1]:.2f}) "
            f"| {statistics.median(kp99):.3f} ms ({statistics.median(ref99):.3f}) "
            f"| {under:.0%} |"
        )


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__.strip())
    main(sys.argv[1:])
