"""The template: the clean-slate copy of the primary that forks secondaries.

It is forked from the primary while the primary is single-threaded and it
stays single-threaded.  Its loop is C (``fh_template_main``,
csrc/lib/template.c): accepting, the pool of pre-forked members, exit
reports, stops, signals to secondaries, grace and stop, INFO.  Python is
called only through four hooks:

- ``fh_py_run_python``, in a child that took a launch of a Python entry
  (already set up in C: fds, cwd, umask, title, resource limits): CPython's
  after-fork work runs as ``os.fork()`` would run it in a child, then the
  entry, and the child exits;
- ``fh_py_member_ready``, in an idle pool member while Python entries are
  being launched: that after-fork work and Python's signal dispositions,
  ahead of the launch;
- ``fh_py_read_ahead``, in the template after a launch of a Python entry
  (at most once a second per directory and entry): the entry's directory
  finder and module or script are read ahead for the members forked next;
- ``fh_py_info_extra``: what only Python knows for INFO.

A reload (``forkhost reload``, docs/reliability.md) returns here, in a
child the old template forked from its loop: ``template_main`` imports the
preloaded modules afresh (``reimport``) and runs the loop again as the next
generation, or writes the failure's traceback where the old template reads
it and exits (the old generation serves on).
"""

from __future__ import annotations

import _imp
import ctypes
import gc
import json
import os
import signal
import socket
import sys
import time
import traceback

from . import _readahead, _secondary as secondary
from ._native import ffi, lib
from ._errors import EXIT_FORKHOST

# How long the template trusts its copy of the mount table.
MOUNTS_TTL = 1.0


