"""The ``forkhost`` command (also ``python -m forkhost``).

Subcommands: primary, run, ps, stats, stop, reload, restart, doctor, demo, config,
attach, verify, maps, ptr.  Options have
the same names everywhere (--prefix, --runtime-dir, --arena-size,
--preload).  Exit codes: 0 success; 1 the command failed (message on
stderr); 2 usage error.  ``forkhost run`` follows the launcher contract
instead: the secondary's own status, or 125/126/127 (see docs/cli.md).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import select
import signal
import sys

from . import __version__, _wire, _client as client, _runtime as runtime
from ._errors import EXIT_FORKHOST, ForkhostError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prefix", help="group of processes (default: $FORKHOST_PREFIX "
                   "or 'forkhost')")
    p.add_argument("--runtime-dir", help="runtime directory (default: "
                   "$FORKHOST_RUNTIME_DIR, $XDG_RUNTIME_DIR/forkhost, ...)")


@functools.cache   # main and _plan both parse with it
def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="forkhost", description="Pre-fork secondary-process host.")
    ap.add_argument("--version", action="version", version=f"forkhost {__version__}")
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND", required=True)

    p = sub.add_parser("primary", help="start a primary (and its template)")
    _common(p)
    p.add_argument("--arena-size", default=str(_wire.DEFAULT_ARENA_SIZE),
                   help=f"shared arena's starting size (default "
                        f"{_wire.DEFAULT_ARENA_SIZE >> 20}M)")
    p.add_argument("--arena-max", default=None,
                   help=f"size the arena can grow to, reserved as address space at "
                        f"start (default {_wire.DEFAULT_ARENA_MAX >> 30}G, or "
                        f"--arena-size if larger)")
    p.add_argument("--preload", action="append", default=[], metavar="MODULE",
                   help="import MODULE before forking the template (repeatable)")
    p.add_argument("--max-secondaries", type=int, default=_wire.DEFAULT_MAX_SECONDARIES,
                   help="concurrent secondaries before launches are refused")
    p.add_argument("--grace", type=float, default=_wire.DEFAULT_GRACE_MS / 1000,
                   help="seconds between SIGTERM and SIGKILL when ending a secondary")
    p.add_argument("--pool", type=int, default=_wire.DEFAULT_POOL,
                   help="pre-forked secondaries kept ready (0: fork on demand)")
    p.add_argument("--huge-pages", choices=("auto", "never", "always"),
                   default=_wire.DEFAULT_HUGE_PAGES)
    p.add_argument("--on-primary-death", choices=("survive", "stop"), default="survive",
                   help="when this primary dies (kill -9): survive (default: the "
                   "template serves on with its secondaries, and the next primary "
                   "on the prefix adopts them and the arena) or stop (the template "
                   "ends every secondary)")
    p.add_argument("--detach", action="store_true",
                   help="run in the background; print the ready line and return")
    p.add_argument("--log-level", choices=_wire.LOG_LEVELS, default=_wire.LOG_DEFAULT,
                   help="log lines up to this level on stderr (the log file "
                   "with --detach; default %(default)s)")
    p.add_argument("--worker", action="append", default=[], metavar="'NAME=ENTRY [ARGS]'",
                   help="start and supervise a worker; one argument, split like a "
                   "shell line (repeatable; docs/supervision.md)")
    p.add_argument("--config", metavar="FILE",
                   help="a forkhost.toml: these options, [supervisor] and "
                   "[workers.NAME] tables")

    p = sub.add_parser("run", help="run an entry in a secondary (like forkhost-run)",
                       add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)

    p = sub.add_parser("ps", help="list a prefix's primary, template and secondaries")
    _common(p)
    p.add_argument("--all", action="store_true", help="every prefix in the runtime dir")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("stats", help="a prefix's counters: launches, refusals, exits, "
                       "launch latency, pool, arena")
    _common(p)
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--prometheus", action="store_true",
                     help="Prometheus text format (node_exporter's textfile "
                     "collector reads it)")

    p = sub.add_parser("stop", help="stop a primary (or, with --worker, one worker)")
    _common(p)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--worker", metavar="NAME",
                   help="stop this worker (and those that require it), not the primary")

    p = sub.add_parser("reload", help="start a new generation: preloads imported "
                       "afresh, a new template and pool; running secondaries go on")
    _common(p)
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait for the new generation (default %(default)g)")

    p = sub.add_parser("restart", help="restart a supervised worker (and those that "
                       "require it)")
    _common(p)
    p.add_argument("name", metavar="NAME")
    p.add_argument("--timeout", type=float, default=60.0)

    p = sub.add_parser("doctor", help="check this machine and a prefix; with ENTRY: "
                       "whether that entry can be loaded in a secondary, and the fix")
    _common(p)
    p.add_argument("entry", nargs="?", metavar="ENTRY",
                   help="what forkhost-run would run: prog, lib.so[:symbol], "
                   "script.py, module:function")
    p.add_argument("-m", dest="module", action="store_true",
                   help="ENTRY is a module, as forkhost-run -m")

    p = sub.add_parser("demo", help="the main job on an embedded default")
    _common(p)

    p = sub.add_parser("attach", help="attach to a prefix's arena the classic way "
                       "(not as a secondary) and list its memzones; --odds: how "
                       "often a program's layout would collide with it")
    _common(p)
    p.add_argument("--runs", type=int, default=None, metavar="N",
                   help="--odds: runs of PROGRAM (default 100)")
    p.add_argument("--range", action="append", default=[], metavar="RANGE",
                   help="--odds: START-END or START+SIZE instead of the arena "
                   "(repeatable)")
    p.add_argument("--json", action="store_true", help="--odds: the report as JSON")
    p.add_argument("--odds", nargs=argparse.REMAINDER, metavar="PROGRAM",
                   help="start PROGRAM [ARGS...] N times under ASLR, stopped before "
                   "main, and count collisions (the other options go before it)")

    p = sub.add_parser("verify", help="prove that secondaries hold the template's "
                       "mappings at the same addresses")
    _common(p)
    p.add_argument("pids", nargs="*", metavar="PID")
    p.add_argument("--all", action="store_true", help="every running secondary")
    p.add_argument("--strict", action="store_true",
                   help="inherited private memory must be there too")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("maps", help="two processes' layouts side by side, by module")
    p.add_argument("a", metavar="PID_A")
    p.add_argument("b", metavar="PID_B")
    p.add_argument("-v", "--verbose", action="store_true", help="every mapping")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("ptr", help="what an address is in each process, and whether "
                       "it is valid and callable in the others")
    _common(p)
    p.add_argument("address", metavar="ADDR")
    p.add_argument("--pid", action="append", metavar="PID",
                   help="a process to look in (repeatable; default: the prefix's "
                   "primary, template and secondaries)")

    p = sub.add_parser("config", help="compiler flags for C programs")
    p.add_argument("--cflags", action="store_true")
    p.add_argument("--libs", action="store_true")
    p.add_argument("--pc", action="store_true", help="print a pkg-config .pc file")
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["run"]:
        # forkhost-run's syntax: its options come before ENTRY, which
        # argparse's REMAINDER would refuse as unrecognized arguments.
        args = argparse.Namespace(cmd="run", rest=argv[1:])
    else:
        args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.cmd](args)
    except ForkhostError as err:
        print(f"forkhost {args.cmd}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader left (| head): what we still print goes nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


# -- primary -------------------------------------------------------------

def _make_primary(a):
    from .primary import Primary
    return Primary(a.prefix, runtime_dir=a.runtime_dir, arena_size=a.arena_size,
                   arena_max=a.arena_max,
                   preload=a.preload, max_secondaries=a.max_secondaries,
                   grace=a.grace, pool=a.pool, huge_pages=a.huge_pages,
                   ipc=True,   # secondaries get IPC and exit notices
                   log_level=a.log_level,
                   sockets=getattr(a, "sockets", None),   # socket activation
                   on_primary_death=a.on_primary_death)


def _reload_in_background(p) -> None:
    """SIGHUP's reload (a detached primary, or one under systemd): on a
    thread, so that the loop still hears signals and the template; the
    outcome goes to the log (the reload line, and a failure's traceback)."""
    import threading

    def run() -> None:
        try:
            p.reload()
        except ForkhostError as err:
            print(f"forkhost primary: reload failed; the old generation serves "
                  f"on:\n{err}", file=sys.stderr, flush=True)
    threading.Thread(target=run, name="forkhost-reload", daemon=True).start()


def _serve(p, ready, sd=None, hup_reloads=False) -> int:
    """Call ready() (announce the primary) once SIGINT/SIGTERM/SIGHUP are
    caught, so that one sent on seeing the ready line stops it cleanly;
    then wait for one of them (stop cleanly, 0) or for the template to die
    on its own (1).  hup_reloads: SIGHUP reloads instead (a detached
    primary, or one under systemd, as nginx and gunicorn do; a primary on a
    terminal stops on the hangup).  sd: systemd's notifier
    (forkhost/_systemd.py): told READY=1 after ready(), RELOADING=1 and
    READY=1 around a reload, STOPPING=1 when the stop begins, and pinged
    from this loop when systemd's watchdog is on."""
    from ._systemd import Notifier
    sd = sd or Notifier({})
    p.notifier = sd
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    # SIGUSR1: reopen the log (--detach), never a stop.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(sig, lambda *_: None)   # wake the loop, nothing else
    ready()
    sd.ready(f"ready: prefix {p.prefix!r}, template {p.template_pid}, "
             f"socket {p.socket_path}")
    code = 0
    sup = p.supervisor
    gave_up = [sup.give_up_fd] if sup is not None else []
    gen_fd = p.generation_fd()
    while True:
        current = p.template_pidfd      # a reload (another thread) changes it
        try:
            r = runtime.ready([wake_r, current, gen_fd, *p.retiring_pidfds(), *gave_up],
                              sd.timeout())
        except InterruptedError:
            continue
        sd.tick()
        if gen_fd in r:                 # a new generation: watch its template
            p.generation_fd()
        if set(r) - {wake_r, current, gen_fd, *gave_up} or (
                current in r and current != p.template_pidfd):
            p.reap_generations()        # a retiring template ended
            continue
        if gave_up and gave_up[0] in r:     # exit_on_give_up (logged already)
            from ._supervise import EXIT_GAVE_UP
            code = EXIT_GAVE_UP
            p.stop_cause = "the supervisor gave up"
            break
        if current in r and not p.wait_reload(0):
            # A reload under way: its template retired, and may have ended
            # before its answer was read.  Its outcome decides.
            p.wait_reload(RELOAD_SETTLE)
            continue
        if current in r:
            from .primary import STATUS_UNKNOWN
            status = p.wait_template(0)
            how = ("status unknown: an adopted template is not the primary's "
                   "child" if status == STATUS_UNKNOWN and p.adopted is not None
                   and p.template_pid == p.adopted["template_pid"] else
                   "status unknown: a reload's generation is not the primary's "
                   "child" if status == STATUS_UNKNOWN else
                   f"killed by signal {-status}" if status < 0 else f"status {status}")
            print(f"forkhost primary: the template exited unexpectedly ({how}); "
                  f"stopping", file=sys.stderr, flush=True)
            p.stop_cause = f"the template exited ({how})"
            code = 1
            break
        if wake_r in r:
            sigs = set(os.read(wake_r, 64))
            if signal.SIGUSR1 in sigs:
                try:
                    p.reopen_log()
                except ForkhostError as err:     # said in the log still open
                    print(f"forkhost primary: {err}", file=sys.stderr, flush=True)
            sigs.discard(signal.SIGUSR1)
            if hup_reloads and signal.SIGHUP in sigs:
                sigs.discard(signal.SIGHUP)
                _reload_in_background(p)
            if sigs:
                p.stop_cause = signal.Signals(min(sigs)).name
                break
    # The stop is under way: the same signals again are ignored, or one
    # arriving after Python has put the default actions back, as it does
    # at exit, would kill the primary before it ends cleanly.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)
    sd.stopping(f"stopping: prefix {p.prefix!r}"
                + (", its template exited" if code == 1 else ""))
    p.stop()
    print(f"forkhost primary: stopped (prefix {p.prefix!r})", flush=True)
    return code


def _plan(a):
    """--config and --worker, checked whole before anything starts (None
    without them); the file's options fill in a's defaults."""
    from ._supervise import plan_from_args
    return plan_from_args(a, _parser().parse_args(["primary"]))


# How long the primary's loop waits for a reload's answer when the
# template it replaces has ended (seconds): the answer is already sent then.
RELOAD_SETTLE = 10.0


def _fresh_layout(a) -> None:
    """Before adopting an orphaned template (docs/reliability.md): run
    again with a fresh layout if one of this process's libraries sits where
    the orphan's arena must go (_adopt.fresh_layout).  Before anything of
    systemd's is taken: its fds and variables pass through the exec."""
    from . import _adopt
    _adopt.fresh_layout(_adopt.orphan(runtime.paths(a.prefix, a.runtime_dir)))


def cmd_primary(a) -> int:
    from . import _systemd
    a.plan = None
    if a.config or a.worker:        # the supervisor's module only for them
        from ._supervise import ConfigError
        try:
            a.plan = _plan(a)
        except ConfigError as err:
            print(f"forkhost primary: {err}", file=sys.stderr)
            return err.exit_code
    _fresh_layout(a)        # after the plan: its file may name the prefix
    sd_env = _systemd.take_environment()    # no child of ours sees them
    try:        # after the plan: its file may name the prefix
        a.sockets = _systemd.listen_fds(sd_env, a.prefix, a.runtime_dir, a.detach)
    except _systemd.ActivationError as err:
        print(f"forkhost primary: {err}", file=sys.stderr)
        return err.exit_code
    if a.detach:
        return _detach(a)
    p = _make_primary(a)
    p.start()
    if a.plan is not None:
        try:
            p.supervise(plan=a.plan)
        except BaseException:
            p.stop()
            raise
    _say_how_started(p)
    return _serve(p, lambda: print(p.ready_line(), flush=True),
                  _systemd.Notifier(sd_env), hup_reloads="NOTIFY_SOCKET" in sd_env)


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _say_how_started(p) -> None:
    """One line on stderr when the primary took over from a dead one."""
    if p.adopted is not None:
        print(f"forkhost primary: adopted the template (pid {p.template_pid}), "
              f"its {_count(p.adopted['running'], 'running secondary', 'running secondaries')}"
              f" and the arena at "
              f"0x{p.arena_base:x} of the dead primary (pid "
              f"{p.adopted['old_primary_pid']})", file=sys.stderr)
        return
    if p.adopt_refused is not None:
        print(f"forkhost primary: did not adopt the dead primary's template: "
              f"{p.adopt_refused}", file=sys.stderr)
    if p.recovered_pid is not None:
        who = f"pid {p.recovered_pid}" if p.recovered_pid else "a dead primary"
        print(f"forkhost primary: recovered the runtime directory left by {who}",
              file=sys.stderr)


def _detach(a) -> int:
    """Fork a daemon that becomes the primary; print its ready line (or its
    error) and return.  Its output goes to <runtime>/<prefix>.log, opened
    here, after the runtime directory's checks (a refusal is ours to print)."""
    p = _make_primary(a)       # validates options before forking
    log = runtime.open_log(p.paths)
    p.log_root = str(p.paths.root)    # SIGUSR1 reopens it
    r, w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            os.setsid()
            null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            os.dup2(null, 0)
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.close(null)
            os.close(log)
            try:
                p.start()
                _say_how_started(p)
                if a.plan is not None:
                    p.supervise(plan=a.plan)
            except BaseException as err:
                # One line for the parent's stderr: the log may be unwritable.
                why = (str(err) if isinstance(err, ForkhostError) else
                       f"{type(err).__name__}: {err} (traceback in {p.paths.log})")
                os.write(w, f"error {why}".encode())
                raise

            def ready():
                print(p.ready_line(), flush=True)
                os.write(w, f"ok {p.ready_line()}".encode())
                os.close(w)
            code = _serve(p, ready, hup_reloads=True)
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(log)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    status, _, text = data.decode(errors="replace").partition(" ")
    if status == "ok":
        print(text, flush=True)
        return 0
    print(f"forkhost primary: {text or 'the detached primary failed to start; see ' + str(p.paths.log)}",
          file=sys.stderr)
    return 1


# -- run -----------------------------------------------------------------

RUN_USAGE = """\
usage: forkhost run [--prefix P] [--runtime-dir D] [--fd N]... [--connect-timeout S]
                    (ENTRY | -m MODULE) [ARGS...]
Run ENTRY in a secondary and exit like it (see forkhost-run --help)."""


def _run_usage_error(msg: str) -> int:
    print(f"forkhost run: {msg}\nTry 'forkhost run --help'.", file=sys.stderr)
    return EXIT_FORKHOST


def _seconds(text: str) -> float | None:
    """A timeout as forkhost-run reads it: a decimal number of seconds, at
    least 0, or inf (None: wait forever).  ValueError otherwise."""
    value = float(text)     # no hex; "nan" and "-1" are numbers to float()
    if text != text.strip() or "_" in text or value != value or value < 0:
        raise ValueError(text)
    return None if value == float("inf") else value


def cmd_run(a) -> int:
    rest = list(a.rest)
    opts = {"prefix": None, "runtime_dir": None}
    fds: list[int] = []
    module = False
    while rest:
        arg = rest[0]
        if arg in ("-h", "--help"):
            print(RUN_USAGE)
            return 0
        if arg == "--":
            rest.pop(0)
            break
        if arg.startswith("-m"):          # -m MODULE, or -mMODULE as python takes
            module = True
            rest.pop(0)
            if arg != "-m":
                rest.insert(0, arg[2:])
            break
        if not arg.startswith("-") or arg == "-":
            break
        name, eq, value = arg.partition("=")
        rest.pop(0)
        if name not in ("--prefix", "--runtime-dir", "--fd", "--connect-timeout"):
            return _run_usage_error(f"unknown option {name!r}")
        if not eq:
            if not rest:
                return _run_usage_error(f"option {name} needs a value")
            value = rest.pop(0)
        try:
            if name == "--fd":
                if not (value.isascii() and value.isdigit()):   # as forkhost-run:
                    raise ValueError(value)                    # no sign, space, _
                fd = int(value)
                if fd < 3:
                    return _run_usage_error("--fd takes an fd of 3 or more "
                                            "(0, 1, 2 are passed anyway)")
                os.fstat(fd)
                if len(fds) >= _wire.MAX_EXTRA_FDS:     # forkhost-run's words
                    print(f"forkhost run: too many --fd options: at most "
                          f"{_wire.MAX_EXTRA_FDS} fds can be passed", file=sys.stderr)
                    return EXIT_FORKHOST
                fds.append(fd)
            elif name == "--connect-timeout":
                opts["connect_timeout"] = _seconds(value)
            else:
                opts[name[2:].replace("-", "_")] = value
        except ValueError:
            if name == "--connect-timeout":
                return _run_usage_error(f"invalid --connect-timeout value '{value}': "
                                        f"not a number of seconds")
            return _run_usage_error(f"invalid value {value!r} for {name}")
        except OSError:
            return _run_usage_error(f"--fd {value}: not an open file descriptor")
    if not rest:
        return _run_usage_error("missing MODULE after -m" if module else "missing ENTRY")
    _client_run(rest[0], rest[1:], module, fds, opts)   # never returns


def _client_run(entry: str, args: list[str], module: bool, fds: list[int],
                opts: dict) -> None:
    """The launch itself is forkhost-run's (libforkhost's fh_client_run):
    the same signals, fds, terminal and exit; this process ends there."""
    from ._native import ffi, lib
    try:        # the prefix is checked here, with forkhost run's words
        runtime.resolve_prefix(opts["prefix"])
    except ForkhostError as err:
        print(f"forkhost run: {err}", file=sys.stderr)
        sys.exit(EXIT_FORKHOST)
    # What Python set for itself is not the caller's: a direct run from a
    # shell has SIGPIPE and SIGXFSZ at their defaults (subprocess's
    # restore_signals does the same).
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:      # None: Python started with that fd closed
            stream.flush()
    keep = []

    def c_str(text: str):
        keep.append(ffi.new("char[]", os.fsencode(text)))
        return keep[-1]
    c = ffi.new("struct fh_client *")
    lib.fh_client_init(c, c_str("forkhost run"))
    if opts["prefix"] is not None:
        c.prefix, c.prefix_from = c_str(opts["prefix"]), c_str("--prefix")
    if opts["runtime_dir"] is not None:
        c.runtime_dir = c_str(opts["runtime_dir"])
    c.entry = c_str(entry)
    c.flags = lib.FH_LAUNCH_MODULE if module else 0
    cargs = [c_str(a) for a in args]
    arr = ffi.new("char *[]", cargs + [ffi.NULL])
    c.args, c.nargs = arr, len(cargs)
    for k, fd in enumerate(fds):
        c.extra_fds[k] = fd
    c.nextra = len(fds)
    if "connect_timeout" in opts:
        t = opts["connect_timeout"]
        lib.fh_client_set_timeout(c, b"inf" if t is None else repr(t).encode())
    lib.fh_client_run(c)


# -- ps / stop -----------------------------------------------------------

def _prefixes(a) -> list[runtime.PrefixPaths]:
    if not getattr(a, "all", False):
        return [runtime.paths(a.prefix, a.runtime_dir)]
    root = runtime.runtime_dir(a.runtime_dir)
    try:
        names = sorted(d.name for d in root.iterdir() if (d / "lock").exists())
    except FileNotFoundError:
        names = []
    return [runtime.paths(n, root) for n in names]


def _arena_mappers(cfg: dict, known: set[int]) -> list[int]:
    """The processes not in known that map the prefix's arena: attached
    ones (forkhost attach, shm.attach()) and the children secondaries
    forked.  A process with a mapping of exactly the arena's range (a
    lookup in /proc/PID/map_files, allowed for our own processes) is one
    when its /proc/PID/maps line names the arena's memfd inode (following
    the map_files link itself would take CAP_SYS_ADMIN)."""
    arena = cfg.get("arena") or {}
    try:
        start = arena["base"]
        end = start + arena.get("max", arena["size"])     # the whole range mapped
        ino = os.stat(f"/proc/{cfg['pid']}/fd/{arena['fd']}").st_ino
    except (KeyError, TypeError, OSError):
        return []
    rng = f"{start:x}-{end:x}"
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in known:
            continue
        try:
            os.lstat(f"/proc/{entry.name}/map_files/{rng}")
            with open(f"/proc/{entry.name}/maps") as f:
                line = next((ln for ln in f if ln.startswith(rng + " ")), "")
        except OSError:
            continue
        fields = line.split()
        if len(fields) >= 5 and fields[4] == str(ino):
            found.append(int(entry.name))
    return found


def cmd_ps(a) -> int:
    rows = []
    supervised = []     # (prefix, config record) of primaries with workers or reports
    for p in _prefixes(a):
        cfg = runtime.read_config(p)
        alive = cfg is not None and runtime.pid_alive(cfg.get("pid", 0))
        # A dead primary's template serving on (--on-primary-death survive)
        # is shown, orphaned, with what it runs.
        orphan_inf = _orphan_info(p, cfg) if cfg is not None and not alive else None
        orphaned = orphan_inf is not None
        if not alive and not orphaned:
            if not a.all:
                raise ForkhostError(f"no forkhost primary for prefix {p.prefix!r} "
                                    f"(looked for {p.config})")
            continue
        if orphaned:
            # Its workers were the dead primary's own launches: they ended
            # with their client (docs/supervision.md); not shown as running.
            cfg = {k: v for k, v in cfg.items() if k != "supervisor"}
        if cfg.get("supervisor") or cfg.get("reclaims"):
            supervised.append((p.prefix, cfg))
        for role, pid in (("primary", cfg["pid"]), ("template", cfg["template_pid"])):
            if role == "primary" and orphaned:
                continue
            cmd, up = runtime.proc_line(pid)
            rows.append({"prefix": p.prefix, "role": role, "pid": pid,
                         "client_pid": None, "uptime": round(up, 1), "command": cmd,
                         "state": "orphan" if orphaned else None})
        # Older generations still serving their last secondaries (a reload),
        # which answer no INFO: their children are those secondaries.
        for pid, kids in runtime.retiring_secondaries(cfg).items():
            cmd, up = runtime.proc_line(pid)
            rows.append({"prefix": p.prefix, "role": "template", "pid": pid,
                         "client_pid": None, "uptime": round(up, 1), "command": cmd,
                         "state": "retiring"})
            for child in kids:
                cmd, up = runtime.proc_line(child)
                rows.append({"prefix": p.prefix, "role": "secondary", "pid": child,
                             "client_pid": None, "uptime": round(up, 1),
                             "command": cmd, "state": "retiring"})
        try:        # an orphan's INFO was just asked for
            inf = orphan_inf or client.info(p.prefix, p.root)
        except ForkhostError:
            continue
        for m in inf.get("members", []):
            cmd, up = runtime.proc_line(m["pid"])
            rows.append({"prefix": p.prefix, "role": "pool", "pid": m["pid"],
                         "client_pid": None, "uptime": round(up, 1),
                         "command": cmd, "state": m["state"]})
        for s in inf["secondaries"]:
            cmd, _ = runtime.proc_line(s["pid"])
            rows.append({"prefix": p.prefix, "role": "secondary", "pid": s["pid"],
                         "client_pid": s["client_pid"], "uptime": s["uptime"],
                         "command": cmd})
        mine = [r for r in rows if r["prefix"] == p.prefix]
        members = _ipc_members(cfg)
        for r in mine:
            r["ipc"] = r["pid"] in members
        known = {r["pid"] for r in mine}
        for pid in members:
            if pid not in known:
                cmd, up = runtime.proc_line(pid)
                rows.append({"prefix": p.prefix, "role": "member", "pid": pid,
                             "client_pid": None, "uptime": round(up, 1),
                             "command": cmd, "ipc": True})
                known.add(pid)
        for pid in _arena_mappers(cfg, known):
            cmd, up = runtime.proc_line(pid)
            rows.append({"prefix": p.prefix, "role": "attached", "pid": pid,
                         "client_pid": None, "uptime": round(up, 1), "command": cmd,
                         "ipc": False})
    for r in rows:
        r.setdefault("state", None)
    if supervised:          # their modules only then
        from . import _reclaim, _supervise
    if a.json:
        for prefix, cfg in supervised:
            rows.extend(_supervise.ps_rows(prefix, cfg))
            rows.extend(_reclaim.ps_rows(prefix, cfg))
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'PREFIX':<16} {'ROLE':<10} {'PID':>8} {'CLIENT':>8} {'UPTIME':>9} {'IPC':>3} "
          f"{'STATE':<7} COMMAND")
    for r in rows:
        client_pid = r["client_pid"] or "-"
        print(f"{r['prefix']:<16} {r['role']:<10} {r['pid']:>8} {client_pid:>8} "
              f"{r['uptime']:>8.1f}s {'yes' if r['ipc'] else '-':>3} "
              f"{r['state'] or '-':<7} {r['command']}")
    if supervised:
        _supervise.ps_print(supervised)
        _reclaim.ps_print(supervised)
    return 0


