"""Reads what sluice-fetch wrote (t.arrow, t.parquet, t.csv in argv[1])
with pyarrow and checks every column against the Arrow IPC file, which
carries the source's types exactly. Run by output.rs's round_trip test."""
import sys, pathlib
import pyarrow as pa, pyarrow.ipc as ipc, pyarrow.parquet as pq, pyarrow.csv as pcsv

d = pathlib.Path(sys.argv[1])
ref = ipc.open_file(d / "t.arrow").read_all()
fails = []

# Parquet has no second-precision timestamps and no millisecond dates:
# those are stored as timestamp[ms] (same zone) and date32, same values.
def parquet_type(t):
    if pa.types.is_timestamp(t) and t.unit == "s":
        return pa.timestamp("ms", t.tz)
    if pa.types.is_date64(t):
        return pa.date32()
    return t

pqt = pq.read_table(d / "t.parquet")
for name in ref.column_names:
    want, got = ref.column(name), pqt.column(name)
    want = want.cast(parquet_type(want.type))
    if want.type != got.type:
        fails.append(f"parquet {name}: type {got.type}, source {want.type}")
    elif not want.equals(got):
        fails.append(f"parquet {name}: {got} != {want}")

# CSV carries no types: read it with the source's schema declared (what a
# user does), and the values must be the source's.
types = {}
for f in ref.schema:
    t = f.type
    types[f.name] = t.value_type if pa.types.is_dictionary(t) else t
opts = pcsv.ConvertOptions(column_types=types, strings_can_be_null=True)
try:
    csvt = pcsv.read_csv(d / "t.csv", convert_options=opts)
except Exception as e:
    fails.append(f"csv: pyarrow cannot read it with the source's types: {e}")
else:
    for name in ref.column_names:
        want = ref.column(name)
        if pa.types.is_dictionary(want.type):
            want = want.cast(want.type.value_type)
        got = csvt.column(name)
        if pa.types.is_string(want.type) or pa.types.is_large_string(want.type):
            # CSV has one empty field for both: an empty string reads back
            # as null (documented in the README's sluice-fetch section).
            want = pa.chunked_array([[None if v == "" else v for v in want.to_pylist()]], want.type)
        if not want.equals(got):
            fails.append(f"csv {name}: {got} != {want}")

print("\n".join(fails) if fails else "ok")
sys.exit(1 if fails else 0)
