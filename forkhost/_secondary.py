"""The secondary: a child of the template that took a launch of a Python
entry (csrc/lib/template.c forks it and sets it up in C), now running it.

The child has the template's whole address space (the arena, the native
library, every preloaded module) and the client's fds, cwd, umask and
argv; every other fd is closed (fh_child_setup).  Here it drops the
template's Python-level state (signal handlers, stdio objects, os.environ,
__main__; the primary's atexit handlers went in the template, see
keep_exit_handlers) and runs the entry as ``python`` would, on a stack of
its own (_native/pystack.c); ``finish()`` reports the status and exits.

Native entries never come here: they run in C and the child does not run
Python at all.
"""

from __future__ import annotations

import atexit
import codecs
import importlib
import io
import operator
import os
import runpy
import signal
import sys
import threading
import time

# signal's C half (CPython's, which `signal` wraps): the same calls without
# converting every signal number and handler to an enum and back, which
# the launch path paid on each call over all signals (docs/performance.md,
# "Single launches").
import _signal

from . import _classify, _load, _pyfile
from ._native import _pystack, ffi, lib
from ._errors import EXIT_FORKHOST
from ._protocol import HDR, LAUNCH, Launch, header


def _write_stderr(text: str) -> None:
    try:
        os.write(2, text.encode("utf-8", "backslashreplace"))
    except OSError:
        pass


ALL_SIGNALS = frozenset(_signal.valid_signals())


# True in a pool member that did the launch-independent part ahead
# (prepare()): CPython's after-fork work and Python's dispositions.
prepared = False


def prepare(after_fork_child) -> None:
    """In an idle pool member: what a Python launch does whatever it runs,
    done before it comes.  after_fork_child: CPython's after-fork work."""
    global prepared
    after_fork_child()
    _python_signal_defaults()
    prepared = True


# How often the template walks the launch path before it forks (warm_up).
WARM_UP_ROUNDS = 16


def warm_up(rounds: int = WARM_UP_ROUNDS) -> None:
    """In the template, before it forks: walk the side-effect-free part of
    a Python launch ``rounds`` times on a dummy request.  CPython 3.11
    quickens a function on its 8th call and specializes its instructions
    over the next ones, writing into its code object each time; in a fresh
    child of a template that never ran them, every launch would do that
    again, a copy-on-write fault per page of code objects it runs (measured:
    some 30 of the ~480 pages a trivial launch writes).  Warmed here, the
    children inherit the code as it ends up."""
    env = [k + b"=" + v for k, v in os.environb.items()]
    body = Launch(b"forkhost_warm_up:main", [b"forkhost_warm_up:main", b"x"],
                  env).encode()
    rec = header(LAUNCH, HDR.size + len(body), 4) + body
    run = ffi.new("struct fh_taken_launch *")
    why = ffi.new("struct fh_req_result *")
    if lib.fh_request_check(rec, len(rec), 0, 4, ffi.addressof(run, "view"),
                            why) != lib.FH_MSG_LAUNCH:
        return
    name, symbol = ffi.new("char[]", b"m"), ffi.new("char[]", b"f")
    run.target.kind = lib.FH_ENTRY_FUNCTION
    run.target.name, run.target.symbol = name, symbol
    for _ in range(rounds):
        taken_launch(run)
        _make_stdio(0b111, {})


def _python_signal_defaults() -> None:
    """What a freshly started ``python`` has: SIGINT raises KeyboardInterrupt,
    SIGPIPE and SIGXFSZ are ignored (so writes fail with an exception), the
    rest is SIG_DFL.  fh_child_setup already reset the kernel's view; this
    brings the signal module's own table (the template's handlers) in line
    with it."""
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


def _environ_dict(env: list[bytes]) -> dict[bytes, bytes]:
    """os.environ's mapping as python builds it from ``environ``
    (posixmodule.c's convertenviron): in order, the first of a name given
    twice, an entry without "=" left out."""
    try:
        data = dict(map(_SPLIT_VAR, env))      # the loop in C
    except ValueError:                         # an entry without "="
        data = None
    if data is None or len(data) != len(env):  # and names given twice
        data = {}
        for var in env:
            name, sep, value = var.partition(b"=")
            if sep:
                data.setdefault(name, value)
    return data


# The TZ the template's C library and time module were set up for.
_template_tz = os.environb.get(b"TZ")
_template_libpath = os.environb.get(b"LD_LIBRARY_PATH")