def _ipc_members(cfg: dict) -> set[int]:
    """The processes connected to the prefix's IPC socket (its members;
    forkhost/_unixdiag.py asks the kernel), or none when the primary runs
    no IPC or the kernel cannot say."""
    from . import _unixdiag as unixdiag
    path = cfg.get("ipc_socket")
    if not path:
        return set()
    try:
        return set(unixdiag.connected_pids(path, exclude={cfg["pid"]}))
    except unixdiag.Unavailable:
        return set()


def cmd_stop(a) -> int:
    if a.worker is not None:
        from ._supervise import control
        answer = control(a.prefix, a.runtime_dir, "stop", a.worker, a.timeout)
        print(f"forkhost stop: {answer['message']}")
        return 0
    p = runtime.paths(a.prefix, a.runtime_dir)
    cfg = runtime.read_config(p)
    pid = cfg.get("pid", 0) if cfg else 0
    if cfg and not (pid and runtime.pid_alive(pid)) and _orphan_info(p, cfg):
        return _stop_orphan(a, p, cfg)
    if not pid or not runtime.pid_alive(pid):
        raise ForkhostError(f"no forkhost primary for prefix {p.prefix!r} "
                            f"(looked for {p.config})")
    if not _terminate(pid, a.timeout):
        raise ForkhostError(f"the primary (pid {pid}) did not stop within "
                            f"{a.timeout:g}s")
    print(f"forkhost stop: prefix {p.prefix!r} stopped (pid {pid})")
    return 0


