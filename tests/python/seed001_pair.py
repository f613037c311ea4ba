#!/usr/bin/env python3
"""A seed-001 connector and a browser, both plain Python `websockets`
clients, talking through a running Sluice gateway.

The connector streams a pyarrow table as Arrow IPC (one IPC message per
binary WebSocket message); the browser decodes what it receives with pyarrow
and compares it with the source table. Run by `tests/python_clients.rs`,
which starts the real gateway; usable by hand too:

    python3 tests/python/seed001_pair.py --gateway ws://127.0.0.1:8081 \
        --secret S --edge edge-a --edge-key K
"""

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import sys
import time

import pyarrow as pa
import websockets


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_hs256(claims: dict, secret: str) -> str:
    """HS256 JWT, written out so the test depends on nothing but the RFC."""
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims).encode())
    mac = hmac.new(secret.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64url(mac)}"


def make_table(rows: int) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(range(rows), type=pa.int64()),
            "region": pa.array([["norte", "sur", "este", "oeste"][i % 4] for i in range(rows)]),
            "amount": pa.array([i * 1.25 for i in range(rows)], type=pa.float64()),
        }
    )


def ipc_messages(table: pa.Table, batch_rows: int):
    """Yields the IPC stream as whole encapsulated messages: the schema, one
    message per record batch, and the end-of-stream marker."""
    yield table.schema.serialize().to_pybytes()
    for batch in table.to_batches(max_chunksize=batch_rows):
        yield batch.serialize().to_pybytes()
    yield b"\xff\xff\xff\xff\x00\x00\x00\x00"


async def connector(url, key, edge, table, batch_rows, registered):
    async with websockets.connect(
        f"{url}/ws/connect", additional_headers={"Edge-Key": key}, max_size=None
    ) as ws:
        await ws.send(
            json.dumps(
                {
                    "action": "register",
                    "tenant_id": "acme",
                    "edge_id": edge,
                    "version": "py-seed001",
                    "datasets": ["ventas"],
                }
            )
        )
        reply = json.loads(await ws.recv())
        assert reply["status"] == "ok", reply
        registered.set()
        schema_b64 = base64.b64encode(table.schema.serialize().to_pybytes()).decode()
        async for raw in ws:
            msg = json.loads(raw)
            rid = msg.get("request_id")
            if msg.get("action") == "get_flight_info":
                await ws.send(
                    json.dumps(
                        {
                            "request_id": rid,
                            "type": "flight_info",
                            "data": {"rows": table.num_rows, "schema": schema_b64},
                        }
                    )
                )
            elif msg.get("action") == "do_get":
                if msg.get("ticket") != "ventas":
                    await ws.send(json.dumps({"request_id": rid, "type": "error", "message": "no such dataset"}))
                    continue
                await ws.send(json.dumps({"request_id": rid, "type": "stream_start", "schema": schema_b64}))
                total = 0
                for m in ipc_messages(table, batch_rows):
                    total += len(m)
                    await ws.send(m)
                await ws.send(json.dumps({"request_id": rid, "type": "stream_end", "total_bytes": total}))


async def browser(url, sid, token, how):
    headers = {}
    target = f"{url}/stream/{sid}"
    if how == "header":
        headers["Authorization"] = f"Bearer {token}"
    elif how == "query":
        target += f"?token={token}"
    async with websockets.connect(target, additional_headers=headers, max_size=None) as ws:
        if how == "message":
            await ws.send(json.dumps({"auth": token}))
        await ws.send(json.dumps({"action": "list"}))
        listed = json.loads(await ws.recv())
        assert listed == {"type": "datasets", "edge": listed["edge"], "datasets": ["ventas"]}, listed
        await ws.send(json.dumps({"action": "query", "dataset": "ventas"}))
        chunks, events = [], []
        while True:
            msg = await ws.recv()
            if isinstance(msg, bytes):
                chunks.append(msg)
                # Every binary message holds whole IPC messages.
                continue
            ev = json.loads(msg)
            events.append(ev["type"])
            if ev["type"] == "stream_end":
                break
            if ev["type"] == "error":
                raise AssertionError(f"gateway error: {ev}")
        assert events == ["flight_info", "stream_start", "stream_end"], events
        data = b"".join(chunks)
        assert ev["bytes_forwarded"] == len(data), (ev, len(data))
        assert ev["total_bytes"] == len(data), (ev, len(data))
        return pa.ipc.open_stream(data).read_all(), len(chunks)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gateway", required=True)
    ap.add_argument("--secret", required=True)
    ap.add_argument("--edge", required=True)
    ap.add_argument("--edge-key", required=True)
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--batch-rows", type=int, default=4_096)
    args = ap.parse_args()

    table = make_table(args.rows)
    registered = asyncio.Event()
    conn = asyncio.create_task(
        connector(args.gateway, args.edge_key, args.edge, table, args.batch_rows, registered)
    )
    await asyncio.wait_for(registered.wait(), 10)
    for i, how in enumerate(["header", "query", "message"]):
        sid = f"py-{how}-{i}"
        claims = {
            "sid": sid,
            "sub": "alice",
            "tenant": "acme",
            "edge": args.edge,
            "exp": int(time.time()) + 60,
            "jti": f"j-{sid}",
        }
        got, n = await asyncio.wait_for(browser(args.gateway, sid, sign_hs256(claims, args.secret), how), 30)
        assert got.equals(table), f"{how}: decoded table differs from the source"
        print(f"ok: token by {how}: {got.num_rows} rows in {n} binary messages match the source")
    conn.cancel()
    print("seed001 pair: 3 passed, 0 failed")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except AssertionError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)
