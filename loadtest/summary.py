#!/usr/bin/env python3
"""Prints the README's figures table from sluice-loadtest JSON reports."""
import json, os, sys

root = sys.argv[1] if len(sys.argv) > 1 else "target/loadtest"


def load(name):
    p = os.path.join(root, name, "report.json")
    if not os.path.exists(p):
        return None
    r = json.load(open(p))
    out = {o["target"]: o for o in r["outcomes"]}
    for o in out.values():
        o["_params"] = r["params"]
    return out


def f(v, fmt="{:.0f}"):
    return "-" if v is None else fmt.format(v)


def lat(o, key):
    return None if not o or "latency" not in o else o["latency"][key]


rows = []
targets = ["direct", "gateway", "haproxy", "nginx"]
b = load("bulk")
if b:
    rows.append(("bulk 64 KiB, MB/s (ratio to direct)",
                 [f"{f(b[t].get('mb_per_s'))} ({f(b[t].get('ratio_to_direct'), '{:.2f}')})" if t in b else "-" for t in targets]))
    gib = b["direct"]["_params"]["frames"] * b["direct"]["_params"]["frame_size"] / 2**30
    rows.append(("bulk, proxy CPU-s per GiB", [f(b[t]["proxy_cpu_s"] / gib if t in b and b[t].get("proxy_cpu_s") else None, "{:.2f}") for t in targets]))
    rows.append(("bulk, CPU busy: proxy / loader",
                 ["-" if t not in b or not b[t].get("wall_s") else
                  (f"{b[t]['proxy_cpu_s'] / b[t]['wall_s'] * 100:.0f}% / " if b[t].get("proxy_cpu_s") is not None else "- / ")
                  + f"{b[t]['loader_cpu_s'] / b[t]['wall_s'] * 100:.0f}%" for t in targets]))
for name, label in [("latency", "1 KiB at 2,000/s"), ("fan-in", "200 streams × 50/s × 4 KiB"),
                    ("fan-out", "1 MiB/s feed → 1,000 viewers"), ("fan-out-100", "1 MiB/s feed → 100 viewers"),
                    ("churn", "500 sessions/s open→answer"),
                    ("revoke", "revoke 1,000 live sessions at 1,000/s, publish→4410")]:
    r = load(name)
    if not r:
        continue
    rows.append((f"{label}, p50 / p99 µs",
                 [f"{f(lat(r.get(t), 'p50_us'))} / {f(lat(r.get(t), 'p99_us'))}" if t in r else "-" for t in targets]))
    if name in ("fan-in", "fan-out", "fan-out-100"):
        rows.append((f"{label}, proxy CPU s / peak RSS MB",
                     ["-" if t not in r or r[t].get("proxy_cpu_s") is None else
                      f"{r[t]['proxy_cpu_s']:.2f} / {r[t]['proxy_peak_rss_kib'] / 1024:.0f}" for t in targets]))
    rows.append((f"{label}, CPU busy: proxy / loader",
                 ["-" if t not in r or not r[t].get("wall_s") else
                  (f"{r[t]['proxy_cpu_s'] / r[t]['wall_s'] * 100:.0f}% / " if r[t].get("proxy_cpu_s") is not None else "- / ")
                  + f"{r[t]['loader_cpu_s'] / r[t]['wall_s'] * 100:.0f}%" for t in targets]))
    errs = sum(o["errors"] for o in r.values())
    if errs:
        rows.append((f"{label}, errors", [str(r[t]["errors"]) if t in r else "-" for t in targets]))
i = load("idle")
i4 = load("idle-4000")
if i or i4:
    cells = []
    for t in targets:
        o = (i or {}).get(t) or (i4 or {}).get(t)
        n = o["_params"]["sessions"] if o else 0
        cells.append("-" if not o or o.get("kib_per_session") is None else f"{o['kib_per_session']:.1f} ({n:,}, {o['errors']} errors)")
    rows.append(("idle: KiB per session (sessions, errors)", cells))

print("| scenario | " + " | ".join(targets) + " |")
print("|---|" + "---|" * len(targets))
for label, cells in rows:
    print(f"| {label} | " + " | ".join(cells) + " |")