def _terminate(pid: int, timeout: float) -> bool:
    """SIGTERM to pid (through a pidfd: never a recycled pid's process),
    then wait up to timeout seconds: whether it is gone."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGTERM)
        return runtime.readable(pidfd, timeout)
    finally:
        os.close(pidfd)


def _orphan_info(p, cfg: dict) -> dict | None:
    """INFO of the template config.json names, when its primary has died
    and it serves on, orphaned (--on-primary-death survive); else None."""
    tpid = cfg.get("template_pid", 0)
    if not isinstance(tpid, int) or tpid <= 0 or not runtime.pid_alive(tpid):
        return None
    try:
        inf = client.info(p.prefix, p.root, timeout=5)
    except ForkhostError:
        return None
    return inf if inf.get("template_pid") == tpid and inf.get("orphaned") else None


def _stop_orphan(a, p, cfg: dict) -> int:
    """forkhost stop of a prefix whose primary died and whose template
    serves on: take the prefix (so that no primary adopts it meanwhile),
    stop the template as a primary would (SIGTERM: its secondaries get the
    grace, then SIGKILL), then remove the prefix's files."""
    from . import _adopt
    tpid = cfg["template_pid"]
    lock = runtime.PrefixLock(p)
    lock.acquire(leave_leftovers=True)
    try:
        # Its older generations still retiring (a reload before the death)
        # end with it: SIGTERM to each, their secondaries given the grace.
        older = _adopt.retiring(cfg, p.prefix, tpid)
        for _, fd, _ in older:
            signal.pidfd_send_signal(fd, signal.SIGTERM)
        gone = _terminate(tpid, a.timeout)
        for pid, fd, _ in older:
            gone = runtime.readable(fd, a.timeout) and gone
            os.close(fd)
        if not gone:
            lock.release(remove=False)
            raise ForkhostError(f"the orphaned template (pid {tpid}) or an older "
                                f"generation did not stop within {a.timeout:g}s")
    finally:
        lock.release()
    print(f"forkhost stop: prefix {p.prefix!r} stopped (its orphaned template, "
          f"pid {tpid}; its primary, pid {cfg.get('pid')}, had died)")
    return 0


