#!/usr/bin/env python3
"""Asks the gateway which datasets the session's edge serves; prints the answer."""

import asyncio
import json
import sys

import websockets


async def main(url, token):
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        await ws.send(json.dumps({"action": "list"}))
        print(await asyncio.wait_for(ws.recv(), 10))


asyncio.run(main(sys.argv[1], sys.argv[2]))
