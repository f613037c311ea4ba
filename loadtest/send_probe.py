#!/usr/bin/env python3
"""Kernel time of one small send: `send` against `sendmsg` with one buffer.

The gateway writes a frame pushed to an idle socket straight away with one
non-blocking call (src/wire/outbox.rs). This probe is why a one-buffer
write uses `send`: `sendmsg` first copies the `msghdr` and imports the iovec
array from user memory. It sends N frames of SIZE bytes over loopback TCP
from CPU 0 while a reader drains them on CPU 1, and prints the sender
thread's system time for each call, median of RUNS interleaved runs.

    python3 loadtest/send_probe.py [N] [SIZE] [RUNS]
"""
import os
import resource
import socket
import sys
import threading


def run(call, n, size):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    tx = socket.create_connection(listener.getsockname())
    rx, _ = listener.accept()
    for s in (tx, rx):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def drain():
        os.sched_setaffinity(0, {1})
        left = n * size
        while left > 0:
            got = rx.recv(1 << 20)
            if not got:
                break
            left -= len(got)

    reader = threading.Thread(target=drain)
    reader.start()
    os.sched_setaffinity(0, {0})
    buf = b"x" * size
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_stime
    if call == "send":
        for _ in range(n):
            tx.send(buf)
    else:
        for _ in range(n):
            tx.sendmsg([buf])
    spent = resource.getrusage(resource.RUSAGE_THREAD).ru_stime - before
    reader.join()
    for s in (tx, rx, listener):
        s.close()
    return spent


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 4100
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    times = {"send": [], "sendmsg": []}
    for _ in range(runs):
        for call in times:
            times[call].append(run(call, n, size))
    for call, t in times.items():
        t.sort()
        med = t[len(t) // 2]
        print(f"{call:8} {size} B x {n}: median {med:.3f} s system time "
              f"({med / n * 1e6:.2f} us per call), runs {[round(x, 3) for x in t]}")


if __name__ == "__main__":
    main()
