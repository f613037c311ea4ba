"""What an analyst gets without Sluice: Arrow's own Flight server (C++,
through pyarrow) serving the batches `sluice-loadtest flight` streams
through the gateway — one Int64 column "v" of `--rows` values, `--batches`
times — for any ticket. Prints its port on the first line, then serves
until stdin closes (the loader holds it open)."""

import argparse
import sys
import threading

import pyarrow as pa
import pyarrow.flight as flight


class Server(flight.FlightServerBase):
    def __init__(self, rows: int, batches: int):
        super().__init__("grpc://127.0.0.1:0")
        self.schema = pa.schema([pa.field("v", pa.int64(), nullable=False)])
        self.batch = pa.record_batch([pa.array(range(rows), pa.int64())], schema=self.schema)
        self.batches = batches

    def do_get(self, context, ticket):
        def gen():
            for _ in range(self.batches):
                yield self.batch

        return flight.GeneratorStream(self.schema, gen())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, required=True)
    p.add_argument("--batches", type=int, required=True)
    a = p.parse_args()
    server = Server(a.rows, a.batches)
    print(server.port, flush=True)
    threading.Thread(target=server.serve, daemon=True).start()
    sys.stdin.read()
    server.shutdown()


if __name__ == "__main__":
    main()
