"""The Python side of benchmarks/ipc.py.

As a forkhost secondary (``forkhost-run ipc_bench_sec:main MODE ...``):
    rtt PATH N BATCHES  sync requests "echo" to the primary, in batches
                        alternating with batches of a bare ping-pong with
                        the echo server at PATH (so both see the same load)
    rate N              N messages "count", then a request "flush"
    serve               answer "echo" until stdin closes
As a plain program (the bare baselines, no forkhost at all):
    python ipc_bench_sec.py echo-server PATH
    python ipc_bench_sec.py bare-client PATH N BATCHES
    python ipc_bench_sec.py bare-rate PATH N

Each prints one JSON line.  Times are the best batch's mean: on a shared
machine the best batch is the one least disturbed by other processes.
"""

import json
import os
import socket
import sys
import time

PAYLOAD = b"x" * 64
# The size of an IPC record with PAYLOAD: header (96) + param.
BARE_RECORD = b"E" + b"x" * (96 + 64 - 1)


def _pin() -> None:
    """To the CPU benchmarks/ipc.py's placement names (FHB_CPU), before any
    thread starts: the IPC thread inherits it."""
    cpu = os.environ.get("FHB_CPU")
    if cpu:
        os.sched_setaffinity(0, {int(cpu)})


def best_mean(fn, n: int, batches: int) -> float:
    return best_means([fn], n, batches)[0]


def best_means(fns, n: int, batches: int) -> list[float]:
    """Batches of each fn in turn; the best batch mean of each."""
    per = max(1, n // batches)
    for fn in fns:
        fn(200)                   # warm up
    best = [float("inf")] * len(fns)
    for _ in range(batches):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            fn(per)
            best[i] = min(best[i], (time.perf_counter() - t) / per)
    return best


def _bare_pingpong(path: str):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.connect(path)

    def run(k):
        for _ in range(k):
            s.send(BARE_RECORD)
            s.recv(8192)
    return run


def main(argv):
    from forkhost import ipc
    _pin()
    mode = argv[1]
    if mode == "rtt":
        path, n, batches = argv[2], int(argv[3]), int(argv[4])
        ipc.start()

        def run(k):
            for _ in range(k):
                ipc.request("echo", PAYLOAD, timeout=5)
        t_ipc, t_bare = best_means([run, _bare_pingpong(path)], n, batches)
        print(json.dumps({"rtt_us": t_ipc * 1e6, "bare_us": t_bare * 1e6}), flush=True)
    elif mode == "rate":
        n = int(argv[2])
        ipc.start()
        ipc.request("flush", timeout=5)
        t = time.perf_counter()
        for _ in range(n):
            ipc.send("count", PAYLOAD)
        with ipc.request("flush", timeout=60) as r:
            got = int(r.msgs[0].param)
        dt = time.perf_counter() - t
        print(json.dumps({"rate": n / dt, "counted": got}), flush=True)
    elif mode == "serve":
        def echo(msg, peer):
            ipc.reply(peer, msg.name, msg.param)
        ipc.register("echo", echo)
        print("ready", flush=True)
        sys.stdin.read()
    return 0


def echo_server(path: str) -> None:
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    srv.bind(path)
    srv.listen(8)
    print("ready", flush=True)
    while True:
        c, _ = srv.accept()
        count = 0
        while True:
            data = c.recv(8192)
            if not data:
                break
            if data == b"FLUSH":
                c.send(str(count).encode())
                count = 0
            elif data[:1] == b"E":
                c.send(data)
            else:
                count += 1
        c.close()


def bare_client(path: str, n: int, batches: int) -> None:
    run = _bare_pingpong(path)
    print(json.dumps({"rtt_us": best_mean(run, n, batches) * 1e6}), flush=True)


def bare_rate(path: str, n: int) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.connect(path)
    rec = b"C" + BARE_RECORD[1:]
    t = time.perf_counter()
    for _ in range(n):
        s.send(rec)
    s.send(b"FLUSH")
    got = int(s.recv(64))
    print(json.dumps({"rate": n / (time.perf_counter() - t), "counted": got}),
          flush=True)


if __name__ == "__main__":
    what = sys.argv[1]
    if what == "echo-server":
        echo_server(sys.argv[2])
    elif what == "bare-client":
        bare_client(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif what == "bare-rate":
        bare_rate(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit(f"unknown mode {what}")
    os._exit(0)
