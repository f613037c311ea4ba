#!/usr/bin/env python3
"""Connector throughput against pyarrow, in one run on one machine.

Writes (once, cached under target/connector-bench/) a ~1 GB CSV and the same
rows as Parquet, then converts each to an Arrow IPC stream file twice: with
`sluice-connector --convert` (the exact reader + framer the workers stream
with) and with pyarrow (streaming CSV reader / Parquet batch iterator into
`pyarrow.ipc.new_stream`). Each conversion runs as its own child process so
its peak RSS is its own. Prints rows/s, MB/s of IPC produced, peak RSS and
the ratio to pyarrow.

    cargo build --release -p sluice-connector && python3 crates/connector/bench.py [--gb 1.0]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIR = os.path.join(ROOT, "target", "connector-bench")

PYARROW_CONVERT = r"""
import sys, time, pyarrow as pa, pyarrow.csv, pyarrow.parquet, pyarrow.ipc
src, out = sys.argv[1], sys.argv[2]
t0 = time.time()
rows = 0
if src.endswith(".csv"):
    reader = pa.csv.open_csv(src)
    batches, schema = reader, reader.schema
else:
    f = pa.parquet.ParquetFile(src)
    batches, schema = f.iter_batches(batch_size=65536), f.schema_arrow
with pa.OSFile(out, "wb") as sink, pa.ipc.new_stream(sink, schema) as w:
    for b in batches:
        rows += b.num_rows
        w.write_batch(b)
print(rows, time.time() - t0)
"""


def make(gb: float):
    import pyarrow as pa
    import pyarrow.csv
    import pyarrow.parquet
    os.makedirs(DIR, exist_ok=True)
    csv, pq = os.path.join(DIR, "big.csv"), os.path.join(DIR, "big.parquet")
    if os.path.exists(csv) and os.path.getsize(csv) >= gb * 0.95e9:
        return csv, pq
    n = 1_000_000
    block = pa.table({
        "id": pa.array(range(n), pa.int64()),
        "site": pa.array([f"plant-{i % 97:02d}" for i in range(n)]),
        "sensor": pa.array([f"s{i % 1013}" for i in range(n)]),
        "temp": pa.array([20.0 + (i % 1000) / 7 for i in range(n)]),
        "pressure": pa.array([1000.0 + (i % 377) / 3 for i in range(n)]),
        "ok": pa.array([i % 3 != 0 for i in range(n)]),
    })
    with pa.csv.CSVWriter(csv, block.schema) as w, pa.parquet.ParquetWriter(pq, block.schema) as p:
        while os.path.getsize(csv) < gb * 1e9:
            w.write_table(block)
            p.write_table(block)
    return csv, pq


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=1.0)
    a = ap.parse_args()
    csv, pq = make(a.gb)
    exe = os.path.join(ROOT, "target", "release", "sluice-connector")
    if not os.path.exists(exe):
        sys.exit("build first: cargo build --release -p sluice-connector")
    results = []
    for label, src in [("csv", csv), ("parquet", pq)]:
        out = os.path.join(DIR, "out")
        os.makedirs(out, exist_ok=True)
        # Each measurement in a fresh process tree: ru_maxrss of children
        # is a running maximum, so measure through a wrapper per run.
        ours = measure([exe, "--convert", out, "--dataset", f"big={src}"])
        rows = int(ours["stdout"].split(" rows")[0].split()[-1])
        ipc = os.path.getsize(os.path.join(out, "big.arrows"))
        theirs = measure([sys.executable, "-c", PYARROW_CONVERT, src, os.path.join(out, "pyarrow.arrows")])
        prow, psecs = theirs["stdout"].split()
        pipc = os.path.getsize(os.path.join(out, "pyarrow.arrows"))
        assert int(prow) == rows, f"row counts differ: {rows} vs {prow}"
        results.append({
            "source": label, "file_bytes": os.path.getsize(src), "rows": rows,
            "connector": {"secs": ours["secs"], "rows_per_s": rows / ours["secs"], "ipc_mb_per_s": ipc / ours["secs"] / 1e6, "peak_rss_mib": ours["rss"]},
            "pyarrow": {"secs": theirs["secs"], "rows_per_s": rows / theirs["secs"], "ipc_mb_per_s": pipc / theirs["secs"] / 1e6, "peak_rss_mib": theirs["rss"]},
        })
    print(f"{'source':<8} {'rows':>11} {'':<10} {'s':>7} {'Mrows/s':>8} {'IPC MB/s':>9} {'peak RSS MiB':>13}")
    for r in results:
        for who in ("connector", "pyarrow"):
            m = r[who]
            print(f"{r['source']:<8} {r['rows']:>11} {who:<10} {m['secs']:>7.2f} {m['rows_per_s'] / 1e6:>8.2f} {m['ipc_mb_per_s']:>9.0f} {m['peak_rss_mib']:>13.0f}")
        print(f"{'':<8} {'':>11} connector/pyarrow throughput: {r['connector']['rows_per_s'] / r['pyarrow']['rows_per_s']:.2f}")
    with open(os.path.join(DIR, "report.json"), "w") as f:
        json.dump(results, f, indent=2)


def measure(cmd):
    """Runs cmd under a tiny Python wrapper so its peak RSS is its own."""
    wrapper = ("import resource, subprocess, sys, time, json\n"
               "t0 = time.time()\n"
               "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
               "secs = time.time() - t0\n"
               "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
               "print(json.dumps({'rc': p.returncode, 'stdout': p.stdout, 'stderr': p.stderr[-2000:], 'secs': secs, 'rss': rss}))\n")
    p = subprocess.run([sys.executable, "-c", wrapper] + cmd, capture_output=True, text=True)
    r = json.loads(p.stdout)
    if r["rc"] != 0:
        sys.exit(f"{cmd[0]} failed: {r['stderr']}")
    return r


if __name__ == "__main__":
    main()
