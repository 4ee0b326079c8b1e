"""The secondary, after the template's os.fork(): become the client's
process and run a Python entry.

The child gets: the template's whole address space (the arena, the native
library, every preloaded module) and the client's fds, cwd, env, umask and
argv.  It closes every other fd (fh_child_setup), drops the template's
Python-level state (signal wake-up fd, atexit handlers, stdio objects,
__main__), and never returns into the template: ``run()`` returns an exit
status that the caller hands straight to ``os._exit``.

Native entries never come here: fh_spawn_native forks in C and the child
does not run Python at all.
"""

from __future__ import annotations

import atexit
import codecs
import importlib
import io
import operator
import os
import signal
import sys
import threading
import traceback

# signal's C half (CPython's, which `signal` wraps): the same calls without
# converting every signal number and handler to an enum and back, which
# the launch path paid on each call over all signals (getsignal over
# valid_signals(): 135 µs warm through `signal`, 4 µs through `_signal`).
import _signal

from . import entries
from ._native import ffi, lib
from .errors import EXIT_FORKHOST
from .protocol import HDR, LAUNCH, Launch, header


def _write_stderr(text: str) -> None:
    try:
        os.write(2, text.encode("utf-8", "backslashreplace"))
    except OSError:
        pass


# True once this process reset its signals ahead of a launch (a pool member
# does while it waits): setup then skips the step.
signals_ready = False


ALL_SIGNALS = frozenset(_signal.valid_signals())


def block_all_signals() -> set[int]:
    """Block every signal; returns the mask before (numbers, not enums)."""
    return _signal.pthread_sigmask(_signal.SIG_BLOCK, ALL_SIGNALS)


def set_signal_mask(mask) -> None:
    _signal.pthread_sigmask(_signal.SIG_SETMASK, mask)


def prepare_signals() -> None:
    """Signals as a fresh program has them, done before the launch is
    known: the kernel's dispositions (C), then the signal module's table."""
    global signals_ready
    signal.set_wakeup_fd(-1)           # the template's pipe is not ours
    rc = lib.fh_reset_signals()
    if rc < 0:
        raise OSError(-rc, os.strerror(-rc))
    _python_signal_defaults()
    signals_ready = True


def _python_signal_defaults() -> None:
    """What a freshly started ``python`` has: SIGINT raises KeyboardInterrupt,
    SIGPIPE and SIGXFSZ are ignored (so writes fail with an exception), the
    rest is SIG_DFL.  fh_child_setup already reset the kernel's view; this
    brings the signal module's own table in line with it."""
    for sig in ALL_SIGNALS:
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        if _signal.getsignal(sig) not in (_signal.SIG_DFL, None):
            try:
                _signal.signal(sig, _signal.SIG_DFL)
            except (OSError, ValueError):
                pass
    _signal.signal(signal.SIGINT, _signal.default_int_handler)
    _signal.signal(signal.SIGPIPE, _signal.SIG_IGN)
    _signal.signal(signal.SIGXFSZ, _signal.SIG_IGN)


_SPLIT_VAR = operator.methodcaller("split", b"=", 1)


# What the template had and the secondary replaces (os.environ's mapping,
# the stdio objects) is kept here, not freed: freeing it would cost the
# launch its deallocations and the old streams' finalizers (flush, close;
# they never close the fds, as CPython makes them with closefd=False), and
# a secondary ends with _exit anyway.
_left_behind: list = []


def _set_environ(req: Launch, spec) -> dict[bytes, bytes]:
    """The client's environment, in C (`environ`, set in one step by
    fh_install_environ, with systemd's LISTEN_PID/LISTEN_FDS for the fds
    at 3, 4, ...) and in os.environ, whose mapping is replaced to match
    without a putenv/unsetenv per variable.  Returns the mapping."""
    rc = lib.fh_install_environ(spec)
    if rc < 0:
        raise OSError(-rc, os.strerror(-rc))
    # Every variable has a "=" after its first byte (the parsers check).
    # getenv(3) finds the first of a name given twice, so the dict is
    # built from the end; map() keeps the loop in C.
    data = dict(map(_SPLIT_VAR, reversed(req.env)))
    for name in (b"LISTEN_PID", b"LISTEN_FDS", b"LISTEN_FDNAMES"):
        data.pop(name, None)
    if req.nextra:
        data[b"LISTEN_PID"] = str(os.getpid()).encode()
        data[b"LISTEN_FDS"] = str(req.nextra).encode()
    # os.environ and os.environb share one bytes -> bytes mapping: theirs
    # is now this one, and the template's is left behind.
    _left_behind.append(os.environ._data)
    os.environ._data = os.environb._data = data
    return data


_STDIO = ((0, "<stdin>"), (1, "<stdout>"), (2, "<stderr>"))