def cmd_reload(a) -> int:
    """Ask the prefix's primary (over IPC) for a new generation; one line
    on success, the failure (a preload's traceback) on stderr and 1."""
    from .primary import RELOAD_ACTION

    def check(cfg, p):
        if (cfg.get("program") or {}).get("init") == "fh_init":
            raise ForkhostError(f"the primary of prefix {p.prefix!r} (pid {cfg['pid']}) "
                                f"is a C program (fh_init): it has no preloads to import "
                                f"afresh; restart it to run new code")
        if not cfg.get("ipc_socket"):
            raise ForkhostError(f"the primary of prefix {p.prefix!r} (pid {cfg['pid']}) "
                                f"runs no IPC, which forkhost reload asks it over; in "
                                f"its program, call Primary.reload()")
    if not a.timeout > 0:
        print("forkhost reload: --timeout takes a number of seconds above 0",
              file=sys.stderr)
        return 2
    p = runtime.paths(a.prefix, a.runtime_dir)
    answer = runtime.ask_primary(a.prefix, a.runtime_dir, RELOAD_ACTION,
                                 {"timeout": a.timeout}, a.timeout + 5, check)
    if answer.get("pending"):
        print(f"forkhost reload: prefix {p.prefix!r}: {answer.get('error', '')}",
              file=sys.stderr)
        return 1
    if not answer.get("ok"):
        print(f"forkhost reload: prefix {p.prefix!r}: the reload failed; the old "
              f"generation serves on:\n{answer.get('error', '')}", file=sys.stderr)
        return 1
    print(f"forkhost reload: prefix {p.prefix!r}: generation {answer['generation']}, "
          f"template {answer['template_pid']} (template {answer['old_template_pid']} "
          f"retires when its last secondary ends)")
    return 0


