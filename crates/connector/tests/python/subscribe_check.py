#!/usr/bin/env python3
"""A live-feed viewer: subscribes to a dataset through the gateway, decodes
what arrives with pyarrow as it arrives, optionally appends lines to a
tailed file once subscribed, and prints one JSON summary line."""

import argparse
import asyncio
import io
import json

import pyarrow as pa
import pyarrow.ipc
import websockets


def decode(chunks):
    rows = []
    for b in pa.ipc.open_stream(io.BytesIO(b"".join(chunks))):
        rows.extend(b.to_pylist())
    return rows


async def run(a):
    async with websockets.connect(a.url, additional_headers={"Authorization": f"Bearer {a.token}"}) as ws:
        await ws.send(json.dumps({"action": "subscribe", "dataset": a.dataset}))
        chunks, events, appended = [], [], False
        while True:
            m = await asyncio.wait_for(ws.recv(), 20)
            if isinstance(m, str):
                v = json.loads(m)
                events.append(v)
                if v.get("type") == "error":
                    return {"error": v}
                continue
            chunks.append(m)
            if a.append and not appended:
                # Subscribed and the schema is here: now the file grows.
                with open(a.append, "a") as f:
                    for i in range(a.lines):
                        f.write(f"{1_000_000 + i},{i / 2}\n")
                appended = True
            rows = decode(chunks)
            if len(rows) >= a.want_rows:
                cols = list(rows[0].keys()) if rows else []
                return {"rows": len(rows), "messages": len(chunks), "columns": cols,
                        "ids": [r.get("id") for r in rows][:20], "events": [e.get("type") for e in events]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--want-rows", type=int, required=True)
    ap.add_argument("--append")
    ap.add_argument("--lines", type=int, default=0)
    print(json.dumps(asyncio.run(run(ap.parse_args())), default=str))


if __name__ == "__main__":
    main()
