#!/usr/bin/env python3
"""Kernel time of the gateway's socket writes, one way against another.

Two questions, each answered by sending over loopback TCP from CPU 0 while
a reader drains on CPU 1 and printing the sender thread's system time,
median of RUNS interleaved runs:

- `small`: a frame pushed to an idle socket goes out at once with one
  non-blocking call (src/wire/outbox.rs). `send` against `sendmsg` with one
  buffer: `sendmsg` first copies the `msghdr` and imports the iovec array
  from user memory. N frames of SIZE bytes.
- `zerocopy`: 1 GiB in 64 KiB and 256 KiB writes, copied against
  `MSG_ZEROCOPY` (completions reaped from the error queue as they come).
  Over loopback the kernel copies zero-copy pages anyway when it delivers
  them to the local socket, so the pinning and the notifications are extra.

    python3 loadtest/send_probe.py small [N] [SIZE] [RUNS]
    python3 loadtest/send_probe.py zerocopy [RUNS]
"""
import os
import resource
import socket
import sys
import threading


SO_ZEROCOPY = 60
MSG_ZEROCOPY = 0x4000000


def run(call, n, size):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    tx = socket.create_connection(listener.getsockname())
    rx, _ = listener.accept()
    for s in (tx, rx):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if call == "zerocopy":
        tx.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)

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
    elif call == "sendmsg":
        for _ in range(n):
            tx.sendmsg([buf])
    elif call == "copy":
        for _ in range(n):
            tx.sendall(buf)
    else:
        for _ in range(n):
            tx.sendmsg([buf], [], MSG_ZEROCOPY)
            while True:
                try:
                    tx.recvmsg(0, 256, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
    spent = resource.getrusage(resource.RUSAGE_THREAD).ru_stime - before
    reader.join()
    for s in (tx, rx, listener):
        s.close()
    return spent


def compare(calls, n, size, runs):
    times = {call: [] for call in calls}
    for _ in range(runs):
        for call in calls:
            times[call].append(run(call, n, size))
    for call, t in times.items():
        t.sort()
        med = t[len(t) // 2]
        print(f"{call:8} {size} B x {n}: median {med:.3f} s system time "
              f"({med / n * 1e6:.2f} us per call), runs {[round(x, 3) for x in t]}")


def main():
    what = sys.argv[1] if len(sys.argv) > 1 else "small"
    args = [int(a) for a in sys.argv[2:]]
    if what == "small":
        n, size, runs = (args + [200_000, 4100, 5][len(args):])[:3]
        compare(["send", "sendmsg"], n, size, runs)
    elif what == "zerocopy":
        runs = args[0] if args else 3
        for size in (64 * 1024, 256 * 1024):
            compare(["copy", "zerocopy"], (1 << 30) // size, size, runs)
    else:
        sys.exit(f"unknown probe {what!r}: small or zerocopy")


if __name__ == "__main__":
    main()