def cmd_restart(a) -> int:
    from ._supervise import control
    answer = control(a.prefix, a.runtime_dir, "restart", a.name, a.timeout)
    print(f"forkhost restart: {answer['message']}")
    return 0


# -- doctor / demo / config ----------------------------------------------

def cmd_doctor(a) -> int:
    if a.entry is not None:
        from ._doctor import doctor_entry
        return doctor_entry(a.entry, a.prefix, a.runtime_dir, module=a.module)
    if a.module:
        print("forkhost doctor: -m needs an ENTRY (a module name)", file=sys.stderr)
        return 2
    from ._doctor import doctor
    return doctor(a.prefix, a.runtime_dir)


def cmd_demo(a) -> int:
    from ._demo import demo
    return demo(a.prefix, a.runtime_dir)


def cmd_config(a) -> int:
    from ._native import INCLUDE, LIBRARY
    libdir = LIBRARY.parent
    cflags = f"-I{INCLUDE}"
    libs = f"-L{libdir} -lforkhost -Wl,-rpath,{libdir}"
    if a.pc:
        print(f"prefix={libdir}\nincludedir={INCLUDE}\nlibdir={libdir}\n\n"
              f"Name: forkhost\nDescription: forkhost native library\n"
              f"Version: {__version__}\nCflags: -I${{includedir}}\n"
              f"Libs: -L${{libdir}} -lforkhost -Wl,-rpath,${{libdir}}")
        return 0
    out = ([cflags] if a.cflags or not a.libs else []) + ([libs] if a.libs or not a.cflags else [])
    print(" ".join(out))
    return 0


