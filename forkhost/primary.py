"""The primary: own a prefix, map the arena, load the native library and
preloaded modules, then fork the template while still single-threaded.

Usable from the command line (``forkhost primary``) or inside a user's own
program::

    with forkhost.Primary(prefix="app", preload=["numpy"]) as p:
        print(p.ready_line())
        ...   # threads may start now; secondaries are forked by the template

Order matters: everything a secondary should share must exist before the
template is forked, and no thread may exist at that moment (fork() copies
only the calling thread; locks other threads hold stay held forever in the
copy).  The check uses the kernel's thread count, not only Python's.
"""

from __future__ import annotations

import atexit
import gc
import importlib
import os
import signal
import socket
import sys
import threading
import time
import traceback

from . import ipc as _ipc
from . import _adopt, _log, _wire, _runtime as runtime
# Imported here, before the template is forked, so that every secondary
# finds forkhost.shm already imported (`import forkhost` no longer imports
# it: forkhost/__init__.py).
from . import shm  # noqa: F401
from ._native import LIBRARY, ffi, lib, library_base
from ._errors import (ArenaError, ForkhostError, NotSingleThreadedError,
                     PreloadError, ProtocolError, ReloadError,
                      ReloadPendingError)

# A primary's defaults, C's and Python's alike (forkhost/init.h).  Pool
# members the template keeps ready (csrc/lib/template.c) each take a fork
# and CPython's after-fork work off a launch's critical path.
DEFAULT_ARENA_SIZE = _wire.DEFAULT_ARENA_SIZE
DEFAULT_ARENA_MAX = _wire.DEFAULT_ARENA_MAX     # when arena_size is smaller
DEFAULT_MAX_SECONDARIES = _wire.DEFAULT_MAX_SECONDARIES
DEFAULT_GRACE = _wire.DEFAULT_GRACE_MS / 1000
DEFAULT_POOL = _wire.DEFAULT_POOL
# How long start() waits for the template to say it is ready.
TEMPLATE_START_TIMEOUT = 30.0
# How long reload() waits for the new generation (its preloads imported
# afresh, its pool forked) by default.
RELOAD_TIMEOUT = 60.0
# The IPC action `forkhost reload` asks a primary with (docs/cli.md).
RELOAD_ACTION = "forkhost-reload"
# wait_template()'s answer for a template that ended but is not this
# process's child (a reload's generation: its parent was the old template),
# whose wait status is not ours to read.
STATUS_UNKNOWN = 1 << 16

# --on-primary-death's values, as template.h numbers them.
ON_PRIMARY_DEATH = {"survive": lib.FH_ON_PRIMARY_DEATH_SURVIVE,
                    "stop": lib.FH_ON_PRIMARY_DEATH_STOP}

# The Primary this process started and has not stopped: where launches
# from this program go by default (forkhost._client.default_target).  Set
# after the template fork, so the template and its secondaries never see it.
_running: "Primary | None" = None


def running() -> "Primary | None":
    """The Primary started in this process (or the process it forked
    from), not stopped yet; None elsewhere."""
    return _running


def parse_size(text: str | int) -> int:
    """'64M', '8G', '1.5G', '1048576' -> bytes (binary units): fh_parse_size,
    the parser of fh_init's --arena-size."""
    if isinstance(text, int):
        return text
    out = ffi.new("size_t *")
    if lib.fh_parse_size(os.fsencode(text), out) < 0:
        raise ForkhostError(_wire.SIZE_INVALID % text)
    return int(out[0])


def human_size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} bytes"


def huge_page_pool() -> dict[str, int]:
    """The default huge page size and the pool's counts, from /proc/meminfo:
    size (bytes), total, free, rsvd (free pages other mappings have
    reserved: not ours to take) and available (free less rsvd, what a new
    arena can have; the same count as fh_arena_create's)."""
    keys = {"Hugepagesize:": "size", "HugePages_Total:": "total",
            "HugePages_Free:": "free", "HugePages_Rsvd:": "rsvd"}
    pool = {"size": 0, "total": 0, "free": 0, "rsvd": 0}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                parts = line.split()
                if parts and parts[0] in keys:
                    scale = 1024 if parts[0] == "Hugepagesize:" else 1   # kB
                    pool[keys[parts[0]]] = int(parts[1]) * scale
    except OSError:
        pass
    pool["available"] = max(0, pool["free"] - pool["rsvd"])
    return pool


