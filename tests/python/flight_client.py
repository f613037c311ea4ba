"""README scenario "Arrow Flight": pyarrow.flight reads a dataset through
the gateway's Flight listener, and every refusal arrives as its documented
gRPC status.

    flight_client.py make DIR                 # writes DIR/big.parquet (1,000,000 rows)
    flight_client.py check --flight URL --admin URL --admin-token T --secret S
                           --edge E --source DIR/big.parquet [--tls-ca PEM]

Prints "N passed, 0 failed" and exits 0 when every check passed.
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import sys
import time
import urllib.request

import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq

ROWS = 1_000_000


def make(dir):
    n = ROWS
    table = pa.table(
        {
            "id": pa.array(range(n), pa.int64()),
            "reading": pa.array([i * 0.25 for i in range(n)], pa.float64()),
            "site": pa.array([f"site-{i % 977}" for i in range(n)], pa.string()),
            "ok": pa.array([i % 3 != 0 for i in range(n)], pa.bool_()),
            "maybe": pa.array([None if i % 5 == 0 else i for i in range(n)], pa.int32()),
        }
    )
    pq.write_table(table, os.path.join(dir, "big.parquet"), row_group_size=100_000)


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


class Tokens:
    def __init__(self, secret, edge):
        self.secret = secret.encode()
        self.edge = edge
        self.n = 0

    def make(self, secret=None, **claims):
        """A fresh session (its own sid) unless `sid` is given."""
        self.n += 1
        c = {
            "sid": f"fl-{os.getpid()}-{self.n}",
            "sub": "analyst",
            "tenant": "acme",
            "edge": self.edge,
            "exp": int(time.time()) + 600,
        }
        c.update(claims)
        head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        body = b64(json.dumps(c).encode())
        sig = hmac.new(secret or self.secret, f"{head}.{body}".encode(), hashlib.sha256)
        return c["sid"], f"{head}.{body}.{b64(sig.digest())}"


def bearer(token):
    return flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {token}".encode())])


def check(args):
    results = []

    def case(name, fn):
        try:
            fn()
            results.append((name, None))
            print(f"ok   {name}", flush=True)
        except Exception as e:  # noqa: BLE001 - every failure is reported
            results.append((name, e))
            print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)

    kw = {}
    if args.tls_ca:
        kw["tls_root_certs"] = open(args.tls_ca, "rb").read()
    client = flight.FlightClient(args.flight, **kw)
    tokens = Tokens(args.secret, args.edge)
    source = pq.read_table(args.source)

    def expect(exc, code_text, fn):
        try:
            fn()
        except exc as e:
            assert code_text in str(e), f"expected {code_text!r} in {e}"
            return str(e)
        raise AssertionError(f"expected {exc.__name__} ({code_text})")

    def whole_dataset_equals_the_source():
        _, tok = tokens.make()
        opts = bearer(tok)
        listed = [f.descriptor.path for f in client.list_flights(options=opts)]
        assert listed == [[b"big"]], listed
        info = client.get_flight_info(flight.FlightDescriptor.for_path("big"), opts)
        assert info.schema.equals(source.schema), info.schema
        assert info.total_records == ROWS, info.total_records
        assert len(info.endpoints) == 1 and info.endpoints[0].ticket.ticket == b"big"
        schema = client.get_schema(flight.FlightDescriptor.for_path("big"), opts).schema
        assert schema.equals(source.schema), schema
        # The same token's session serves the three calls and then the read.
        table = client.do_get(info.endpoints[0].ticket, opts).read_all()
        assert table.num_rows == ROWS, table.num_rows
        assert table.equals(source), "the table read through Flight differs from the source"
        # And again: the session stays open between calls.
        again = client.do_get(flight.Ticket(b"big"), opts).read_all()
        assert again.num_rows == ROWS

    def pandas_style_one_liner():
        _, tok = tokens.make(datasets=["big"])
        df = client.do_get(flight.Ticket(b"big"), bearer(tok)).read_pandas()
        assert len(df) == ROWS and list(df.columns) == source.column_names

    def missing_token_is_unauthenticated():
        expect(flight.FlightUnauthenticatedError, "missing authorization",
               lambda: client.do_get(flight.Ticket(b"big")).read_all())

    def bad_signature_is_unauthenticated():
        _, tok = tokens.make(secret=b"another-secret-0123456789abcdef-0123")
        expect(flight.FlightUnauthenticatedError, "unauthorized",
               lambda: client.do_get(flight.Ticket(b"big"), bearer(tok)).read_all())

    def expired_token_is_unauthenticated():
        _, tok = tokens.make(exp=int(time.time()) - 3600)
        expect(flight.FlightUnauthenticatedError, "expired",
               lambda: client.do_get(flight.Ticket(b"big"), bearer(tok)).read_all())

    def not_allowed_is_permission_denied():
        _, tok = tokens.make(datasets=["other"])
        expect(flight.FlightUnauthorizedError, "does not allow dataset",
               lambda: client.do_get(flight.Ticket(b"big"), bearer(tok)).read_all())
        _, tok = tokens.make(datasets=["other"])
        listed = list(client.list_flights(options=bearer(tok)))
        assert listed == [], "list_flights shows only what the token may read"

    def unknown_dataset_is_not_found():
        _, tok = tokens.make()
        msg = expect(pa.ArrowKeyError, "not found",
                     lambda: client.do_get(flight.Ticket(b"bgi"), bearer(tok)).read_all())
        assert '"big"' in msg, msg
        _, tok = tokens.make()
        expect(pa.ArrowKeyError, "not found",
               lambda: client.get_flight_info(flight.FlightDescriptor.for_path("nope"), bearer(tok)))

    def edge_offline_is_unavailable():
        _, tok = tokens.make(edge="edge-nobody")
        expect(flight.FlightUnavailableError, "offline",
               lambda: client.do_get(flight.Ticket(b"big"), bearer(tok)).read_all())

    def quota_is_resource_exhausted():
        _, tok = tokens.make(quota=1_000_000)
        expect(pa.ArrowInvalid, "resource exhausted",
               lambda: client.do_get(flight.Ticket(b"big"), bearer(tok)).read_all())

    def writes_are_refused():
        _, tok = tokens.make()

        def put():
            writer, _ = client.do_put(flight.FlightDescriptor.for_path("big"), source.schema, bearer(tok))
            writer.close()

        expect(pa.ArrowNotImplementedError, "read-only", put)

    def revoked_mid_stream_is_permission_denied():
        sid, tok = tokens.make()
        reader = client.do_get(flight.Ticket(b"big"), bearer(tok))
        first = reader.read_chunk()
        assert first.data.num_rows > 0
        req = urllib.request.Request(
            f"{args.admin}/admin/revoke/{sid}?exp={int(time.time()) + 600}",
            method="POST",
            headers={"Authorization": f"Bearer {args.admin_token}"},
        )
        with urllib.request.urlopen(req) as r:
            assert r.status == 200, r.status
        rows = first.data.num_rows
        try:
            while True:
                rows += reader.read_chunk().data.num_rows
        except StopIteration:
            raise AssertionError(f"stream ended normally after {rows} rows despite the revocation")
        except flight.FlightUnauthorizedError as e:
            assert "revoked" in str(e), e
        assert rows < ROWS, "the revocation came after the whole dataset"
        # The revoked token opens nothing more.
        expect(flight.FlightUnauthorizedError, "revoked",
               lambda: client.do_get(flight.Ticket(b"big"), bearer(tok)).read_all())

    def a_client_leaving_mid_stream_frees_the_worker():
        _, tok = tokens.make()
        reader = client.do_get(flight.Ticket(b"big"), bearer(tok))
        reader.read_chunk()
        reader.cancel()
        # The connector's workers are free again: a full read still works.
        _, tok = tokens.make()
        t = client.do_get(flight.Ticket(b"big"), bearer(tok)).read_all()
        assert t.num_rows == ROWS

    for name, fn in [
        ("whole dataset equals the source (list, info, schema, do_get twice)", whole_dataset_equals_the_source),
        ("read_pandas in one line", pandas_style_one_liner),
        ("missing token -> UNAUTHENTICATED", missing_token_is_unauthenticated),
        ("bad signature -> UNAUTHENTICATED", bad_signature_is_unauthenticated),
        ("expired token -> UNAUTHENTICATED", expired_token_is_unauthenticated),
        ("not allowed -> PERMISSION_DENIED", not_allowed_is_permission_denied),
        ("unknown dataset -> NOT_FOUND", unknown_dataset_is_not_found),
        ("edge offline -> UNAVAILABLE", edge_offline_is_unavailable),
        ("quota -> RESOURCE_EXHAUSTED", quota_is_resource_exhausted),
        ("writes -> UNIMPLEMENTED", writes_are_refused),
        ("revoked mid-stream -> PERMISSION_DENIED", revoked_mid_stream_is_permission_denied),
        ("client leaving mid-stream", a_client_leaving_mid_stream_frees_the_worker),
    ]:
        if args.only and args.only not in name:
            continue
        case(name, fn)
    failed = [n for n, e in results if e is not None]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("dir")
    c = sub.add_parser("check")
    c.add_argument("--flight", required=True)
    c.add_argument("--admin", required=True)
    c.add_argument("--admin-token", required=True)
    c.add_argument("--secret", required=True)
    c.add_argument("--edge", required=True)
    c.add_argument("--source", required=True)
    c.add_argument("--tls-ca")
    c.add_argument("--only")
    args = p.parse_args()
    if args.cmd == "make":
        make(args.dir)
        return 0
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
