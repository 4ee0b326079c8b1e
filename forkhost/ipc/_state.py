"""This process's IPC: its endpoint (the primary's or a secondary's), its
Python actions by name, its primary and the template's exit channel, and
what a fork leaves of them.  Kept apart so that both endpoints and the API
read one copy; read it as ``_state.X`` (a fork replaces the objects)."""

from __future__ import annotations

import os
import sys
import threading
import traceback
from collections.abc import Callable

from .._errors import IPCError
from ._wire import ACTION_FAILED, PARAM_MAX

lock = threading.RLock()
actions: dict[bytes, Callable] = {}
# This process's pid, kept by the fork hook: os.getpid() is a system call,
# too dear for every request.
pid = os.getpid()
endpoint = None                 # a _PrimaryEndpoint or a _SecondaryEndpoint
primary = None                  # this process's Primary, once prepare()d
exit_pair = None                # (mine, theirs): the exit channel, until started


def run_action(cb, msg, peer) -> bool:
    """cb(msg, peer); False when it raised (see action_failed)."""
    try:
        cb(msg, peer)
        return True
    except BaseException as exc:
        action_failed(msg.name, exc, peer)
        return False


def action_failed(name: str, exc: BaseException, peer) -> None:
    """An action raised: say so, and answer a request it left unanswered
    with ACTION_FAILED and the exception's text."""
    print(f"forkhost ipc: the action {name!r} raised:", file=sys.stderr)
    traceback.print_exception(exc)
    if peer.is_request and not peer.replied:
        text = f"{type(exc).__name__}: {exc}".encode(errors="replace")
        try:
            peer._answer(name.encode(errors="replace"), ACTION_FAILED,
                         text[:PARAM_MAX], [])
        except IPCError:
            pass


def _after_fork_in_child() -> None:
    """A forked child has none of our threads: forget the parent's
    endpoint (closing the child's copies of its fds, so that the parent's
    membership ends with the parent), its actions and its primary.
    libforkhost's own fork handler does the same for the C side."""
    global lock, actions, endpoint, primary, exit_pair, pid
    ep, pair = endpoint, exit_pair
    pid = os.getpid()
    lock = threading.RLock()
    actions = {}
    endpoint = primary = exit_pair = None
    if ep is not None:
        try:
            ep._forget_in_child()
        except OSError:
            pass
    if pair is not None:
        # The template keeps its end by number (and closes the rest by
        # number): the objects must not close anything when collected.
        for s in pair:
            if s is not None:
                s.detach()


os.register_at_fork(after_in_child=_after_fork_in_child)
