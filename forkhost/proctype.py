"""forkhost.init(): one Python program, either role, as fh_init() is for C.

``python app.py --proc-type=auto -- ARGS`` (or ``python -m pkg.app ...``)
with ``forkhost.init()`` near the top of the program:

- as the primary (``--proc-type=primary``, or ``auto`` with no live primary
  for the prefix), it starts the primary in this process, the template
  being forked right there, with every module imported so far preloaded,
  and IPC running; it returns ``"primary"`` and the program goes on (it
  may start threads now).  The primary stops when the program exits.
- started from a shell while a primary runs (``secondary``, or ``auto``), it
  hands the script or module over to that primary's template with this
  process's argv, environment, cwd, umask, stdio, limits and signals, waits,
  and exits as the secondary does (the client code is forkhost-run's,
  libforkhost's ``fh_client_run``).  It never returns.
- in the secondary the template forked for it, the program runs again from
  its first line, and here ``init()`` returns ``"secondary"``.

The options are fh_init's (forkhost/init.h), parsed by the same C code;
they are removed from ``sys.argv`` so that the program's own parser sees
only its arguments.  A bad option prints one line and exits 125.
"""

from __future__ import annotations

import atexit
import os
import sys

from ._native import ffi, lib
from ._errors import EXIT_FORKHOST, ForkhostError, PrefixInUseError

_role: str | None = None
_primary = None


def _prog() -> str:
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"


def _flush() -> None:
    """Python's own buffers out before C ends the process (exit() or
    fh_client_run, which never return to Python)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass


def _fail(msg: str, code: int = EXIT_FORKHOST):
    _flush()
    print(f"{_prog()}: {msg}", file=sys.stderr, flush=True)
    os._exit(code)


def _parse(argv: list[str]):
    keep = [ffi.new("char[]", os.fsencode(a)) for a in argv]
    c_argv = ffi.new("char *[]", keep + [ffi.NULL])
    o = ffi.new("struct fh_init_options *")
    _flush()                                     # C's exit() skips Python's
    lib.fh_init_parse(len(argv), c_argv, o)      # exits 125 on a bad option

    def text(p):
        return os.fsdecode(ffi.string(p)) if p != ffi.NULL else None
    return o, text(o.prefix), text(o.runtime_dir), text(o.huge_pages)


def _entry(argv0: str) -> tuple[str, int]:
    """What to hand over: the module run with -m, else the script, by the
    name it was started with (the secondary runs in the same cwd)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        name = spec.name.removesuffix(".__main__")
        return name, lib.FH_LAUNCH_MODULE
    path = getattr(main, "__file__", None)
    if path and argv0 and os.path.exists(argv0):
        return argv0, 0
    if not path:
        _fail("forkhost.init() hands over the script or the module (-m) that "
              "is running, and this program has neither (python -c, or an "
              "interactive session)")
    return path, 0


def _hand_over(args: list[str], prefix: str, runtime_dir: str | None,
               starting: bool):
    entry, flags = _entry(args[0] if args else "")
    _flush()
    c = ffi.new("struct fh_client *")
    keep = [ffi.new("char[]", os.fsencode(_prog()))]
    lib.fh_client_init(c, keep[0])
    for field, value in (("prefix", prefix), ("runtime_dir", runtime_dir),
                         ("entry", entry)):
        if value is not None:
            keep.append(ffi.new("char[]", os.fsencode(value)))
            setattr(c, field, keep[-1])
    keep.append(ffi.new("char[]", b"--file-prefix"))
    c.prefix_from = keep[-1]
    c.flags = flags
    cargs = [ffi.new("char[]", os.fsencode(a)) for a in args[1:]]
    keep.extend(cargs)
    arr = ffi.new("char *[]", cargs + [ffi.NULL])
    c.args = arr
    c.nargs = len(cargs)
    c.wait_for_socket = 1 if starting else 0
    lib.fh_client_run(c)                 # never returns


def init(argv: list[str] | None = None) -> str:
    """Become the primary, hand this program over, or go on as the
    secondary (above).  argv: the arguments to parse, sys.argv by default
    (whose forkhost options are then removed).  Returns "primary" or
    "secondary"; a second call returns the role again."""
    global _role, _primary
    if _role is not None:
        return _role
    args = list(sys.argv if argv is None else argv)
    o, prefix, runtime_dir, huge = _parse(args)
    consumed = o.consumed
    if lib.fh_proc_type() == lib.FH_PROC_SECONDARY:
        _role = "secondary"
    else:
        from . import _runtime as runtime
        try:
            paths = runtime.paths(prefix, runtime_dir)
        except ForkhostError as err:
            _fail(str(err))
        if o.proc_type == lib.FH_PROC_SECONDARY:
            _hand_over(args, paths.prefix, str(paths.root), False)
        from .primary import Primary
        primary = Primary(paths.prefix, runtime_dir=paths.root,
                          arena_size=o.arena_size,
                          arena_max=o.arena_max or None, pool=o.pool,
                          huge_pages=huge, ipc=True,
                          on_primary_death="stop" if o.on_primary_death ==
                          lib.FH_ON_PRIMARY_DEATH_STOP else "survive")
        try:
            primary.start()
        except PrefixInUseError as err:
            if o.proc_type == lib.FH_PROC_PRIMARY:
                _fail(str(err))
            _hand_over(args, paths.prefix, str(paths.root), True)
        except ForkhostError as err:
            _fail(str(err))
        _primary = primary
        atexit.register(_stop, primary)
        _role = "primary"
    if argv is None and consumed > 0:
        del sys.argv[1:consumed + 1]
    return _role


def _stop(primary) -> None:
    if primary.pid == os.getpid():       # not in a forked child
        primary.stop()


def primary():
    """The Primary that init() started in this process, or None."""
    return _primary
