#!/usr/bin/env python3
"""table.py: the Markdown table of one or more compare.sh runs.

usage: benches/load/table.py RESULTS.tsv [RESULTS.tsv ...]

Each argument is one run's results.tsv (compare.sh -o DIR writes DIR/results.tsv). Rows are
labelled SERVER|POINT|REPETITION, SERVER being kp (this build), old (-O) or ref (the reference).
Per point it prints each server's median CPU time per review, p99 latency and peak RSS, and the
median (interquartile range) of the ratios of one repetition's servers, which ran back to back:
such pairs never cross repetitions or runs, so a VM that changes speed does not bias them.
"""

import csv
import statistics
import sys
from collections import defaultdict

RATIOS = [("kp", "ref"), ("kp", "old"), ("old", "ref")]


def num(text):
    try:
        return float(text)
    except ValueError:
        return float("nan")


def median_iqr(values):
    values = [v for v in values if v == v]
    if not values:
        return "n/a"
    if len(values) < 2:
        return f"{values[0]:.2f}"
    q1, _, q3 = statistics.quantiles(values, n=4)
    return f"{statistics.median(values):.2f} ({q1:.2f}-{q3:.2f})"


def median(values, digits):
    values = [v for v in values if v == v]
    return f"{statistics.median(values):.{digits}f}" if values else "n/a"


def main(paths):
    # (point, run, rep) -> server -> row
    reps = defaultdict(dict)
    points, servers = [], []
    for run, path in enumerate(paths):
        with open(path, newline="") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                server, point, rep = row["label"].split("|")
                reps[(point, run, rep)][server] = row
                if point not in points:
                    points.append(point)
                if server not in servers:
                    servers.append(server)
    servers.sort(key=lambda s: ["kp", "old", "ref"].index(s) if s in ("kp", "old", "ref") else 9)
    ratios = [(a, b) for a, b in RATIOS if a in servers and b in servers]

    def column(point, server, field):
        return [
            num(by[server][field])
            for (p, _, _), by in reps.items()
            if p == point and server in by
        ]

    def ratio(point, a, b, field):
        return [
            num(by[a][field]) / num(by[b][field])
            for (p, _, _), by in reps.items()
            if p == point and a in by and b in by and num(by[b][field]) > 0
        ]

    head = ["point", "reps"]
    head += [f"{s} CPU us/review" for s in servers]
    head += [f"CPU {a}/{b}" for a, b in ratios]
    head += [f"{s} p99 ms" for s in servers]
    head += [f"p99 {a}/{b}" for a, b in ratios]
    head += [f"{s} peak RSS MiB" for s in servers]
    head += ["kp p99 < 1 ms", "failed requests"]
    print("| " + " | ".join(head) + " |")
    print("| --- |" + " ---: |" * (len(head) - 1))
    for point in points:
        kp99 = [v for v in column(point, "kp", "p99_ms") if v == v]
        failed = sum(
            int(num(by[s]["errors"]) + num(by[s]["non2xx"]))
            for (p, _, _), by in reps.items()
            if p == point
            for s in by
        )
        cells = [point, str(len(column(point, servers[0], "rps")))]
        cells += [median(column(point, s, "srv_cpu_us_per_req"), 1) for s in servers]
        cells += [median_iqr(ratio(point, a, b, "srv_cpu_us_per_req")) for a, b in ratios]
        cells += [median(column(point, s, "p99_ms"), 3) for s in servers]
        cells += [median_iqr(ratio(point, a, b, "p99_ms")) for a, b in ratios]
        cells += [
            median([v / 1024 for v in column(point, s, "srv_peak_rss_kb")], 1) for s in servers
        ]
        cells.append(f"{sum(v < 1.0 for v in kp99) / len(kp99):.0%}" if kp99 else "n/a")
        cells.append(str(failed))
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__.strip())
    main(sys.argv[1:])
