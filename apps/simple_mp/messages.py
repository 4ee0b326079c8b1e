"""simple_mp's messages: a buffer from the pool, its address through a ring.

A message is one mempool object: byte 0 its kind (TEXT or QUIT), bytes 2-3
the text's length (little-endian), then the UTF-8 text.  The sender gets a
buffer, fills it and enqueues its address; the receiver dequeues the
address, reads the buffer and puts it back in the pool.  Only the address
crosses the ring: it is valid in every process of the prefix.
"""

from __future__ import annotations

import sys
import time

from forkhost.shm import Mempool, NoSpaceError, Ring

import names

TEXT, QUIT = 0, 1
HEADER = 4
MAX_TEXT = names.MSG_SIZE - HEADER


def say(line: str) -> None:
    """One line in one write: the primary and the secondary share stdout,
    and print() writes the text and the newline separately when stdout is
    unbuffered (PYTHONUNBUFFERED), so another process's line could land
    between them."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Channel:
    """One direction out, one direction in, and the shared pool."""

    def __init__(self, tx: str, rx: str):
        self.tx = Ring.lookup(tx)
        self.rx = Ring.lookup(rx)
        self.pool = Mempool.lookup(names.MSG_POOL)

    def send(self, text: str, kind: int = TEXT, timeout: float = 5.0) -> bool:
        data = text.encode()[:MAX_TEXT]
        try:
            buf = self.pool.get()
        except NoSpaceError:
            return False
        view = self.pool.view(buf)
        view[0] = kind
        view[2:4] = len(data).to_bytes(2, "little")
        view[HEADER:HEADER + len(data)] = data
        deadline = time.monotonic() + timeout
        while not self.tx.enqueue(buf):          # ring full: the peer is slow
            if time.monotonic() > deadline:
                self.pool.put(buf)
                return False
            time.sleep(0.001)
        return True

    def receive(self, max_n: int = 32) -> list[tuple[int, str]]:
        """Whatever has arrived (maybe nothing), oldest first."""
        out = []
        addrs = self.rx.dequeue_burst(max_n)
        for buf in addrs:
            view = self.pool.view(buf)
            n = int.from_bytes(view[2:4], "little")
            out.append((view[0], bytes(view[HEADER:HEADER + n]).decode(errors="replace")))
        if addrs:
            self.pool.put_bulk(addrs)
        return out

    def status(self) -> str:
        return (f"pool: {self.pool.in_use} of {self.pool.count} buffers in use; "
                f"{self.tx.name}: {len(self.tx)}, {self.rx.name}: {len(self.rx)} queued")


def prompt_loop(who: str, chan: Channel, stdin, interactive: bool) -> None:
    """Read commands until `quit` or end of input."""
    while True:
        if interactive:
            sys.stdout.write("simple_mp > ")
            sys.stdout.flush()
        line = stdin.readline()
        if not line:
            return
        cmd, _, arg = line.strip().partition(" ")
        if cmd == "send":
            ok = chan.send(arg)
            say(f"{who}: sent {arg!r}" if ok else f"{who}: could not send {arg!r} "
                f"(no buffer or the ring stayed full)")
        elif cmd == "status":
            say(f"{who}: {chan.status()}")
        elif cmd == "quit":
            return
        elif cmd in ("help", "?"):
            say("commands: send <text>, status, quit")
        elif cmd:
            say(f"{who}: unknown command {cmd!r} (try help)")