def cmd_attach(a) -> int:
    """Map the arena like a separate program would (MAP_FIXED_NOREPLACE at
    the primary's address) and list the memzones; exit 1 naming the mapping
    in the way when ASLR put one there.  With --odds: forkhost/odds.py."""
    if a.odds is not None:
        from .odds import DEFAULT_RUNS, main_odds
        if not a.odds:
            print("forkhost attach --odds: name the PROGRAM to start", file=sys.stderr)
            return 2
        return main_odds(a.odds, a.runs if a.runs is not None else DEFAULT_RUNS,
                         a.range, a.prefix, a.runtime_dir, a.json)
    if a.runs is not None or a.range or a.json:
        print("forkhost attach: --runs, --range and --json go with --odds",
              file=sys.stderr)
        return 2
    from .primary import human_size
    from .shm import arena, attach, free_bytes, memzones
    att = attach(a.prefix, a.runtime_dir)
    print(f"forkhost attach: prefix {att.prefix!r}: arena {human_size(arena()[1])} "
          f"(grows to {human_size(att.size)}) at 0x{att.base:x} mapped here "
          f"(primary pid {att.primary_pid})")
    if att.library_same_address:
        print(f"libforkhost.so: at 0x{att.library_base_here:x} here too, the same "
              f"address as in the primary")
    else:
        print(f"libforkhost.so: at 0x{att.library_base_here:x} here, "
              f"0x{att.library_base_primary:x} in the primary: function pointers "
              f"stored by the prefix's processes are not valid in this one")
    zones = memzones()
    print(f"{len(zones)} memzone{'s' if len(zones) != 1 else ''}, "
          f"{free_bytes() / (1 << 20):.1f} MiB free")
    if zones:
        w = max(len(z.name) for z in zones)
        print(f"  {'NAME':<{w}}  {'ADDRESS':>18}  {'SIZE':>12}  ALIGN")
        for z in zones:
            print(f"  {z.name:<{w}}  0x{z.addr:016x}  {z.size:>12}  {z.align}")
    return 0


def _layout_command(name: str):
    def cmd(a) -> int:
        from . import _layoutcmd as layoutcmd
        return layoutcmd.run(getattr(layoutcmd, f"cmd_{name}"), a)
    return cmd


def cmd_stats(a) -> int:
    from ._stats import stats
    return stats(a)


COMMANDS = {"primary": cmd_primary, "run": cmd_run, "ps": cmd_ps, "stop": cmd_stop,
            "stats": cmd_stats,
            "restart": cmd_restart, "reload": cmd_reload,
            "doctor": cmd_doctor, "demo": cmd_demo, "config": cmd_config,
            "attach": cmd_attach, "verify": _layout_command("verify"),
            "maps": _layout_command("maps"), "ptr": _layout_command("ptr")}