def _set_environ(spec) -> dict[bytes, bytes]:
    """The client's environment, in C (`environ`, set in one step by
    fh_install_environ, with systemd's LISTEN_* as spawn.c's env_lay_out
    makes them) and in os.environ, whose mapping is replaced to match
    without a putenv/unsetenv per variable.  Returns the mapping."""
    rc = lib.fh_install_environ(spec)
    if rc < 0:
        raise OSError(-rc, os.strerror(-rc))
    # Read back from `environ`, which spawn.c laid out (LISTEN_* included),
    # as python reads it at its start.
    env, entries, i = lib.environ, [], 0
    while env[i] != ffi.NULL:
        entries.append(ffi.string(env[i]))
        i += 1
    data = _environ_dict(entries)
    # os.environ and os.environb share one bytes -> bytes mapping: theirs
    # is now this one, and the template's is left behind.
    _left_behind.append(os.environ._data)
    os.environ._data = os.environb._data = data
    if data.get(b"TZ") != _template_tz:
        # The C library read TZ once, in the primary (localtime_r does not
        # read it again), and the time module's timezone, altzone,
        # daylight and tzname come from then: the client's TZ, as python
        # starts with it.
        time.tzset()
    if data.get(b"LD_LIBRARY_PATH") != _template_libpath:
        _client_libpath(os.fsdecode(data.get(b"LD_LIBRARY_PATH", b"")))
    return data


def _client_libpath(path: str) -> None:
    """ctypes.CDLL("libname.so") as the client's loader would find it:
    glibc reads LD_LIBRARY_PATH once, at the primary's start, so a bare
    name is looked up in the client's directories first, here, and loaded
    by its path when found there (native entries: entry.c does the same)."""
    dirs = [d or "." for d in path.split(":")] if path else []
    import ctypes
    dlopen = ctypes._dlopen

    def client_dlopen(name, mode=ctypes.DEFAULT_MODE):
        if isinstance(name, str) and name and "/" not in name:
            for d in dirs:
                candidate = os.path.join(d, name)
                if os.path.isfile(candidate):
                    return dlopen(candidate, mode)
        return dlopen(name, mode)
    ctypes._dlopen = client_dlopen


def _client_signals(spec) -> None:
    """The signals the client ignored stay ignored, in the signal module's
    table too: python started by exec finds them so (and installs its
    SIGINT handler only over SIG_DFL).  fh_child_setup set the kernel's."""
    ignored = spec.sig_ignored
    for sig in range(1, 65):
        if ignored >> (sig - 1) & 1 and sig not in (signal.SIGKILL, signal.SIGSTOP):
            try:
                _signal.signal(sig, _signal.SIG_IGN)
            except (OSError, ValueError):
                pass


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
    # An encoding without an error handler means "strict" (initconfig.c's
    # config_init_stdio_encoding); neither: the primary's, which python
    # chose from the primary's locale (docs/architecture.md).
    base_errs = errs or ("strict" if enc or not sys.__stdout__ else
                         sys.__stdout__.errors)
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


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass


def _set_path(first: str | None, env) -> None:
    """sys.path the way ``python`` would build it for the client (first:
    the cwd, or where the script is; None for -m from a cwd that is gone,
    where python puts nothing), then the primary's: so the client's
    modules win unless already preloaded."""
    front = [] if first is None else [first]
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
    try:
        text = str(code)
    except BaseException as err:
        # python writes the newline alone when str() fails; from 3.12 the
        # exception str() raised stays pending and is printed next (3.13:
        # as ignored at the threading shutdown that runs before the atexit
        # handlers), its traceback starting in the failing __str__
        _write_stderr("\n")
        if sys.version_info >= (3, 12):
            import traceback
            lines = traceback.format_exception(type(err), err, err.__traceback__.tb_next)
            head = ("Exception ignored on threading shutdown:\n"
                    if sys.version_info >= (3, 13) else "")
            _write_stderr(head + "".join(lines))
        return 1
    _write_stderr(f"{text}\n")
    return 1


# Frames a traceback starts with that are forkhost's or the import
# system's, not the entry's: the interpreter leaves the import system's out
# of an `import` statement's tracebacks too.
_HIDDEN_FILES = (__file__, _load.__file__, _pyfile.__file__, importlib.__file__,
                 "<frozen importlib._bootstrap>",
                 "<frozen importlib._bootstrap_external>")


