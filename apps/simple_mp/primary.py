"""simple_mp's primary: create the rings and the pool, then talk.

    python apps/simple_mp/primary.py [--prefix P] [--runtime-dir D]

On its own it is DPDK's primary: it creates the objects, prints what it
receives and sends what you type; start secondaries from other terminals
with `forkhost-run --prefix simple_mp apps/simple_mp/secondary.py`.
run.py calls main() with an echo secondary launched alongside.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import forkhost
from forkhost.shm import Mempool, Ring

import names
from messages import QUIT, Channel, prompt_loop, say

HERE = Path(__file__).resolve().parent


def create_objects() -> None:
    """Everything the secondaries look up by name.  Done after the arena
    exists (Primary.start); the objects are in shared memory, so secondaries
    forked before or after this see them alike."""
    Ring.create(names.PRI_2_SEC, names.RING_SIZE)
    Ring.create(names.SEC_2_PRI, names.RING_SIZE)
    Mempool.create(names.MSG_POOL, names.POOL_SIZE, names.MSG_SIZE,
                   cache_size=names.POOL_CACHE)


def receiver(chan: Channel, stop: threading.Event) -> None:
    """The primary's "lcore": print what arrives until told to stop, then
    drain what is left.  A thread is fine here: the template was forked
    before it started, while the primary was single-threaded."""
    while True:
        # Read the flag before draining: a stop set after an empty receive
        # must still see what arrived in between.
        stopping = stop.is_set()
        got = chan.receive()
        for _, text in got:
            say(f"primary: received {text!r}")
        if not got:
            if stopping:
                return
            time.sleep(0.001)


def main(argv: list[str] | None = None, *, with_secondary: bool = False) -> int:
    ap = argparse.ArgumentParser(prog="simple_mp primary")
    ap.add_argument("--prefix", default=names.PREFIX)
    ap.add_argument("--runtime-dir")
    a = ap.parse_args(argv)

    with forkhost.Primary(a.prefix, runtime_dir=a.runtime_dir, arena_size="16M",
                          pool=0):
        create_objects()
        say(f"primary: ready (pid {os.getpid()}, prefix {a.prefix!r}); rings "
            f"{names.PRI_2_SEC}, {names.SEC_2_PRI}, pool {names.MSG_POOL}")
        chan = Channel(tx=names.PRI_2_SEC, rx=names.SEC_2_PRI)
        sec = None
        if with_secondary:
            sec = forkhost.launch(str(HERE / "secondary.py"), ["--echo"],
                                  prefix=a.prefix, runtime_dir=a.runtime_dir,
                                  stdin=forkhost.DEVNULL)
            say(f"primary: launched the secondary (pid {sec.pid})")
        stop = threading.Event()
        thread = threading.Thread(target=receiver, args=(chan, stop), name="receiver")
        thread.start()
        code = 0
        try:
            prompt_loop("primary", chan, sys.stdin, sys.stdin.isatty())
        finally:
            if sec is not None:
                # The secondary handles messages in order: it answers every
                # earlier one before it reads this.
                chan.send("", kind=QUIT)
                status = sec.wait(30)
                sec.close()
                if status != 0:
                    say(f"primary: the secondary exited with {status}")
                    code = 1
            stop.set()
            thread.join()
        say(f"primary: {chan.status()}")
        say("primary: bye")
    return code


if __name__ == "__main__":
    sys.exit(main())