def _make_stdio(present: int, env) -> list:
    """Text streams over fds 0, 1, 2 (None where absent), not installed,
    made as CPython's create_stdio makes them: io.open (buffer sized by the
    fd's st_blksize), the raw file named "<stdin>" and so on, newline "\n"
    (no translation), stderr line-buffered with backslashreplace, stdin
    always buffered; PYTHONUNBUFFERED and PYTHONIOENCODING are honoured."""
    buffered = not env.get(b"PYTHONUNBUFFERED")
    enc_spec = env.get(b"PYTHONIOENCODING", b"").decode("ascii", "ignore")
    enc, _, errs = enc_spec.partition(":")
    # As python: the codec's own name ("latin-1" is "iso8859-1"); an
    # unknown one raises LookupError, which run() reports.
    base_enc = codecs.lookup(enc).name if enc else \
        (sys.__stdout__.encoding if sys.__stdout__ else "utf-8")
    base_errs = errs or (sys.__stdout__.errors if sys.__stdout__ else "strict")
    streams = []
    for fd, name in _STDIO:
        if not present & (1 << fd):
            streams.append(None)
            continue
        write = fd > 0
        if write and not buffered:
            buf = raw = io.open(fd, "wb", 0, closefd=False)
        else:
            buf = io.open(fd, "wb" if write else "rb", -1, closefd=False)
            raw = buf.raw
        raw.name = name
        text = io.TextIOWrapper(
            buf, base_enc, "backslashreplace" if fd == 2 else base_errs, "\n",
            buffered and (fd == 2 or raw.isatty()), not buffered)
        text.mode = "w" if write else "r"
        streams.append(text)
    return streams


def _reopen_stdio(present: int, env) -> None:
    """New sys.stdin/stdout/stderr over the client's fds.

    The template's objects were set up for the primary's fds (a terminal is
    line-buffered, a file is not); a secondary must buffer for its own.
    """
    streams = _make_stdio(present, env)
    _left_behind.append((sys.stdin, sys.stdout, sys.stderr,
                         sys.__stdin__, sys.__stdout__, sys.__stderr__))
    sys.stdin = sys.__stdin__ = streams[0]
    sys.stdout = sys.__stdout__ = streams[1]
    sys.stderr = sys.__stderr__ = streams[2]


_REHEARSAL_SOURCE = b"def main(argv):\n    return len(argv) - 1\n"


