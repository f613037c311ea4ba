#!/usr/bin/env python3
"""Compares a file sluice-fetch wrote (.arrow, .parquet or .csv) with the
source file pyarrow reads itself, row for row. Prints one JSON line; exit
status 1 on a mismatch."""

import json
import sys

import pyarrow as pa
import pyarrow.csv
import pyarrow.ipc
import pyarrow.parquet

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from fetch_compare import read_source  # noqa: E402


def read_output(path: str) -> pa.Table:
    if path.endswith(".arrow"):
        return pa.ipc.open_file(path).read_all()
    if path.endswith(".parquet"):
        return pa.parquet.read_table(path)
    return pa.csv.read_csv(path)


got, want = read_output(sys.argv[1]), read_source(sys.argv[2])
problems = []
if got.column_names != want.column_names:
    problems.append(f"columns {got.column_names} != {want.column_names}")
elif got.to_pylist() != want.to_pylist():
    problems.append(f"rows differ ({got.num_rows} vs {want.num_rows})")
print(json.dumps({"rows": got.num_rows, "problems": problems}))
sys.exit(1 if problems else 0)
