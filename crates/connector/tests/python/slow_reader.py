#!/usr/bin/env python3
"""A browser that starts a query, reads one binary message, says "started",
then waits for a line on stdin before reading on until the stream ends.
Prints how it ended: the last JSON event and the close code."""

import asyncio
import json
import sys

import websockets


async def main(url, token, dataset):
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"},
                                  max_size=None, max_queue=1) as ws:
        await ws.send(json.dumps({"action": "query", "dataset": dataset}))
        while not isinstance(await ws.recv(), bytes):
            pass
        print("started", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        last, n = None, 0
        try:
            while True:
                m = await asyncio.wait_for(ws.recv(), 30)
                if isinstance(m, bytes):
                    n += 1
                    continue
                last = json.loads(m)
                if last.get("type") in ("stream_end", "error"):
                    break
            close = None
            try:
                await asyncio.wait_for(ws.recv(), 5)
            except websockets.ConnectionClosed as c:
                close = c.rcvd.code if c.rcvd else None
            except asyncio.TimeoutError:
                pass
        except websockets.ConnectionClosed as c:
            close = c.rcvd.code if c.rcvd else None
        print(json.dumps({"last": last, "close": close, "messages_after_pause": n}), flush=True)


asyncio.run(main(*sys.argv[1:4]))