def title_area() -> tuple[int, int]:
    """The memory /proc/PID/cmdline shows: (address, length).

    After setproctitle() moved the environment away, the whole argv+environ
    block is free for a title, as setproctitle(3) itself assumes; if some
    environ string still lives in it, only the argv part is ours.
    """
    with open("/proc/self/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    # fields[0] is field 3 (state); arg_start..env_end are fields 48..51.
    arg_start, arg_end, env_start, env_end = (int(x) for x in fields[45:49])
    environ = ctypes.POINTER(ctypes.c_void_p).in_dll(ctypes.CDLL(None), "environ")
    i = 0
    while environ[i]:
        if env_start <= environ[i] < env_end:
            return arg_start, arg_end - arg_start
        i += 1
    return arg_start, env_end - arg_start


# -- the hooks -------------------------------------------------------------

# CPython's after-fork work in a child (what os.fork() runs there: the GIL,
# the threading module, the import lock, os.register_at_fork callbacks).
# Through ctypes.pythonapi, which calls with the GIL held, as it must be.
_PyOS_AfterFork_Child = ctypes.pythonapi.PyOS_AfterFork_Child
_PyOS_AfterFork_Child.argtypes = []
_PyOS_AfterFork_Child.restype = None


def _after_fork_child() -> None:
    """CPython's after-fork work in a child the template forked in C.
    From 3.13 PyOS_AfterFork_Child releases the import lock that
    PyOS_BeforeFork took in the parent, and aborts the process when this
    thread does not hold it; these forks are made outside PyOS_BeforeFork,
    so the child takes the lock first.  It is free: the template forks
    single-threaded, from its C loop, never inside an import.  (Up to 3.12
    PyOS_AfterFork_Child makes the lock afresh whatever its state.)"""
    if sys.version_info >= (3, 13):
        _imp.acquire_lock()
    _PyOS_AfterFork_Child()


def _run_python_interrupted(exc_type, exc, tb):
    """An exception before fh_py_run_python's body ran: a SIGINT that came
    with the launch, caught by the Python handler a member installed ahead
    (secondary.prepare), is raised at the call.  The launch ends by it, as
    the interrupted program would."""
    if exc_type is KeyboardInterrupt:
        secondary.die_by_sigint()
    traceback.print_exception(exc_type, exc, tb)
    os._exit(EXIT_FORKHOST)


@ffi.def_extern(onerror=_run_python_interrupted)
def fh_py_run_python(run):
    """In the child that took a Python launch: run it, exit with its
    status (reported to the template and the client).  Never returns."""
    code = EXIT_FORKHOST
    try:
        if not secondary.prepared:
            _after_fork_child()
        req, target = secondary.taken_launch(run)
        secondary.finish(req, target, ffi.addressof(run, "spec"))
    except KeyboardInterrupt:
        secondary.die_by_sigint()
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


@ffi.def_extern()
def fh_py_member_ready():
    """In an idle pool member: the launch-independent part of a Python
    launch, ahead of it (secondary.prepare)."""
    try:
        secondary.prepare(_after_fork_child)
    except BaseException:            # a bug of ours: this member is no use
        traceback.print_exc()
        os._exit(EXIT_FORKHOST)


class _ReadAhead:
    """The mount table, read again when a second old: reading it never
    waits on a filesystem."""

    mounts: list[tuple[str, str]] = []
    until = 0.0

    @classmethod
    def current_mounts(cls) -> list[tuple[str, str]]:
        now = time.monotonic()
        if now >= cls.until:
            try:
                with open("/proc/self/mountinfo") as f:
                    cls.mounts = _readahead.parse_mounts(f.read())
            except OSError:
                cls.mounts = []
            cls.until = now + MOUNTS_TTL
        return cls.mounts


@ffi.def_extern()
def fh_py_read_ahead(cwd_fd, entry, module_flag):
    """A launch of Python entry ``entry`` runs in the directory cwd_fd:
    keep the directory's import finder, and the entry's module or script
    read ahead, ready for the members forked from now on.  Only ever an
    optimization: whatever goes wrong here, serving goes on."""
    name = os.fsdecode(ffi.string(entry))
    try:
        path = os.readlink(f"/proc/self/fd/{cwd_fd}")
        mounts = _ReadAhead.current_mounts()
        # Not on a network filesystem: a server could keep the template
        # waiting.
        if not _readahead.on_remote_fs(path, mounts) and _readahead.prepare_finder(path):
            _readahead.prefetch_entry(path, name, bool(module_flag), mounts, cwd_fd)
    except Exception as exc:       # a bug of ours; say it, do not stop
        print(f"forkhost template: reading ahead for {name!r}: "
              f"{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)


@ffi.def_extern()
def fh_py_info_extra(buf, size):
    """INFO's members that only Python knows."""
    try:
        text = json.dumps({"import_dirs": _readahead.import_dirs(),
                           "prefetched": _readahead.prefetched()})[1:-1].encode()
    except Exception:
        return 0
    if len(text) >= size:
        return 0
    ffi.memmove(buf, text, len(text))
    return len(text)


# -- the template ------------------------------------------------------------

def reimport(names: list[str]) -> None:
    """A reload's new generation: the preloaded modules and their
    submodules out of sys.modules, then imported again, in the primary's
    order (forkhost's own modules stay: they are the running code).  Any
    exception is the reload's failure."""
    import importlib
    mine = [n for n in names if n != "forkhost" and not n.startswith("forkhost.")]
    for mod in list(sys.modules):
        if any(mod == n or mod.startswith(n + ".") for n in mine):
            del sys.modules[mod]
    importlib.invalidate_caches()
    for name in names:
        importlib.import_module(name)


def _reborn(preload: list[str]) -> tuple[int, int] | None:
    """In the child a reload forked: CPython's after-fork work (the fork
    was made in C, outside os.fork()), then the preloads afresh.  (ready
    fd, generation), or None when the reload failed (its traceback went to
    the old template, which serves on)."""
    gen = ffi.new("unsigned *")
    ready = lib.fh_template_reborn(gen)
    try:
        _after_fork_child()
        reimport(preload)
        secondary.keep_exit_handlers()   # what the fresh imports registered
        gc.collect()
        secondary.warm_up()
        gc.freeze()
    except BaseException as exc:
        failed = "".join(traceback.format_exception(exc)).rstrip()
        text = f"the new generation's preload failed:\n{failed}".encode(errors="replace")
        try:
            while text:
                text = text[os.write(ready, text[:65536]):]
        except OSError:
            pass
        os.close(ready)
        return None
    return ready, gen[0]


def template_main(listener: socket.socket, ready_w: int, *, keep_fds: list[int],
                  prefix: str, socket_path: str, socket_ino: int, primary_pid: int,
                  max_secondaries: int, grace: float, pool_size: int = 0,
                  exit_notice_fd: int = -1, log_level: int = 0,
                  log_root: str | None = None, preload: list[str] = (),
                  on_primary_death: int = 0) -> int:
    """Entry point of the template, called in the child of the primary's
    fork.  Reports readiness on ready_w (b"ok", or an error text); returns
    the template's exit status when it ends.  A reload comes back here in
    a child of the loop, which becomes the next generation (_reborn)."""
    try:
        from setproctitle import setproctitle
        setproctitle(f"forkhost template [{prefix}]")
        area = title_area()
        signal.set_wakeup_fd(-1)       # the primary's, if any, is not ours
        # No Python object may own an fd now: the loop closes and reuses
        # them, and a later collection would close a number in use.
        listen_fd = listener.detach()
        secondary.keep_exit_handlers()   # the template itself leaves by _exit
        secondary.warm_up()   # children inherit the launch path's code warm
        gc.freeze()   # what the primary built stays shared with secondaries
    except BaseException as exc:
        os.write(ready_w, f"template failed to start: {exc}".encode())
        os.close(ready_w)
        return 1
    keep = [fd for fd in keep_fds if fd >= 0]
    c_keep = ffi.new("int[]", keep or [-1])
    c_prefix = ffi.new("char[]", prefix.encode())
    c_path = ffi.new("char[]", os.fsencode(socket_path))
    cfg = ffi.new("struct fh_template_config *")
    cfg.listen_fd = listen_fd
    cfg.prefix = c_prefix
    cfg.socket_path = c_path
    cfg.socket_ino = socket_ino
    cfg.primary_pid = primary_pid
    cfg.max_secondaries = max_secondaries
    cfg.grace_ms = int(grace * 1000)
    cfg.pool_size = pool_size
    cfg.exit_notice_fd = exit_notice_fd
    cfg.ready_fd = ready_w
    cfg.keep_fds = c_keep
    cfg.nkeep = len(keep)
    cfg.title_area = ffi.cast("char *", area[0])
    cfg.title_len = area[1]
    cfg.hooks.run_python = lib.fh_py_run_python
    cfg.hooks.member_ready = lib.fh_py_member_ready
    cfg.hooks.read_ahead = lib.fh_py_read_ahead
    cfg.hooks.info_extra = lib.fh_py_info_extra
    cfg.log_level = log_level
    cfg.on_primary_death = on_primary_death
    c_log_root = ffi.new("char[]", os.fsencode(log_root)) if log_root else ffi.NULL
    cfg.log_root = c_log_root
    cfg.generation = 1
    while True:
        code = lib.fh_template_main(cfg)
        if code != lib.FH_TEMPLATE_REBORN:
            return code
        reborn = _reborn(list(preload))
        if reborn is None:
            return EXIT_FORKHOST
        cfg.ready_fd, cfg.generation = reborn
