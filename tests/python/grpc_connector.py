"""A connector written from crates/protocol/proto/tunnel.proto alone, with
grpcio and stubs generated at run time: seed 002's transport as a third
party would implement it.

    grpc_connector.py --gateway HOST:PORT --ca CA.pem --cert C.pem --key K.pem
                      --tenant T [--edge E] [--rows N] [--mode MODE]

It registers, answers get_flight_info, and serves each do_get with a Serve
call: start (the schema), chunks of whole Arrow IPC messages, end. It
prints one line per event (`registered`, `serve done`, `serve cancelled`,
`status CODE`) for the test to read. Modes:

  serve      serve the table (default)
  vanish     exit the process after a few chunks of the first stream
  slow       serve slowly (the browser leaves mid-stream)
  malformed  open Serve with a chunk before start
  no-register  send flight_info as the first Connect message
"""

import argparse
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time

import grpc
import pyarrow as pa

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.join(HERE, "..", "..", "crates", "protocol", "proto")


def stubs():
    out = tempfile.mkdtemp(prefix="tunnel-stubs-")
    subprocess.check_call(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}",
         f"--python_out={out}", f"--grpc_python_out={out}", "tunnel.proto"]
    )
    sys.path.insert(0, out)
    import tunnel_pb2
    import tunnel_pb2_grpc
    return tunnel_pb2, tunnel_pb2_grpc


def table(rows):
    return pa.table({
        "id": pa.array(range(rows), pa.int64()),
        "name": pa.array([f"row-{i}" for i in range(rows)]),
        "value": pa.array([i * 0.5 for i in range(rows)]),
    })


def ipc_messages(t, batch_rows):
    """The schema message, then each record batch's message, as bytes."""
    sink = pa.BufferOutputStream()
    schema_msg = t.schema.serialize().to_pybytes()
    batches = [b.serialize().to_pybytes() for b in t.to_batches(max_chunksize=batch_rows)]
    return schema_msg, batches


_said = threading.Lock()


def say(*a):
    # One write per line: the serving threads and the Connect loop print
    # at once, and the test reads whole lines.
    with _said:
        sys.stdout.write(" ".join(str(x) for x in a) + "\n")
        sys.stdout.flush()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--gateway", required=True)
    p.add_argument("--ca")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--plaintext", action="store_true", help="no TLS: authenticate with --edge-key")
    p.add_argument("--edge-key", default="")
    p.add_argument("--tenant", required=True)
    p.add_argument("--edge", default="")
    p.add_argument("--rows", type=int, default=50_000)
    p.add_argument("--dataset", default="pyarrow_table")
    p.add_argument("--mode", default="serve")
    a = p.parse_args()

    pb, rpc = stubs()
    if a.plaintext:
        channel = grpc.insecure_channel(a.gateway)
    else:
        creds = grpc.ssl_channel_credentials(
            root_certificates=open(a.ca, "rb").read(),
            private_key=open(a.key, "rb").read(),
            certificate_chain=open(a.cert, "rb").read(),
        )
        # The gateway's certificate names localhost.
        channel = grpc.secure_channel(a.gateway, creds)
    stub = rpc.ConnectorTunnelStub(channel)
    meta = [("edge-key", a.edge_key)] if a.edge_key else None
    t = table(a.rows)
    schema_msg, batches = ipc_messages(t, 2_000)

    out = queue.Queue()
    if a.mode == "no-register":
        out.put(pb.ConnectorMessage(request_id="x", flight_info=pb.FlightInfo(schema=schema_msg)))
    else:
        out.put(pb.ConnectorMessage(register=pb.RegisterRequest(
            tenant_id=a.tenant, version="py-1", datasets=[a.dataset], edge_id=a.edge)))

    def requests():
        while True:
            m = out.get()
            if m is None:
                return
            yield m

    cancels = {}

    def serve(rid):
        cancelled = threading.Event()
        cancels[rid] = cancelled

        def data():
            if a.mode == "malformed":
                yield pb.DataMessage(chunk=pb.ArrowChunk(data=batches[0]))
                return
            yield pb.DataMessage(start=pb.StreamStart(request_id=rid, schema=schema_msg))
            total = 0
            # The schema message opens the IPC stream, as over WebSocket.
            chunks = [schema_msg] + batches + [b"\xff\xff\xff\xff\x00\x00\x00\x00"]
            for i, c in enumerate(chunks):
                if cancelled.is_set():
                    return
                if a.mode == "vanish" and i == 3:
                    say("vanishing")
                    os._exit(3)
                if a.mode == "slow":
                    time.sleep(0.02)
                total += len(c)
                yield pb.DataMessage(chunk=pb.ArrowChunk(data=c))
            yield pb.DataMessage(end=pb.StreamEnd(total_bytes=total))

        try:
            summary = stub.Serve(data(), metadata=meta)
            say("serve cancelled" if summary.cancelled else "serve done", summary.bytes_forwarded)
        except grpc.RpcError as e:
            say("status", e.code().name, e.details())

    try:
        for m in stub.Connect(requests(), metadata=meta):
            kind = m.WhichOneof("kind")
            if kind == "registered":
                say("registered", m.registered.session_id)
            elif kind == "get_flight_info":
                out.put(pb.ConnectorMessage(request_id=m.request_id, flight_info=pb.FlightInfo(
                    schema=schema_msg, total_records=t.num_rows, total_bytes=-1,
                    json='{"dataset": "%s"}' % a.dataset)))
            elif kind == "do_get":
                if m.do_get.ticket != a.dataset:
                    out.put(pb.ConnectorMessage(request_id=m.request_id,
                                                error=pb.Failure(message=f"unknown dataset {m.do_get.ticket!r}")))
                    continue
                threading.Thread(target=serve, args=(m.request_id,), daemon=True).start()
            elif kind == "cancel":
                say("cancel", m.request_id)
                ev = cancels.get(m.request_id)
                if ev:
                    ev.set()
            elif kind == "error":
                say("gateway error", m.error.message)
    except grpc.RpcError as e:
        say("status", e.code().name, e.details())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