def _huge_shortfall(size: int) -> str:
    """Why an arena of size bytes got no huge pages (for auto and always)."""
    pool = huge_page_pool()
    if not pool["size"] or not pool["total"]:
        return "no huge pages reserved"
    need = -(-size // pool["size"])
    return (f"{need} free {human_size(pool['size'])} huge pages needed, "
            f"{pool['available']} of {pool['total']} free")


def thread_names() -> list[str]:
    names = []
    for tid in sorted(os.listdir("/proc/self/task"), key=int):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names.append(f"{f.read().strip()} (tid {tid})")
        except OSError:
            pass
    return names


def check_single_threaded() -> None:
    """Raise NotSingleThreadedError unless the kernel counts one thread."""
    kernel = len(os.listdir("/proc/self/task"))
    if kernel == 1 and threading.active_count() == 1:
        return
    names = ", ".join(thread_names())
    msg = (f"the primary has {kernel} threads ({names}) but the template must "
           f"be forked from a single-threaded process: fork() copies only the "
           f"calling thread, and locks held by the others would stay held in "
           f"every secondary. Start threads after the primary is ready")
    if threading.active_count() > 1:
        py = ", ".join(t.name for t in threading.enumerate()
                       if t is not threading.main_thread())
        msg += f"; Python threads: {py}"
    if "numpy" in sys.modules:
        msg += ("; numpy starts an OpenBLAS thread pool when imported: set "
                "OPENBLAS_NUM_THREADS=1 (or OMP_NUM_THREADS=1) in the "
                "primary's environment to avoid it")
    raise NotSingleThreadedError(msg)


class Primary:
    def __init__(self, prefix: str | None = None, *,
                 runtime_dir: str | os.PathLike | None = None,
                 arena_size: int | str = DEFAULT_ARENA_SIZE,
                 arena_max: int | str | None = None,
                 preload: list[str] | tuple[str, ...] = (),
                 max_secondaries: int = DEFAULT_MAX_SECONDARIES,
                 grace: float = DEFAULT_GRACE,
                 pool: int = DEFAULT_POOL,
                 huge_pages: str = _wire.DEFAULT_HUGE_PAGES,
                 ipc: bool = False, log_level: str = _log.DEFAULT,
                 sockets: dict[str, int] | None = None,
                 on_primary_death: str = "survive"):
        self.paths = runtime.paths(prefix, runtime_dir)
        self.paths.check_socket_length()    # before anything is created
        self.arena_size = parse_size(arena_size)
        # The arena starts at arena_size and grows on demand up to arena_max
        # (None: the larger of arena_size and DEFAULT_ARENA_MAX).
        self.arena_max = None if arena_max is None else parse_size(arena_max)
        if self.arena_max == 0:
            raise ForkhostError(_wire.SIZE_INVALID % arena_max)
        self.preload = list(preload)
        if max_secondaries < 1:
            raise ForkhostError("--max-secondaries must be at least 1")
        self.max_secondaries = max_secondaries
        self.grace = float(grace)
        if pool < 0:
            raise ForkhostError("--pool must be 0 or more")
        if pool > _wire.POOL_MAX:
            raise ForkhostError(_wire.POOL_INVALID % pool)
        self.pool = pool
        if huge_pages not in ("auto", "never", "always"):
            raise ForkhostError("huge_pages must be auto, never or always")
        self.huge_pages = huge_pages
        # What the template does if this primary dies (forkhost/template.h:
        # FH_ON_PRIMARY_DEATH_*): survive (serve on, orphaned, until a new
        # primary adopts it) or stop (end every secondary).
        if on_primary_death not in ON_PRIMARY_DEATH:
            raise ForkhostError(_wire.ON_PRIMARY_DEATH_INVALID % on_primary_death)
        self.on_primary_death = on_primary_death
        # Set when start() adopted a dead primary's orphaned template
        # (forkhost/_adopt.py): what ADOPTED said (template_pid,
        # old_primary_pid, running).  The template is then not our child.
        self.adopted: dict | None = None
        self.adopt_refused: str | None = None   # what an orphan said instead
        # Log lines up to this level on fd 2 (forkhost/_log.py), the
        # template's included.
        self.log_level = _log.level(log_level)
        # The runtime directory whose <prefix>.log fd 2 is (forkhost
        # primary --detach): reopen_log() opens it again.
        self.log_root: str | None = None
        self.stop_cause = "Primary.stop()"   # for the stop line
        self.no_huge_why = ""     # auto mode without huge pages: why
        self.pid = os.getpid()
        self.template_pid = 0
        self.template_pidfd = -1
        # Listening sockets passed by socket activation ("launch", "ipc":
        # forkhost/_systemd.py), used instead of binding; their files are
        # the service manager's, never removed.
        self.sockets = dict(sockets or {})
        keep = ((lib.FH_PREFIX_KEEP_SOCKET if "launch" in self.sockets else 0) |
                (lib.FH_PREFIX_KEEP_IPC if "ipc" in self.sockets else 0))
        self._lock = runtime.PrefixLock(self.paths, keep)
        self.recovered_pid: int | None = None
        self.config: dict = {}
        self._ipc_at_start = ipc     # start IPC at the end of start()
        self._ipc_exit_fd = -1       # the template's end of its exit channel
        self.supervisor = None       # supervise()'s (forkhost/_supervise.py)
        # Reload (docs/reliability.md): the current generation's number;
        # the retiring ones as [pid, pidfd, our child] until they end; one
        # reload at a time; a pipe written when the generation changes
        # (generation_fd(), for a loop that waits on template_pidfd).
        self.generation = 1
        self.template_is_child = True
        self.retiring: list[list] = []
        self._gen_lock = threading.RLock()
        # Set while no RELOAD awaits its answer (wait_reload()).
        self._reload_idle = threading.Event()
        self._reload_idle.set()
        self._gen_r = self._gen_w = -1
        self.notifier = None   # systemd's (forkhost/_systemd.py): RELOADING=1

    # -- properties -----------------------------------------------------

    @property
    def prefix(self) -> str:
        return self.paths.prefix

    @property
    def socket_path(self) -> str:
        return str(self.paths.socket)

    @property
    def arena_base(self) -> int:
        return int(ffi.cast("uintptr_t", lib.fh_arena_base()))

    @property
    def huge(self) -> bool:
        hdr = lib.fh_arena_hdr()
        return bool(hdr != ffi.NULL and hdr.flags & lib.FH_ARENA_F_HUGE)

    @property
    def page_size(self) -> int:
        hdr = lib.fh_arena_hdr()
        return hdr.page_size if hdr != ffi.NULL else 0

    # -- start ----------------------------------------------------------

    def start(self) -> "Primary":
        if lib.fh_arena_base() != ffi.NULL:
            raise ForkhostError("this process already ran a forkhost primary; "
                                "one primary per process")
        self.pid = os.getpid()   # the object may have been made before a fork
        self._log(_log.lib.FH_LOG_INFO, "start", pid=self.pid)
        # A dead primary's files stay until we know whether its template
        # lives on to be adopted.
        self._lock.acquire(leave_leftovers=True)
        keep_files = False      # an orphan we could not adopt keeps them
        try:
            orphan = _adopt.orphan(self.paths)
            if orphan is not None:
                keep_files = True
                if self._adopt(orphan):
                    return self._started()
                keep_files = False
            self.recovered_pid = self._lock.clean()
            self._create_arena()
            self._preload()
            listener, ino = self._bind()
            try:
                self.config = self._config_record()
                runtime.write_config(self.paths, self.config)
                # IPC: where it will be, inherited by every secondary.
                self._ipc_exit_fd = _ipc.prepare(self)
                self._fork_template(listener, ino)
            finally:
                listener.close()
                _ipc.after_template_fork()
            self.config["template_pid"] = self.template_pid
            runtime.write_config(self.paths, self.config)
            if self._ipc_at_start:
                self.ipc()
        except BaseException:
            _ipc.shutdown_primary(0)
            self._stop_template()
            self._lock.release(remove=not keep_files)
            raise
        return self._started()

    def _started(self) -> "Primary":
        global _running
        _running = self
        # A program that ends without stop() ends its template too, as
        # before: what outlives the primary is what a death (SIGKILL, a
        # crash) leaves, for the next primary to adopt.
        atexit.register(self._stop_at_exit)
        self._log(_log.lib.FH_LOG_INFO, "ready", pid=self.pid,
                  template_pid=self.template_pid, socket=self.socket_path,
                  arena_size=int(lib.fh_arena_size()),
                  arena_max=int(lib.fh_arena_max()))
        return self

    def _adopt(self, cfg: dict) -> bool:
        """Adopt the orphaned template cfg (the dead primary's record)
        names: its arena mapped at its base, its pool and secondaries ours
        to report and stop.  False when it refused (it is stopping, or not
        orphaned after all): start() then starts afresh.  --preload is not
        imported: the template and its secondaries keep the modules of the
        primary that forked it, and a module that creates shared objects
        would meet them already there."""
        exit_fd = _ipc.prepare(self)
        try:
            got = _adopt.adopt(cfg, self.paths, exit_fd)
        except _adopt.Refused as err:
            _ipc.shutdown_primary(0)      # the unused exit channel
            self.adopt_refused = str(err)
            return False
        finally:
            _ipc.after_template_fork()    # its end is the template's now
        self.adopted = got
        self.template_pid = got["template_pid"]
        self.template_pidfd = os.pidfd_open(self.template_pid)
        self.template_is_child = False        # init's, or an older generation's
        # A newer generation than config.json names: the dead primary's
        # last reload ended before it could record it.
        self.generation = int(cfg.get("generation", 1)) + \
            (self.template_pid != cfg.get("template_pid"))
        # The template's settings are what it has, not our options.
        self.max_secondaries = cfg.get("max_secondaries", self.max_secondaries)
        self.pool = cfg.get("pool", self.pool)
        self.grace = float(cfg.get("grace", self.grace))
        self.preload = list(cfg.get("preload", []))
        self.config = dict(cfg, pid=self.pid, started=time.time(),
                           template_pid=self.template_pid, generation=self.generation,
                           adopted_from=got["old_primary_pid"])
        self.config["arena"] = dict(cfg["arena"], fd=lib.fh_arena_fd())
        self.config.pop("ipc_socket", None)        # ours once ipc() binds it
        # Generations retiring when the primary died serve their last
        # secondaries on, orphaned: ours to list and to stop (their exits
        # went to the dead primary's channel: not reported).
        with self._gen_lock:
            self.retiring = _adopt.retiring(cfg, self.prefix, self.template_pid)
        self.config["retiring"] = [pid for pid, _, _ in self.retiring]
        if "launch" in self.sockets:      # the template listens on its own copy
            os.close(self.sockets.pop("launch"))
        runtime.write_config(self.paths, self.config)
        if self._ipc_at_start or cfg.get("ipc_socket"):
            self.ipc()
        self._log(_log.lib.FH_LOG_INFO, "adopt", pid=self.pid,
                  template_pid=self.template_pid,
                  old_primary_pid=got["old_primary_pid"],
                  running=got["running"], arena_base=self.arena_base)
        return True

    def _log(self, level: int, event: str, **fields) -> None:
        _log.write(self.log_level, level, self.prefix, event, **fields)

    def reopen_log(self) -> None:
        """logrotate moved the log (forkhost primary --detach: SIGUSR1):
        stdout and stderr on <runtime>/<prefix>.log again, and the template
        told to do the same.  Nothing without a log of ours."""
        if self.log_root is None:
            return
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        fd = runtime.open_log(self.paths)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        self._log(_log.lib.FH_LOG_INFO, "reopen", pid=self.pid)
        if self.template_pidfd >= 0:
            try:
                signal.pidfd_send_signal(self.template_pidfd, signal.SIGUSR1)
            except ProcessLookupError:
                pass

    def _create_arena(self) -> None:
        flags = {"auto": lib.FH_ARENA_HUGE_AUTO, "always": lib.FH_ARENA_HUGE_ONLY,
                 "never": 0}[self.huge_pages]
        name = f"forkhost-arena:{self.prefix}".encode()
        if lib.fh_arena_create_growable(self.arena_size, self.arena_max or 0,
                                        flags, name) < 0:
            err = ffi.errno
            why = os.strerror(err)
            if err == 22 and self.arena_max and self.arena_max < self.arena_size:
                why += _wire.ARENA_MAX_TOO_SMALL
            elif err == 22:
                why += _wire.ARENA_TOO_SMALL
            elif self.huge_pages == "always" and err == 12:
                why = f"--huge-pages always: {_huge_shortfall(self.arena_size)}"
            raise ArenaError(f"cannot create a {human_size(self.arena_size)} arena: {why}")
        if self.huge_pages == "auto" and not self.huge:
            self.no_huge_why = _huge_shortfall(self.arena_size)

    def _preload(self) -> None:
        for name in self.preload:
            try:
                importlib.import_module(name)
            except BaseException as exc:
                tb = "".join(traceback.format_exception(exc))
                raise PreloadError(f"--preload {name} failed:\n{tb.rstrip()}") from exc

    def _bind(self) -> tuple[socket.socket, int]:
        """The template's listening socket and its file's inode (0: the
        template leaves the file alone at its end)."""
        path = self.socket_path
        if "launch" in self.sockets:      # socket activation: systemd's
            return socket.socket(fileno=self.sockets.pop("launch")), 0
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            old = os.umask(0o177)      # the socket file is created 0600
            try:
                sock.bind(path)
            finally:
                os.umask(old)
            os.chmod(path, 0o600)
            sock.listen(socket.SOMAXCONN)
            return sock, os.stat(path).st_ino
        except OSError as err:
            sock.close()
            raise ForkhostError(f"cannot listen on {path}: {err.strerror}") from err

    def _config_record(self) -> dict:
        from . import __version__
        return {
            "forkhost_version": __version__,
            "prefix": self.prefix,
            "pid": self.pid,
            "template_pid": 0,
            "socket": self.socket_path,
            "arena": {"base": self.arena_base, "size": int(lib.fh_arena_size()),
                      "max": int(lib.fh_arena_max()),
                      "page_size": self.page_size, "huge_pages": self.huge,
                      "fd": lib.fh_arena_fd()},
            "library": {"path": os.path.realpath(LIBRARY),
                        "version": ffi.string(lib.fh_version()).decode(),
                        "base": library_base()},
            "python": {"executable": sys.executable,
                       "version": sys.version.split()[0]},
            "preload": self.preload,
            "max_secondaries": self.max_secondaries,
            "pool": self.pool,
            "grace": self.grace,
            "started": time.time(),
            "generation": 1,
            "retiring": [],      # templates of older generations still serving
        }

    def _fork_template(self, listener: socket.socket, ino: int) -> None:
        check_single_threaded()
        from ._thp import before_template_fork
        before_template_fork(self)   # huge pages for big private memory
        # Anything buffered now would be written again by every process
        # that inherits the buffer.
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        lib.fh_flush_stdio()
        gc.collect()   # no garbage whose finalizers could run in the template
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:
            # The template.  It keeps the listening socket, the arena's fd
            # (for classic attach) and its ready pipe; it never returns here.
            code = 1
            try:
                os.close(ready_r)
                os.close(self._lock.fd)   # the lock is the primary's alone
                from ._template import template_main
                code = template_main(
                    listener, ready_w,
                    keep_fds=[lib.fh_arena_fd()],
                    exit_notice_fd=self._ipc_exit_fd,
                    prefix=self.prefix, socket_path=self.socket_path,
                    socket_ino=ino, primary_pid=self.pid,
                    max_secondaries=self.max_secondaries, grace=self.grace,
                    pool_size=self.pool, log_level=self.log_level,
                    log_root=self.log_root, preload=self.preload,
                    on_primary_death=ON_PRIMARY_DEATH[self.on_primary_death])
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        os.close(ready_w)
        self.template_pid = pid
        self.template_pidfd = os.pidfd_open(pid)
        try:
            answer = _read_with_timeout(ready_r, TEMPLATE_START_TIMEOUT)
        finally:
            os.close(ready_r)
        if answer != b"ok":
            raise ForkhostError(answer.decode(errors="replace")
                                or "the template exited while starting")

    # -- running --------------------------------------------------------

    def ipc(self):
        """Start IPC in this primary (docs/ipc.md) and return its endpoint,
        whose methods are forkhost.ipc's functions.  Only after start(): the
        IPC thread is a second thread, and the template must be forked from
        a single-threaded primary."""
        ep = _ipc.start_primary(self)
        try:
            _ipc.register(RELOAD_ACTION, self._on_reload_request)
        except ForkhostError:
            pass                  # registered already (ipc() called again)
        if self.config.get("ipc_socket") != ep.path:
            self.config["ipc_socket"] = ep.path
            runtime.write_config(self.paths, self.config)
        return ep

    def supervise(self, workers=None, *, plan=None, on_event=None, **group):
        """Start workers (forkhost.primary.Worker objects, or dicts with a
        [workers.NAME] table's keys and "name") and supervise them until
        stop(): restart policies, dependencies, strategy, intensity, period
        and backoff (group: strategy=, intensity=, period=, backoff=,
        backoff_max=, exit_on_give_up=).  The whole plan is checked first
        (ConfigError, nothing started).  Returns the Supervisor
        (docs/supervision.md).  Only after start(); starts IPC."""
        from . import _supervise
        if self.supervisor is not None:
            raise ForkhostError("this primary already supervises a group")
        if self.template_pidfd < 0:
            raise ForkhostError("supervise() needs a started primary")
        if plan is None:
            plan = _supervise.plan_from_python(workers or [], **group)
        self.ipc()
        self.supervisor = _supervise.Supervisor(self, plan, on_event=on_event)
        return self.supervisor.start()

    def secondary_ended(self, pid: int, code: int, sig: int) -> None:
        """The template reported secondary pid's end (exit code, or signal
        sig); called on the IPC thread.  Gives back what it left in the
        arena (forkhost/_reclaim.py)."""
        from . import _reclaim
        _reclaim.after_exit(self, pid, code, sig)

    def template_alive(self) -> bool:
        if self.template_pidfd < 0:
            return False
        return not runtime.readable(self.template_pidfd, 0)

    def wait_template(self, timeout: float | None = None) -> int | None:
        """Wait for the template to exit; its wait status decoded like
        os.waitstatus_to_exitcode, STATUS_UNKNOWN for a template that is
        not our child (a reload's generation, an adopted template), or None
        on timeout."""
        if self.template_pidfd < 0:
            return None
        if not runtime.readable(self.template_pidfd, timeout):
            return None
        code = _reap(self.template_pid, self.template_is_child)
        os.close(self.template_pidfd)
        self.template_pidfd = -1
        return code

    # -- reload ---------------------------------------------------------

    def _on_reload_request(self, msg, peer) -> None:
        """`forkhost reload` (IPC, JSON {"timeout": S}): the reload runs on
        a thread of its own (the IPC thread serves on meanwhile), and its
        outcome is the answer."""
        import json

        def run() -> None:
            try:
                timeout = float(json.loads(bytes(msg.param) or b"{}")
                                .get("timeout", RELOAD_TIMEOUT))
                answer = {"ok": True, **self.reload(timeout)}
            except ReloadPendingError as err:
                answer = {"ok": False, "pending": True, "error": str(err)}
            except (ForkhostError, ValueError, TypeError, AttributeError) as err:
                answer = {"ok": False, "error": str(err)}
            data = json.dumps(answer).encode()
            while len(data) > _ipc.PARAM_MAX:   # a very long traceback: its end
                err = answer["error"]
                answer["error"] = "(...)\n" + err[len(err) // 2:]
                data = json.dumps(answer).encode()
            _ipc.reply(peer, RELOAD_ACTION, data)
        threading.Thread(target=run, name="forkhost-reload", daemon=True).start()

    def generation_fd(self) -> int:
        """An fd readable once the generation changed since the last
        call (a loop waiting on template_pidfd takes the new one then),
        and whenever a retiring template may have ended
        (reap_generations())."""
        if self._gen_r < 0:
            self._gen_r, self._gen_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            os.read(self._gen_r, 64)
        except BlockingIOError:
            pass
        return self._gen_r

    def template_generations(self) -> set[int]:
        """The pids of this primary's live templates: the serving one and
        those retiring (each ends after its last secondary)."""
        return {self.template_pid, *(pid for pid, _, _ in list(self.retiring))}

    def retiring_pidfds(self) -> list[int]:
        with self._gen_lock:
            return [fd for _, fd, _ in self.retiring]

    def reap_generations(self) -> None:
        """Forget (and reap, if ours) the retiring templates that ended:
        each ends when its last secondary has."""
        with self._gen_lock:
            left = []
            for pid, fd, child in self.retiring:
                if runtime.readable(fd, 0):
                    _reap(pid, child)
                    os.close(fd)
                else:
                    left.append([pid, fd, child])
            if len(left) != len(self.retiring):
                self.retiring = left
                self.config["retiring"] = [pid for pid, _, _ in left]
                runtime.write_config(self.paths, self.config)

    def reload(self, timeout: float = RELOAD_TIMEOUT) -> dict:
        """Start a new generation (docs/reliability.md, "Reload"): the
        template forks it, it imports the preloads afresh and forks its
        pool, and new launches go to it; the old template serves its
        running secondaries and their clients and ends with the last one.
        The arena and everything in it stay where they are.  Returns
        {"template_pid", "generation", "old_template_pid"}.  ReloadError
        when the new generation did not start (a preload's traceback in
        its message): the old one serves on; or when it did not finish
        within timeout seconds: the template goes on with it, and its
        outcome is taken (and logged) when it comes.  Safe from any thread
        (no fork here); one reload at a time."""
        from . import _client, _protocol as protocol
        with self._gen_lock:
            if self.template_pidfd < 0:
                raise ForkhostError("reload() needs a started primary")
            self.reap_generations()
            old = self.template_pid
            sd = self.notifier
            if sd is not None:
                sd.reloading(f"reloading: prefix {self.prefix!r}")
            self._reload_idle.clear()
            later = False
            try:
                sock = None
                try:
                    sock = _client.connect(self.prefix, self.paths.root, timeout)
                    protocol.send(sock, protocol.RELOAD)
                    msg = _client._recv(sock, timeout)
                except TimeoutError:
                    if sock is None:
                        raise ReloadError(f"the template (pid {old}) did not answer "
                                          f"within {timeout:g}s") from None
                    # Giving up here would leave the template to finish a
                    # reload we never hear of: its answer is awaited on.
                    threading.Thread(target=self._reload_later, args=(sock, old),
                                     name="forkhost-reload", daemon=True).start()
                    sock, later = None, True
                    raise ReloadPendingError(f"the reload did not finish within {timeout:g}s; "
                                      f"the template (pid {old}) goes on with it, and "
                                      f"its outcome will be logged") from None
                except OSError as err:
                    raise ReloadError(f"cannot ask the template (pid {old}): "
                                      f"{err.strerror or err}") from None
                finally:
                    if sock is not None:
                        sock.close()
                return self._reloaded(msg, old)
            except ForkhostError as err:
                self._log(_log.lib.FH_LOG_WARNING, "reload", pid=self.pid,
                          template_pid=old, generation=self.generation,
                          failed=_last_line(str(err)))
                if sd is not None:
                    sd.ready(f"ready: prefix {self.prefix!r}, template {old} "
                             f"(the reload failed)")
                raise
            finally:
                if not later:
                    self._reload_idle.set()

    def wait_reload(self, timeout: float | None = None) -> bool:
        """Wait until no reload awaits the template's answer: a template
        that retired may end before its RELOADED is read, and is not dead
        then.  False on timeout."""
        return self._reload_idle.wait(timeout)

    def _reload_later(self, sock, old: int) -> None:
        """The answer to a reload that outlived reload()'s timeout, on a
        thread of its own: the new generation is taken then, or the failure
        logged."""
        from . import _client
        try:
            try:
                msg = _client._recv(sock, None)
            except OSError:
                msg = None
            finally:
                sock.close()
            with self._gen_lock:
                if self.template_pid != old or self.template_pidfd < 0:
                    return          # stopped meanwhile
                try:
                    self._reloaded(msg, old)
                except ForkhostError as err:
                    self._log(_log.lib.FH_LOG_WARNING, "reload", pid=self.pid,
                              template_pid=old, generation=self.generation,
                              failed=_last_line(str(err)))
        finally:
            self._reload_idle.set()

    def _reloaded(self, msg, old: int) -> dict:
        """The template's answer msg to our RELOAD (None: it closed the
        connection): the new generation taken as the current one, or
        ReloadError.  Under _gen_lock."""
        from . import _protocol as protocol
        sd = self.notifier
        if msg is None:
            raise ReloadError(f"the template (pid {old}) closed the "
                              f"connection without an answer")
        if msg.type == protocol.RELOAD_FAILED:
            raise ReloadError(protocol.decode_reload_failed(msg.body))
        if msg.type == protocol.ERROR:
            raise ReloadError(protocol.decode_error(msg.body)[1])
        if msg.type != protocol.RELOADED:
            raise ProtocolError(f"unexpected answer 0x{msg.type:02x} "
                                f"to RELOAD")
        new = protocol.decode_reloaded(msg.body)
        try:
            fd = os.pidfd_open(new)
        except ProcessLookupError:
            # The old template has retired: nothing would serve.  Its
            # end ends this primary, as any template's death does.
            signal.pidfd_send_signal(self.template_pidfd, signal.SIGTERM)
            raise ReloadError(f"the new generation's template (pid "
                              f"{new}) ended at once; the old one, "
                              f"retired, is stopped") from None
        self.retiring.append([old, self.template_pidfd,
                              self.template_is_child])
        self.template_pid, self.template_pidfd = new, fd
        self.template_is_child = False
        self.generation += 1
        self.config.update(template_pid=new, generation=self.generation,
                           retiring=[pid for pid, _, _ in self.retiring])
        runtime.write_config(self.paths, self.config)
        if self._gen_w >= 0:
            try:
                os.write(self._gen_w, b"g")
            except BlockingIOError:
                pass
        self._log(_log.lib.FH_LOG_INFO, "reload", pid=self.pid,
                  template_pid=new, old_template_pid=old,
                  generation=self.generation)
        if sd is not None:
            sd.ready(f"ready: prefix {self.prefix!r}, template {new}, "
                     f"generation {self.generation}")
        return {"template_pid": new, "generation": self.generation,
                "old_template_pid": old}

    def ready_line(self) -> str:
        pages = (f"{human_size(self.page_size)} huge pages" if self.huge else
                 f"{human_size(self.page_size)} pages"
                 + (f" ({self.no_huge_why})" if self.no_huge_why else ""))
        return (f"forkhost primary ready: prefix {self.prefix!r}, pid {self.pid}, "
                f"template {self.template_pid}, socket {self.socket_path}, arena "
                f"{human_size(int(lib.fh_arena_size()))} (grows to "
                f"{human_size(int(lib.fh_arena_max()))}) at 0x{self.arena_base:x}, "
                f"{pages}")

    # -- stop -----------------------------------------------------------

    def _stop_template(self) -> None:
        """End every generation's template: the current one and those
        retiring (each gives its secondaries the grace, then SIGKILL)."""
        with self._gen_lock:       # not while a reload is under way
            gens = [[self.template_pid, self.template_pidfd,
                     self.template_is_child]] if self.template_pidfd >= 0 else []
            gens += self.retiring
            self.retiring = []
            self.template_pidfd = -1
            for _, fd, _ in gens:
                try:
                    signal.pidfd_send_signal(fd, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + self.grace + 5.0
            for pid, fd, child in gens:
                if not runtime.readable(fd, max(0.0, deadline - time.monotonic())):
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
                    runtime.readable(fd, None)
                _reap(pid, child)
                os.close(fd)
            for fd in (self._gen_r, self._gen_w):
                if fd >= 0:
                    os.close(fd)
            self._gen_r = self._gen_w = -1

    def _stop_at_exit(self) -> None:
        if os.getpid() == self.pid:      # not in a child the program forked
            self.stop()

    def stop(self) -> None:
        """End the template (and with it every secondary), remove the
        prefix's runtime files and release the prefix.  IPC members are
        told first (forkhost.shutdown) and those that answer get up to the
        grace period to leave."""
        global _running
        if _running is self:              # started, not stopped yet
            _running = None
            atexit.unregister(self._stop_at_exit)
            self._log(_log.lib.FH_LOG_INFO, "stop", pid=self.pid,
                      cause=self.stop_cause)
        if self.supervisor is not None:   # workers first, while IPC runs
            self.supervisor.close()
        _ipc.shutdown_primary(self.grace)
        self._stop_template()
        self._lock.release()

    def __enter__(self) -> "Primary":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _last_line(text: str) -> str:
    """A failure's gist for its log line: a traceback's last line."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1].strip() if lines else ""


def _reap(pid: int, child: bool) -> int:
    """The exit code of template pid, which has ended: waited for if it
    is our child, else STATUS_UNKNOWN (its parent, an older template or
    init, reaps it)."""
    if child:
        try:
            _, status = os.waitpid(pid, 0)
            return os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            pass
    return STATUS_UNKNOWN


def _read_with_timeout(fd: int, timeout: float) -> bytes:
    if not runtime.readable(fd, timeout):
        return b"the template did not report ready in time"
    chunks = []
    while True:
        data = os.read(fd, 4096)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def __getattr__(name):
    """forkhost.primary.Worker, from the supervisor's module, which a
    primary without workers never imports."""
    if name == "Worker":
        from ._supervise import Worker
        return Worker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