def _print_exception(exc: BaseException) -> None:
    """Print like the interpreter would (PyErr_Print), minus forkhost's own
    frames and the import system's in front of the entry's."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename in _HIDDEN_FILES:
        tb = tb.tb_next
    exc.__traceback__ = tb    # the interpreter prints the exception's own
    sys.last_type, sys.last_value, sys.last_traceback = type(exc), exc, tb
    try:
        sys.excepthook(type(exc), exc, tb)
    except BaseException:
        import traceback
        traceback.print_exception(type(exc), exc, tb)


def die_by_sigint() -> None:
    """Python exits by SIGINT on an unhandled KeyboardInterrupt, so the
    shell sees the signal; do the same."""
    _flush_stdio()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
    os.kill(os.getpid(), signal.SIGINT)


def _run_module_as_main(name: str, spec, code, alter_argv: bool):
    """What ``python -m NAME`` calls (alter_argv), or ``python DIR`` and
    ``python APP.zip``: runpy._run_module_as_main, whose frames a direct
    run's tracebacks show.  It finds the module again through
    runpy._get_module_details (_get_main_module_details); the secondary
    found it already (from what the template read ahead, when it could):
    runpy gets that, once, and its own function back before any code of
    the module runs.  Returns (callable, args) for _pystack.run."""
    attr = "_get_module_details" if alter_argv else "_get_main_module_details"
    original = getattr(runpy, attr)

    def found(*_args):
        setattr(runpy, attr, original)
        return name, spec, code

    setattr(runpy, attr, found)
    return runpy._run_module_as_main, (name if alter_argv else "__main__", alter_argv)


def _entry_call(target: _classify.Target, argv: list[str], env):
    """What the secondary evaluates on its own stack (_pystack.run): (code,
    __main__'s dict) for a script, as ``python PATH`` evaluates it;
    (callable, args) for a module, a directory or zip file (through runpy,
    as python runs them) and a function."""
    if target.kind == _classify.SCRIPT:
        script = _load.load_script(target.path)
        _set_path(script.path0, env)
        sys.argv = argv
        spec = script.main.__spec__
        if spec is not None:                  # a directory or zip file
            return _run_module_as_main(spec.name, spec, script.code, False)
        return script.code, script.main.__dict__
    try:
        cwd = os.getcwd()
    except FileNotFoundError:        # python -m from a deleted directory
        cwd = None
    _set_path(cwd, env)
    if target.kind == _classify.FUNCTION:
        return _load.import_function(target), (argv,)
    sys.argv = argv
    try:
        code, main = _load.load_module(target.name)
    except _classify.EntryError as exc:
        if not exc.as_python:
            raise
        # It does not compile: runpy finds it and says so, as python does.
        return runpy._run_module_as_main, (target.name, True)
    spec = main.__spec__
    return _run_module_as_main(spec.name, spec, code, True)


def _orig_argv(target: _classify.Target, argv: list[str]) -> list[str]:
    """sys.orig_argv of ``python SCRIPT ARGS`` or ``python -m NAME ARGS``
    (the interpreter named as sys.executable); for a function entry, what
    the client was asked to run."""
    if target.kind == _classify.SCRIPT:
        return [sys.executable, *argv]
    if target.kind == _classify.MODULE:
        return [sys.executable, "-m", target.name, *argv[1:]]
    return list(argv)


def keep_exit_handlers() -> None:
    """In the template: leave atexit with the primary's handlers that a
    program run directly would have had too, made to act on what the
    secondary creates only; the secondaries inherit it.

    A handler a module registers when imported is one the program's own
    import registers in a direct run; in a secondary the module is there
    already, so its import registers nothing.  Two of the standard
    library's keep their state where it can be told apart: logging's
    shutdown(), registered by its import (it flushes and closes the
    handlers in logging._handlerList: the primary's are taken off the
    list), and weakref.finalize's exit function, registered by the first
    finalize() (it runs the finalizers marked atexit: the primary's are
    unmarked).  atexit cannot list its handlers: these two are known by
    what registers them.  Every other handler of the primary acts on the
    primary's state (its files, its children, its temporary directories),
    and no secondary may run it (docs/architecture.md)."""
    keep = []
    logging = sys.modules.get("logging")
    if logging is not None:
        del logging._handlerList[:]
        keep.append(logging.shutdown)
    weakref = sys.modules.get("weakref")
    if weakref is not None and weakref.finalize._registered_with_atexit:
        for info in weakref.finalize._registry.values():
            info.atexit = False
        keep.append(weakref.finalize._exitfunc)
    atexit._clear()
    for fn in keep:
        atexit.register(fn)


def _finalize() -> None:
    """The parts of interpreter shutdown a program can observe: non-daemon
    threads are joined, atexit handlers run, stdio is flushed."""
    try:
        threading._shutdown()
    except BaseException as exc:
        _print_exception(exc)
    atexit._run_exitfuncs()
    _flush_stdio()


_KINDS = {lib.FH_ENTRY_FUNCTION: _classify.FUNCTION,
          lib.FH_ENTRY_SCRIPT: _classify.SCRIPT,
          lib.FH_ENTRY_MODULE: _classify.MODULE}


def taken_launch(run) -> tuple[Launch, _classify.Target]:
    """The request and the target of a Python launch taken in C (struct
    fh_taken_launch: parsed, checked and classified there)."""
    view, launch = run.view, run.view.launch
    strings = ffi.unpack(view.strings, view.strings_len)
    parts = strings.split(b"\0")
    argc = launch.argc
    req = Launch(ffi.string(view.entry), parts[:argc],
                 parts[argc:argc + launch.envc], launch.flags, launch.umask,
                 launch.stdio_mask, launch.nextra)
    t = run.target
    kind = _KINDS[t.kind]
    name = os.fsdecode(ffi.string(t.name))
    if kind == _classify.SCRIPT:
        return req, _classify.Target(kind, path=name)
    if kind == _classify.MODULE:
        return req, _classify.Target(kind, name=name)
    return req, _classify.Target(kind, name=name, symbol=ffi.string(t.symbol).decode())


def finish(req: Launch, target: _classify.Target, spec):
    """Run a Python entry as the secondary and exit with its status,
    reported on spec.report_fd (and to the client on spec.client_fd).
    fh_child_setup(spec) is done (in C).  Never returns."""
    entry = start(req, target, spec)
    if isinstance(entry, int):
        lib.fh_exit_report(spec.report_fd, entry)       # exits
    call, arg = entry
    function = target.kind == _classify.FUNCTION

    def done(result, exc):
        try:
            code = end(result, exc, function)
        except KeyboardInterrupt:        # while it ended: as python, by SIGINT
            die_by_sigint()
            code = 130
        lib.fh_exit_report(spec.report_fd, code)

    # The entry runs on a stack of its own, then done() exits.
    _pystack.run(call, arg, done, EXIT_FORKHOST)


def start(req: Launch, target: _classify.Target, spec):
    """Become the secondary and load the entry: returns what to evaluate
    (_entry_call), or the exit status when it cannot run."""
    if not prepared:
        _python_signal_defaults()
    if spec.sig_ignored:
        _client_signals(spec)
    env = _set_environ(spec)
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
    argv = [os.fsdecode(a) for a in req.argv]
    sys.argv = list(argv)
    sys.orig_argv = _orig_argv(target, argv)
    try:
        return _entry_call(target, argv, env)
    except _classify.EntryError as exc:
        if exc.as_python:             # python's own words and status
            return end(None, exc.__cause__, False)
        if exc.__cause__ is not None:
            _print_exception(exc.__cause__)
        _flush_stdio()
        _write_stderr(f"forkhost: {exc}\n")
        return exc.exit_code
    except BaseException as exc:      # the import of a function's module
        return end(None, exc, False)


def end(result, exc, function: bool) -> int:
    """The entry returned ``result`` or raised ``exc``: what the end of a
    ``python`` run does (the exception printed, threads joined, atexit
    handlers run, stdio flushed); returns the exit status."""
    code = 0
    if exc is None:
        if function and result is not None:
            if isinstance(result, int):
                code = result & 0xFF
            else:
                code = _exit_code_of(SystemExit(result))
    elif isinstance(exc, SystemExit):
        code = _exit_code_of(exc)
    elif isinstance(exc, KeyboardInterrupt):
        _print_exception(exc)
        _finalize()
        die_by_sigint()
        return 130
    else:
        _print_exception(exc)
        code = 1
    try:
        _finalize()
    except SystemExit as exc2:
        code = _exit_code_of(exc2)
    except BaseException as exc2:
        _print_exception(exc2)
    return code
