#!/usr/bin/env python3
"""A browser session in Python (`websockets` + `pyarrow`): queries one
dataset through a running gateway, decodes the Arrow IPC stream the
connector sent, and compares it row for row with pyarrow reading the source
file itself. Prints one JSON line; exit status 1 on any mismatch.

    python3 fetch_compare.py --url ws://127.0.0.1:8081/stream/SID --token T \
        --dataset sales --source /data/sales.csv
    python3 fetch_compare.py ... --expect-error     # the stream must end in an error
"""

import argparse
import asyncio
import glob
import io
import json
import sys

import pyarrow as pa
import pyarrow.csv
import pyarrow.ipc
import pyarrow.json
import pyarrow.parquet
import websockets


def read_source(path: str) -> pa.Table:
    files = sorted(glob.glob(path)) if any(c in path for c in "*?[") else [path]
    tables = []
    for f in files:
        if f.endswith(".csv"):
            tables.append(pa.csv.read_csv(f))
        elif f.endswith((".ndjson", ".jsonl", ".json")):
            tables.append(pa.json.read_json(f))
        else:
            tables.append(pa.parquet.read_table(f))
    return pa.concat_tables(tables, promote_options="permissive")


async def fetch(url: str, token: str, dataset: str):
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"},
                                  max_size=None) as ws:
        await ws.send(json.dumps({"action": "query", "dataset": dataset}))
        chunks, events = [], []
        while True:
            m = await asyncio.wait_for(ws.recv(), 60)
            if isinstance(m, bytes):
                chunks.append(m)
                continue
            v = json.loads(m)
            events.append(v)
            if v.get("type") in ("stream_end", "error"):
                return chunks, events


def text_rows(t: pa.Table, csv_source=False):
    """Rows as PostgreSQL's text output would spell them."""
    if csv_source:
        # Read every column of the export as text, nulls as None.
        return [[None if v in (None, "") else str(v) for v in r.values()] for r in t.to_pylist()]
    out = []
    for r in t.to_pylist():
        row = []
        for v in r.values():
            if v is None:
                row.append(None)
            elif isinstance(v, bool):
                row.append("t" if v else "f")
            elif hasattr(v, "isoformat") and hasattr(v, "hour"):
                row.append(v.isoformat(sep=" "))
            else:
                row.append(str(v))
        out.append(row)
    return out


def read_text_csv(path: str) -> pa.Table:
    import pyarrow.csv as pc
    names = pc.read_csv(path).column_names
    return pc.read_csv(path, convert_options=pc.ConvertOptions(column_types={n: pa.string() for n in names}))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--source")
    ap.add_argument("--expect-error", action="store_true")
    ap.add_argument("--as-text", action="store_true",
                    help="compare values as PostgreSQL's CSV export writes them (source is that export)")
    a = ap.parse_args()
    chunks, events = asyncio.run(fetch(a.url, a.token, a.dataset))
    last = events[-1]
    out = {"messages": len(chunks), "bytes": sum(map(len, chunks)), "last": last}
    if a.expect_error:
        ok = last.get("type") == "error"
        print(json.dumps(out))
        return 0 if ok else 1
    if last.get("type") != "stream_end":
        out["problem"] = "stream did not end with stream_end"
        print(json.dumps(out))
        return 1
    # Every binary message holds whole IPC messages: each prefix decodes.
    got = pa.ipc.open_stream(io.BytesIO(b"".join(chunks))).read_all()
    want = read_text_csv(a.source) if a.as_text else read_source(a.source)
    out["rows"] = got.num_rows
    out["want_rows"] = want.num_rows
    problems = []
    if got.column_names != want.column_names:
        problems.append(f"columns {got.column_names} != {want.column_names}")
    elif a.as_text:
        g, w = text_rows(got), text_rows(want, csv_source=True)
        if g != w:
            for i, (x, y) in enumerate(zip(g, w)):
                if x != y:
                    problems.append(f"row {i}: {x} != {y}")
                    break
            if len(g) != len(w):
                problems.append(f"{len(g)} rows != {len(w)}")
    elif got.to_pylist() != want.to_pylist():
        for i, (g, w) in enumerate(zip(got.to_pylist(), want.to_pylist())):
            if g != w:
                problems.append(f"row {i}: {g} != {w}")
                break
        if got.num_rows != want.num_rows:
            problems.append(f"{got.num_rows} rows != {want.num_rows}")
    if last.get("total_bytes") != out["bytes"]:
        problems.append(f"stream_end total_bytes {last.get('total_bytes')} != {out['bytes']} received")
    out["problems"] = problems
    print(json.dumps(out))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
