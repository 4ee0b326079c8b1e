"""simple_mp's secondary: find the rings and the pool by name, then talk.

    forkhost-run --prefix simple_mp apps/simple_mp/secondary.py          # a prompt
    forkhost-run --prefix simple_mp apps/simple_mp/secondary.py --echo   # answers

With a prompt it is DPDK's secondary: what you type goes to the primary,
what the primary sends is printed.  With --echo (how run.py starts it) it
answers each message with "echo: <text>" and ends at the primary's QUIT.
It maps nothing itself: it was forked from the primary's template, so the
arena and every object in it are already here, at the primary's addresses.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import names
from messages import QUIT, Channel, prompt_loop, say


def echo(chan: Channel) -> int:
    while True:
        got = chan.receive()
        for kind, text in got:
            if kind == QUIT:
                say("secondary: quit")
                return 0
            say(f"secondary: received {text!r}")
            if not chan.send(f"echo: {text}"):
                say(f"secondary: could not answer {text!r}")
        if not got:
            time.sleep(0.001)


def interactive(chan: Channel) -> int:
    def receive():
        while True:
            for kind, text in chan.receive():
                if kind == QUIT:
                    os._exit(0)
                say(f"secondary: received {text!r}")
            time.sleep(0.001)

    threading.Thread(target=receive, daemon=True, name="receiver").start()
    prompt_loop("secondary", chan, sys.stdin, sys.stdin.isatty())
    return 0


def main(argv: list[str]) -> int:
    chan = Channel(tx=names.SEC_2_PRI, rx=names.PRI_2_SEC)
    say(f"secondary: attached (pid {os.getpid()}); found {chan.tx.name}, "
        f"{chan.rx.name}, {chan.pool.name}")
    return echo(chan) if "--echo" in argv[1:] else interactive(chan)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
