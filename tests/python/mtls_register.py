"""A connector worker in Python (OpenSSL's TLS, the `websockets` library):
connects with a client certificate, registers as TENANT, prints `ok` or
`closed CODE REASON`.

    mtls_register.py URL CA_CERT CLIENT_CERT CLIENT_KEY TENANT
"""
import asyncio
import json
import ssl
import sys

import websockets


async def main(url, ca, cert, key, tenant):
    ctx = ssl.create_default_context(cafile=ca)
    ctx.load_cert_chain(cert, key)
    async with websockets.connect(url, ssl=ctx) as ws:
        await ws.send(json.dumps({"action": "register", "tenant_id": tenant, "version": "py", "datasets": []}))
        try:
            while True:
                msg = json.loads(await ws.recv())
                if msg.get("status") == "ok":
                    print("ok")
                    return
        except websockets.ConnectionClosed as e:
            print(f"closed {e.rcvd.code} {e.rcvd.reason}")


asyncio.run(main(*sys.argv[1:6]))
