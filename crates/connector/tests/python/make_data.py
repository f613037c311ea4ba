#!/usr/bin/env python3
"""Writes the test datasets with pyarrow: the same table as CSV, NDJSON,
Parquet (one file and a glob of three), and broken files for the error
paths. Usage: make_data.py DIR ROWS"""

import json
import os
import sys

import pyarrow as pa
import pyarrow.csv
import pyarrow.parquet

d, rows = sys.argv[1], int(sys.argv[2])
os.makedirs(os.path.join(d, "parts"), exist_ok=True)
t = pa.table({
    "id": pa.array(range(rows), pa.int64()),
    "site": pa.array([f"plant-{i % 7}" for i in range(rows)]),
    "temp": pa.array([20.0 + (i % 100) / 8 for i in range(rows)]),
    "ok": pa.array([i % 3 != 0 for i in range(rows)]),
})
pa.csv.write_csv(t, os.path.join(d, "sales.csv"))
pa.parquet.write_table(t, os.path.join(d, "sales.parquet"))
with open(os.path.join(d, "sales.ndjson"), "w") as f:
    for r in t.to_pylist():
        f.write(json.dumps(r) + "\n")
third = rows // 3
for i, part in enumerate([t.slice(0, third), t.slice(third, third), t.slice(2 * third)]):
    pa.parquet.write_table(part, os.path.join(d, "parts", f"part-{i}.parquet"))
# Bad rows past the 1,000 rows the schema is inferred from: line 1502 of
# the CSV (header = line 1), line 1501 of the NDJSON.
with open(os.path.join(d, "broken.csv"), "w") as f:
    f.write("id,temp\n")
    for i in range(1500):
        f.write(f"{i},{20 + i / 10}\n")
    f.write("1500,not-a-number\n1501,22.0\n")
with open(os.path.join(d, "broken.ndjson"), "w") as f:
    for i in range(1500):
        f.write(json.dumps({"id": i, "temp": 20 + i / 10}) + "\n")
    f.write('{"id": 1500, "temp": \n')
with open(os.path.join(d, "fake.parquet"), "wb") as f:
    f.write(b"this is not parquet at all")