def rehearse(template_cwd: str = "/") -> None:
    """Walk the launch path once on a dummy request, touching nothing a
    real launch depends on.  A pool member does this while it waits: the
    pages the path writes (allocator arenas, type and module objects, the
    compiler, cffi, the import system) are copied from the template now,
    by copy-on-write faults off the critical path, instead of during a
    launch.  The cost is those pages, private to the member."""
    cwd_fd = os.open(template_cwd, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        env = [k + b"=" + v for k, v in os.environb.items()]
        body = Launch(b"forkhost_rehearsal:main", [b"forkhost_rehearsal:main", b"x"],
                      env, 0, 0o022, 0b111, 0).encode()
        rec = header(LAUNCH, HDR.size + len(body), 4) + body
        run = ffi.new("struct fh_taken_launch *")
        if lib.fh_launch_parse(rec, len(rec), 4, ffi.addressof(run, "view")) == 0:
            name, symbol = ffi.new("char[]", b"m"), ffi.new("char[]", b"f")
            run.kind, run.name, run.symbol = lib.FH_ENTRY_FUNCTION, name, symbol
            taken_launch(run)
        _make_stdio(0b111, {})
        code = compile(_REHEARSAL_SOURCE, "<forkhost rehearsal>", "exec",
                       dont_inherit=True)
        namespace: dict = {}
        exec(code, namespace)
        namespace["main"](["rehearsal"])
        import importlib.util
        importlib.util.find_spec("forkhost_rehearsal_missing")
    finally:
        os.close(cwd_fd)


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass


def _set_path(first: str, env) -> None:
    """sys.path the way ``python`` would build it for the client (first:
    the cwd, or where the script is), then the primary's: so the client's
    modules win unless already preloaded."""
    front = [first]
    for part in os.fsdecode(env.get(b"PYTHONPATH", b"")).split(os.pathsep):
        if part:
            front.append(os.path.abspath(part))
    rest = [p for p in sys.path if p not in front]
    sys.path[:] = front + rest
    # The client's directories may have changed since the template listed
    # them: forget those listings (importlib.invalidate_caches() would
    # forget every directory's, and the import would list them all again).
    cache = sys.path_importer_cache
    for path in front:
        finder = cache.get(path)
        if finder is not None and hasattr(finder, "invalidate_caches"):
            finder.invalidate_caches()


def _exit_code_of(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    _write_stderr(f"{code}\n")
    return 1


# Frames a traceback starts with that are forkhost's or the import
# system's, not the entry's: the interpreter leaves the import system's out
# of an `import` statement's tracebacks too.
_HIDDEN_FILES = (__file__, entries.__file__, importlib.__file__,
                 "<frozen importlib._bootstrap>",
                 "<frozen importlib._bootstrap_external>")


def _print_exception(exc: BaseException) -> None:
    """Print like the interpreter would, minus forkhost's own frames and
    the import system's in front of the entry's."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename in _HIDDEN_FILES:
        tb = tb.tb_next
    exc.__traceback__ = tb    # the interpreter prints the exception's own
    try:
        sys.excepthook(type(exc), exc, tb)
    except BaseException:
        import traceback
        traceback.print_exception(type(exc), exc, tb)


def _die_by_sigint() -> None:
    """Python exits by SIGINT on an unhandled KeyboardInterrupt, so the
    shell sees the signal; do the same."""
    _flush_stdio()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
    os.kill(os.getpid(), signal.SIGINT)


def _run_entry(target: entries.Target, argv: list[str], env) -> int:
    if target.kind == entries.SCRIPT:
        script = entries.load_script(target.path)
        _set_path(script.path0, env)
        code, main = script.code, script.main
    else:
        _set_path(os.getcwd(), env)
        if target.kind == entries.FUNCTION:
            fn = entries.import_function(target)
            result = fn(argv)
            if result is None:
                return 0
            if isinstance(result, int):
                return result & 0xFF
            raise SystemExit(result)
        code, main = entries.load_module(target.name)
        argv[0] = main.__file__ or argv[0]
    sys.argv = argv
    exec(code, main.__dict__)
    return 0


def _finalize() -> None:
    """The parts of interpreter shutdown a program can observe: non-daemon
    threads are joined, atexit handlers run, stdio is flushed."""
    try:
        threading._shutdown()
    except BaseException as exc:
        _print_exception(exc)
    atexit._run_exitfuncs()
    _flush_stdio()


def build_spec(req: Launch, fds: list[int], title_area: tuple[int, int],
               report_fd: int, client_fd: int = 0, client_pid: int = 0):
    """The C view of a launch; returns (spec, keep): keep holds the cffi
    buffers the spec points into and must outlive it.  argv and envp point
    into the request's own packed strings (fh_spec_strings); a caller that
    outlives the spec (the template) frees the arrays with
    fh_spec_release."""
    spec = ffi.new("struct fh_child_spec *")
    blob = ffi.from_buffer(req.strings)
    c_fds = ffi.new("int[]", fds)
    keep = [blob, c_fds, req]
    if lib.fh_spec_strings(spec, blob, len(blob), len(req.argv), len(req.env)) < 0:
        raise OSError(ffi.errno, os.strerror(ffi.errno))
    spec.fds, spec.nfds = c_fds, len(fds)
    spec.stdio_mask, spec.nextra = req.stdio_mask, req.nextra
    spec.umask = req.umask
    spec.title_area, spec.title_len = ffi.cast("char *", title_area[0]), title_area[1]
    spec.report_fd = report_fd
    spec.client_fd = client_fd
    spec.client_pid = client_pid       # its limits, nice, policy, affinity
    spec.signals_ready = signals_ready
    return spec, keep


def native_args(target: entries.Target):
    """(path, symbol) as C strings for fh_spawn_native / fh_run_native."""
    path = ffi.new("char[]", os.fsencode(target.path))
    sym = ffi.new("char[]", target.symbol.encode()) if target.symbol else ffi.NULL
    return path, sym


def fork_child(template, child) -> int:
    """os.fork() for the template, which does it for pool members and for
    secondaries forked on demand; returns the child's pid.

    Every signal stays blocked across the fork, as fh_spawn_native does: a
    client may forward a signal the moment it has the pid, and until the
    child has reset its dispositions a template handler would run there and
    write to the template's wake-up pipe (a forwarded SIGTERM would stop the
    template).  The child gets the mask to restore when it is ready.

    In the child: the template's socket objects are forgotten, then
    child(mask) runs.  It never returns into the template: it ends in
    os._exit with child's result, by SIGINT if it was interrupted before the
    entry took over (as an interrupted program would), or with 125 and a
    traceback for a bug of ours.
    """
    mask = block_all_signals()
    try:
        pid = os.fork()
    except BaseException:
        set_signal_mask(mask)
        raise
    if pid == 0:
        code = EXIT_FORKHOST
        try:
            template.forget_in_child()
            result = child(mask)
            code = EXIT_FORKHOST if result is None else result
        except KeyboardInterrupt:
            _die_by_sigint()
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    set_signal_mask(mask)
    return pid


_KINDS = {lib.FH_ENTRY_FUNCTION: entries.FUNCTION,
          lib.FH_ENTRY_SCRIPT: entries.SCRIPT,
          lib.FH_ENTRY_MODULE: entries.MODULE}


def taken_launch(run) -> tuple[Launch, entries.Target]:
    """The request and the target of a Python launch a pool member took in
    C (struct fh_taken_launch: parsed, checked and classified there)."""
    view, launch = run.view, run.view.launch
    strings = ffi.unpack(view.strings, view.strings_len)
    parts = strings.split(b"\0")
    argc = launch.argc
    req = Launch(ffi.string(view.entry), parts[:argc],
                 parts[argc:argc + launch.envc], launch.flags, launch.umask,
                 launch.stdio_mask, launch.nextra)
    kind = _KINDS[run.kind]
    name = os.fsdecode(ffi.string(run.name))
    if kind == entries.SCRIPT:
        return req, entries.Target(kind, path=name)
    if kind == entries.MODULE:
        return req, entries.Target(kind, name=name)
    return req, entries.Target(kind, name=name,
                               symbol=ffi.string(run.symbol).decode())


def finish(req: Launch, target: entries.Target, spec, set_up: bool = False):
    """Run a Python entry as the secondary and exit with its status,
    reported on spec.report_fd (and to the client on spec.client_fd).
    set_up: fh_child_setup(spec) is done (a pool member does it in C).
    Never returns."""
    code = run(req, target, spec, set_up)
    lib.fh_exit_report(spec.report_fd, code)        # exits


def become(req: Launch, target: entries.Target, fds: list[int],
           title_area: tuple[int, int], report_fd: int, client_fd: int = 0,
           client_pid: int = 0):
    """In a fresh child of the template (a pool member, or a direct fork):
    become the secondary and exit, reporting the status on report_fd (and
    to the client itself on client_fd, when given).  Never returns."""
    spec, keep = build_spec(req, fds, title_area, report_fd, client_fd, client_pid)
    if target.kind == entries.NATIVE:
        path, sym = native_args(target)
        # A C program starts with every disposition SIG_DFL; a pool member
        # prepared Python's (SIGINT caught, SIGPIPE and SIGXFSZ ignored),
        # which would swallow a Ctrl-C for good once C runs.  Block all
        # first (a SIGINT Python already caught raises KeyboardInterrupt
        # right here), then fh_child_setup resets every disposition and
        # unblocks: what arrived meanwhile acts with its default action.
        block_all_signals()
        spec.signals_ready = False
        lib.fh_run_native(spec, path, sym)          # C from here on; exits
    finish(req, target, spec)
    del keep


def run(req: Launch, target: entries.Target, spec, set_up: bool = False) -> int:
    """Become the secondary and run the entry; returns the exit status."""
    if not set_up:
        signal.set_wakeup_fd(-1)           # the template's pipe is not ours
        err = ffi.new("const char **")
        rc = lib.fh_child_setup(spec, err)
        if rc < 0:
            step = ffi.string(err[0]).decode() if err[0] else "setup"
            _write_stderr(f"forkhost: cannot set up the secondary: {step}: "
                          f"{os.strerror(-rc)}\n")
            return EXIT_FORKHOST
    if not signals_ready:
        _python_signal_defaults()
    env = _set_environ(req, spec)
    # What `python` reads from the environment at startup and a running
    # interpreter still lets change (docs/architecture.md).
    sys.dont_write_bytecode = bool(env.get(b"PYTHONDONTWRITEBYTECODE"))
    try:
        _reopen_stdio(req.stdio_mask, env)
    except LookupError as exc:         # python -c says the same and exits 1
        _write_stderr(f"Fatal Python error: init_stdio_encoding: failed to get "
                      f"the Python codec name of the stdio encoding\n"
                      f"LookupError: {exc}\n")
        return 1
    atexit._clear()                    # the primary's handlers are not ours
    argv = [os.fsdecode(a) for a in req.argv]
    sys.argv = list(argv)
    try:
        code = _run_entry(target, argv, env)
    except entries.EntryError as exc:
        if exc.__cause__ is not None:
            _print_exception(exc.__cause__)
        _flush_stdio()
        _write_stderr(f"forkhost: {exc}\n")
        return exc.exit_code
    except SystemExit as exc:
        code = _exit_code_of(exc)
    except KeyboardInterrupt as exc:
        _print_exception(exc)
        _finalize()
        _die_by_sigint()
        return 130
    except BaseException as exc:
        _print_exception(exc)
        code = 1
    try:
        _finalize()
    except SystemExit as exc:
        code = _exit_code_of(exc)
    except BaseException as exc:
        _print_exception(exc)
    return code
