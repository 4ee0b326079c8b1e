"""Supervision: workers the primary starts itself, and restarts.

A **worker** is a secondary that the primary launches (any entry form
forkhost-run accepts) and watches: when it exits, its restart policy, the
group's strategy and the intensity decide what is stopped and started
again; the model is Erlang/OTP's supervisor, with DPDK's master/slave
sample's recovery sequence (docs/supervision.md):

1. the worker exits (the template's EXITED report on its launch
   connection);
2. the workers that require it (and, by the strategy, its later siblings
   or all of them) get a ``forkhost.stop`` notice over IPC with the
   reason, then SIGTERM after their grace, then SIGKILL after another;
3. ``forkhost._reclaim.reclaim(pid)`` runs for every process that ended
   (what it left in the arena comes back: docs/shm.md, "When a process
   dies");
4. after an exponential backoff, the dead worker and the stopped ones are
   started again in dependency order.

More than ``intensity`` restarts within ``period`` seconds and the group
gives up: every worker is stopped and, when asked (``exit_on_give_up``),
the primary exits with EXIT_GAVE_UP.

Declared three ways, all ending in ``Plan``: ``forkhost primary --worker
NAME=ENTRY ARGS`` (parse_worker_arg), ``forkhost primary --config FILE``
(load_config) and ``Primary.supervise(...)`` (plan_from_python).  A plan is
checked whole before anything starts; a bad one is one ConfigError line.

All the supervision itself runs on one thread of the primary (started
after the template fork, as any thread must be): launches, waits, stops,
restarts, the operator's commands.  State is published in the prefix's
config.json ("workers"), which `forkhost ps` reads.
"""

from __future__ import annotations

import importlib.machinery
import json
import os
import shlex
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from . import _reclaim, _client as client, ipc, _runtime as runtime
from ._errors import EXIT_CONFIG, ForkhostError

# Exit status of `forkhost primary` (docs/cli.md, docs/supervision.md) for
# a group that gave up with exit_on_give_up set; a configuration refused
# is EXIT_CONFIG (forkhost/_errors.py).
EXIT_GAVE_UP = 3

# IPC names.  The two notices are in forkhost's reserved namespace (named
# in ipc.h); the control requests of `forkhost restart`/`stop --worker`
# come from an attached process, which may send only unreserved names.
STOP_NOTICE = ipc.STOP_NOTICE
WORKER_NOTICE = ipc.WORKER_NOTICE
CONTROL_ACTION = "forkhost-supervisor"

RESTART_POLICIES = ("permanent", "transient", "temporary")
STRATEGIES = ("one_for_one", "rest_for_one", "one_for_all")

# Group defaults: systemd's StartLimitBurst/StartLimitIntervalSec and
# RestartSec, with the delay doubling per consecutive restart up to the cap.
DEFAULT_STRATEGY = "one_for_one"
DEFAULT_INTENSITY = 5
DEFAULT_PERIOD = 10.0
DEFAULT_BACKOFF = 0.1
DEFAULT_BACKOFF_MAX = 10.0


class ConfigError(ForkhostError):
    """A supervision plan refused before anything started: one line."""

    exit_code = EXIT_CONFIG


@dataclass
class Worker:
    """One worker's spec (the keys of a [workers.NAME] table)."""

    name: str
    entry: str
    args: list[str] = field(default_factory=list)
    module: bool = False            # entry is a module name (forkhost-run -m)
    restart: str = "permanent"
    grace: float | None = None      # None: the primary's --grace
    after: list[str] = field(default_factory=list)
    requires: list[str] = field(default_factory=list)
    stdout: str | None = None       # a file (appended to); None: the primary's
    stderr: str | None = None       # a file, "stdout", or None: the primary's
    cwd: str | None = None          # None: the primary's
    env: dict[str, str] = field(default_factory=dict)   # added to the primary's


@dataclass
class Group:
    strategy: str = DEFAULT_STRATEGY
    intensity: int = DEFAULT_INTENSITY
    period: float = DEFAULT_PERIOD
    backoff: float = DEFAULT_BACKOFF
    backoff_max: float = DEFAULT_BACKOFF_MAX
    exit_on_give_up: bool = False


@dataclass
class Plan:
    workers: list[Worker]           # in start (dependency) order
    group: Group
    primary: dict = field(default_factory=dict)   # the file's primary options


# -- reading and checking a plan ---------------------------------------------

# key -> (type check, what to say).  bool is not a number here.
def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_strs(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _is_str(v) -> bool:
    return isinstance(v, str)


def _is_bool(v) -> bool:
    return isinstance(v, bool)


def _is_env(v) -> bool:
    return isinstance(v, dict) and all(isinstance(x, str) for x in v.values())


_WORKER_KEYS = {
    "entry": (_is_str, "a string"), "args": (_is_strs, "an array of strings"),
    "module": (_is_bool, "true or false"), "restart": (_is_str, "a string"),
    "grace": (_is_num, "a number of seconds"), "after": (_is_strs, "an array of worker names"),
    "requires": (_is_strs, "an array of worker names"),
    "stdout": (_is_str, "a file name"), "stderr": (_is_str, "a file name or \"stdout\""),
    "cwd": (_is_str, "a directory"), "env": (_is_env, "a table of strings"),
}
_GROUP_KEYS = {
    "strategy": (_is_str, "a string"), "intensity": (_is_int, "an integer"),
    "period": (_is_num, "a number of seconds"), "backoff": (_is_num, "a number of seconds"),
    "backoff_max": (_is_num, "a number of seconds"),
    "exit_on_give_up": (_is_bool, "true or false"),
}
# The primary's options a file may set (forkhost primary's, by dest name).
PRIMARY_KEYS = {
    "prefix": (_is_str, "a string"), "runtime_dir": (_is_str, "a directory"),
    "arena_size": (lambda v: _is_str(v) or _is_int(v), "a size (\"64M\") or bytes"),
    "preload": (_is_strs, "an array of module names"),
    "max_secondaries": (_is_int, "an integer"), "grace": (_is_num, "a number of seconds"),
    "pool": (_is_int, "an integer"), "huge_pages": (_is_str, "\"auto\", \"never\" or \"always\""),
}


def _check_table(where: str, table: dict, keys: dict) -> None:
    for key, value in table.items():
        if key not in keys:
            raise ConfigError(f"{where}unknown key {key!r} (known: "
                              f"{', '.join(sorted(keys))})")
        ok, what = keys[key]
        if not ok(value):
            raise ConfigError(f"{where}{key}: expected {what}, not {value!r}")


def load_config(path: str | os.PathLike) -> Plan:
    """Read a forkhost.toml: the primary's options at the top, a
    [supervisor] table, a [workers.NAME] table per worker.  Relative
    paths (cwd, stdout, stderr) are the file's directory's."""
    import tomllib
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: {err}") from None
    base = path.resolve().parent
    top = {k: v for k, v in data.items() if k not in ("supervisor", "workers")}
    _check_table(f"{path}: ", top, PRIMARY_KEYS)
    sup = data.get("supervisor", {})
    if not isinstance(sup, dict):
        raise ConfigError(f"{path}: supervisor: expected a table")
    _check_table(f"{path}: [supervisor] ", sup, _GROUP_KEYS)
    tables = data.get("workers", {})
    if not isinstance(tables, dict):
        raise ConfigError(f"{path}: workers: expected tables [workers.NAME]")
    workers = []
    for name, table in tables.items():
        where = f"{path}: [workers.{name}] "
        if not isinstance(table, dict):
            raise ConfigError(f"{where}expected a table")
        _check_table(where, table, _WORKER_KEYS)
        if "entry" not in table:
            raise ConfigError(f"{where}entry: missing (what forkhost-run would run)")
        w = Worker(name=name, **{k: v for k, v in table.items()})
        for key in ("cwd", "stdout", "stderr"):
            value = getattr(w, key)
            if value is not None and not (key == "stderr" and value == "stdout"):
                setattr(w, key, str(base / value))
        if w.cwd is None:
            w.cwd = str(base)
        workers.append(w)
    group = Group(**sup)
    return check_plan(workers, group, f"{path}: ", primary=top)


def parse_worker_arg(text: str) -> Worker:
    """``--worker 'NAME=ENTRY ARGS...'``: split as a shell would (shlex);
    ``NAME=-m MODULE ARGS`` for a module."""
    name, eq, rest = text.partition("=")
    where = f"--worker {text!r}: "
    if not eq or not name:
        raise ConfigError(f"{where}expected NAME=ENTRY [ARGS...]")
    try:
        words = shlex.split(rest)
    except ValueError as err:
        raise ConfigError(f"{where}{err}") from None
    module = words[:1] == ["-m"]
    if module:
        words = words[1:]
    if not words:
        raise ConfigError(f"{where}no ENTRY after {name}=")
    return Worker(name=name, entry=words[0], args=words[1:], module=module)


def _label(w: Worker, where: str) -> str:
    """How an error names a worker: its table in a file, else its name."""
    return f"{where}[workers.{w.name}] " if where else f"worker {w.name!r}: "


def _check_entry(w: Worker, where: str) -> None:
    """What can be known before anything starts: the form of the entry
    (forkhost's own classification, as a launch makes it, from the
    worker's cwd) and, for a Python module or function, that its top-level
    package can be found."""
    from . import _classify
    label = _label(w, where)
    cwd_fd = None
    try:
        if w.cwd is not None:
            try:
                cwd_fd = os.open(w.cwd, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as err:
                raise ConfigError(f"{label}cwd {w.cwd}: {err.strerror}") from None
        try:
            target = _classify.classify(w.entry, w.module, cwd_fd)
        except _classify.EntryError as err:
            raise ConfigError(f"{label}entry {w.entry!r}: {err}") from None
        except ValueError as err:
            raise ConfigError(f"{label}entry {w.entry!r}: {err}") from None
    finally:
        if cwd_fd is not None:
            os.close(cwd_fd)
    for key in ("stdout", "stderr"):
        value = getattr(w, key)
        if value is not None and value != "stdout" and \
                not os.path.isdir(os.path.dirname(os.path.abspath(value))):
            raise ConfigError(f"{label}{key}: no directory for {value}")
    if target.kind in (_classify.MODULE, _classify.FUNCTION):
        top = target.name.partition(".")[0]
        search = ([w.cwd] if w.cwd else [os.getcwd()]) + sys.path
        if top not in sys.modules and \
                importlib.machinery.PathFinder.find_spec(top, search) is None:
            raise ConfigError(f"{label}entry {w.entry!r}: no module named {top!r}")


def _order(workers: list[Worker], where: str) -> list[Worker]:
    """Dependency order (after and requires), stable in declaration order;
    ConfigError naming a cycle."""
    by_name = {w.name: w for w in workers}
    deps = {w.name: list(dict.fromkeys(w.after + w.requires)) for w in workers}
    state: dict[str, int] = {}       # 1 visiting, 2 done
    out: list[Worker] = []

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = path[path.index(name):] + [name]
            raise ConfigError(f"{where}dependency cycle: {' -> '.join(cycle)} "
                              f"(after/requires)")
        state[name] = 1
        for d in deps[name]:
            visit(d, path + [name])
        state[name] = 2
        out.append(by_name[name])

    for w in workers:
        visit(w.name, [])
    return out


def check_plan(workers: list[Worker], group: Group, where: str = "",
               primary: dict | None = None, check_entries: bool = True) -> Plan:
    """Every check, before anything starts: names, policies, numbers,
    dependencies (unknown, cycles), entries."""
    if group.strategy not in STRATEGIES:
        raise ConfigError(f"{where}[supervisor] strategy: expected one of "
                          f"{', '.join(STRATEGIES)}, not {group.strategy!r}")
    if group.intensity < 0:
        raise ConfigError(f"{where}[supervisor] intensity: must be 0 or more")
    if group.period <= 0:
        raise ConfigError(f"{where}[supervisor] period: must be more than 0")
    if group.backoff < 0 or group.backoff_max < group.backoff:
        raise ConfigError(f"{where}[supervisor] backoff, backoff_max: need "
                          f"0 <= backoff <= backoff_max")
    seen = set()
    for w in workers:
        label = _label(w, where)
        if not w.name or any(c.isspace() or c in "=[]/\"'" for c in w.name):
            raise ConfigError(f"{label}name: a worker name is a non-empty word "
                              f"(no spaces, '=', brackets, quotes or '/')")
        if w.name in seen:
            raise ConfigError(f"{label}name: two workers named {w.name!r}")
        seen.add(w.name)
        if w.restart not in RESTART_POLICIES:
            raise ConfigError(f"{label}restart: expected one of "
                              f"{', '.join(RESTART_POLICIES)}, not {w.restart!r}")
        if w.grace is not None and w.grace < 0:
            raise ConfigError(f"{label}grace: must be 0 or more")
    for w in workers:
        for key in ("after", "requires"):
            for d in getattr(w, key):
                if d not in seen:
                    raise ConfigError(f"{_label(w, where)}{key}: unknown worker {d!r}")
                if d == w.name:
                    raise ConfigError(f"{where}dependency cycle: {d} -> {d} ({key})")
    ordered = _order(workers, where)
    if check_entries:
        for w in ordered:
            _check_entry(w, where)
    return Plan(ordered, group, dict(primary or {}))


def plan_from_python(workers, strategy=DEFAULT_STRATEGY, intensity=DEFAULT_INTENSITY,
                     period=DEFAULT_PERIOD, backoff=DEFAULT_BACKOFF,
                     backoff_max=DEFAULT_BACKOFF_MAX, exit_on_give_up=False) -> Plan:
    """Primary.supervise()'s arguments: Worker objects or dicts with the
    keys of a [workers.NAME] table plus "name"."""
    specs = []
    for w in workers:
        if isinstance(w, Worker):
            specs.append(w)
            continue
        if not isinstance(w, dict) or "name" not in w:
            raise ConfigError(f"a worker is a forkhost.primary.Worker or a dict with "
                              f"a 'name', not {w!r}")
        table = {k: v for k, v in w.items() if k != "name"}
        _check_table(f"worker {w['name']!r}: ", table, _WORKER_KEYS)
        if "entry" not in table:
            raise ConfigError(f"worker {w['name']!r}: entry: missing")
        specs.append(Worker(name=w["name"], **table))
    group = Group(strategy, intensity, period, backoff, backoff_max, exit_on_give_up)
    _check_table("", {k: v for k, v in vars(group).items()}, _GROUP_KEYS)
    return check_plan(specs, group)


# -- the running supervisor ---------------------------------------------------

def describe_status(rc: int | None) -> str:
    if rc is None:
        return "status unknown"
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        return f"killed by {name}"
    return f"exit status {rc}"


class _State:
    """A worker at run time."""

    def __init__(self, spec: Worker, index: int):
        self.spec = spec
        self.name = spec.name
        self.index = index              # in start order
        self.sec: client.Secondary | None = None
        self.pid = 0
        self.state = "waiting"          # waiting running stopping restarting
        #                                 stopped exited failed gave-up
        self.restarts = 0
        self.attempted = False          # a start was tried: the next is a restart
        self.exits = 0
        self.last_exit: int | None = None
        self.started = 0.0              # time.time() of the last start
        self.started_mono = 0.0
        self.streak = 0                 # consecutive quick restarts: backoff
        self.restart_at = 0.0           # monotonic, state "restarting"
        self.delay = 0.0                # the backoff before the next start
        self.reason = ""                # why it is not running / restarting
        self.reclaim: dict | None = None


class Supervisor:
    """Runs a Plan in a started Primary; see the module's docstring."""

    def __init__(self, primary, plan: Plan, on_event=None,
                 log=None):
        self.primary = primary
        self.plan = plan
        self.group = plan.group
        self.on_event = on_event
        self._log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.workers = [_State(w, i) for i, w in enumerate(plan.workers)]
        self.by_name = {w.name: w for w in self.workers}
        self._restart_times: deque[float] = deque()
        self._started_pids: set[int] = set()    # every worker process started
        self.gave_up: str | None = None
        self._commands: deque = deque()
        self._cmd_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # Readable once the group gave up with exit_on_give_up (the
        # command's main loop watches it).
        self._give_up_r, self._give_up_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._quit = False
        self._started = threading.Event()
        self._thread: threading.Thread | None = None
        self.events: list[dict] = []     # every event, in order (for Python users)

    # -- public ---------------------------------------------------------

    @property
    def give_up_fd(self) -> int:
        return self._give_up_r

    def start(self) -> "Supervisor":
        from . import ipc as _ipc
        try:
            _ipc.register(CONTROL_ACTION, self._on_control)
        except ForkhostError:
            pass            # another supervisor of this process had it
        self._thread = threading.Thread(target=self._main, name="forkhost-supervisor",
                                        daemon=True)
        self._thread.start()
        self._started.wait()
        return self

    def command(self, cmd: str, name: str | None = None,
                timeout: float | None = None) -> dict:
        """Run an operator's command on the supervisor's thread: "restart",
        "stop" (a worker) or "status"; returns its answer (a dict)."""
        done = threading.Event()
        box: list[dict] = []

        def answer(result: dict) -> None:
            box.append(result)
            done.set()
        self._enqueue(cmd, name, answer)
        if not done.wait(timeout):
            return {"ok": False, "error": "the supervisor did not answer in time"}
        return box[0]

    def restart(self, name: str) -> dict:
        return self.command("restart", name)

    def stop_worker(self, name: str) -> dict:
        return self.command("stop", name)

    def status(self) -> dict:
        return self._snapshot()

    def _reclaim_for(self, w: "_State") -> None:
        """Give back what worker w's dead process left, and say so."""
        rep = _reclaim.reclaim(w.pid)
        w.reclaim = rep.as_dict()
        if rep.anything():
            self._log(f"forkhost primary: worker {w.name!r} (pid {w.pid}): "
                      f"{rep.summary()}")
            _reclaim.publish(self.primary, rep)

    def started_pid(self, pid: int) -> bool:
        """pid is (or was) one of our workers: we reclaim what it leaves."""
        return pid in self._started_pids

    def close(self) -> None:
        """Stop every worker (reverse start order, with notices and grace)
        and the thread.  Called by Primary.stop() before IPC stops."""
        if self._thread is None:
            return
        self._quit = True
        self._wake()
        self._thread.join()
        self._thread = None
        from . import ipc as _ipc
        try:
            _ipc.unregister(CONTROL_ACTION)
        except ForkhostError:
            pass
        for fd in (self._wake_r, self._wake_w, self._give_up_r, self._give_up_w):
            os.close(fd)

    # -- commands -------------------------------------------------------

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass

    def _enqueue(self, cmd, name, answer) -> None:
        with self._cmd_lock:
            self._commands.append((cmd, name, answer))
        self._wake()

    def _on_control(self, msg, peer) -> None:
        """The IPC action of `forkhost restart` / `stop --worker` / `ps`:
        a JSON request, answered from the supervisor's thread."""
        from . import ipc as _ipc
        try:
            req = json.loads(bytes(msg.param))
            cmd, name = req["cmd"], req.get("worker")
        except (ValueError, KeyError, TypeError):
            _ipc.reply(peer, CONTROL_ACTION, json.dumps(
                {"ok": False, "error": "malformed supervisor request"}).encode())
            return

        def answer(result: dict) -> None:
            data = json.dumps(result).encode()
            if len(data) > _ipc.PARAM_MAX:
                data = json.dumps({"ok": result.get("ok", False),
                                   "message": "(answer too long)"}).encode()
            _ipc.reply(peer, CONTROL_ACTION, data)
        self._enqueue(cmd, name, answer)

    def _run_command(self, cmd, name) -> dict:
        if cmd == "status":
            return {"ok": True, **self._snapshot()}
        w = self.by_name.get(name)
        if w is None:
            known = ", ".join(self.by_name) or "none"
            return {"ok": False, "error": f"no worker named {name!r} (workers: {known})"}
        if cmd == "stop":
            if w.sec is None and w.state not in ("restarting", "waiting"):
                return {"ok": True, "message": f"worker {name!r} is not running ({w.state})"}
            down = self._dependents_closure({w})
            why = f"{name} stopped by the operator"
            self._stop_many(sorted(down, key=lambda x: x.index), why)
            for x in down:
                x.state = "stopped"
                x.reason = "stopped by the operator" if x is w else \
                    f"requires {name}, stopped by the operator"
            self._publish()
            return {"ok": True, "message": f"worker {name!r} stopped"
                    + (f" with {', '.join(x.name for x in down if x is not w)}"
                       if len(down) > 1 else "")}
        if cmd == "restart":
            if self.gave_up is not None:
                self.gave_up = None
                self._restart_times.clear()
            down = self._dependents_closure({w})
            order = sorted(down, key=lambda x: x.index)
            self._stop_many(order, f"{name} restarted by the operator")
            for x in order:
                x.state, x.restart_at, x.delay = "restarting", 0.0, 0.0
                x.reason = "restart requested by the operator"
                x.streak = 0
            self._start_due()
            return {"ok": True, "message": "restarted " + ", ".join(
                f"{x.name} (pid {x.pid})" if x.sec else f"{x.name} ({x.state})"
                for x in order)}
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    # -- events ---------------------------------------------------------

    def _event(self, kind: str, w: _State | None, text: str, **fields) -> None:
        """One log line and one forkhost.worker notice per event."""
        record = {"event": kind, "worker": w.name if w else None,
                  "pid": w.pid if w else 0, "time": time.time(), **fields}
        self.events.append(record)
        self._log(f"forkhost primary: {text}")
        from . import ipc as _ipc
        ep = _ipc._endpoint
        if ep is not None and _ipc.started():
            try:
                data = json.dumps(record).encode()[:_ipc.PARAM_MAX]
                ep.send(WORKER_NOTICE, data, internal=True)
            except ForkhostError:
                pass
        if self.on_event is not None:
            try:
                self.on_event(record)
            except Exception as exc:     # a user's callback: not our thread's end
                self._log(f"forkhost primary: supervisor on_event raised {exc!r}")

    def _snapshot(self) -> dict:
        now = time.time()
        g = self.group
        return {
            "strategy": g.strategy, "intensity": g.intensity, "period": g.period,
            "gave_up": self.gave_up,
            "workers": [{
                "name": w.name, "entry": w.spec.entry, "args": w.spec.args,
                "restart": w.spec.restart, "state": w.state,
                "pid": w.pid if w.sec is not None else None,
                "restarts": w.restarts, "last_exit": w.last_exit,
                "last_exit_text": describe_status(w.last_exit) if w.exits else None,
                "started": w.started if w.sec is not None else None,
                "uptime": round(now - w.started, 1) if w.sec is not None else None,
                "next_delay": w.delay if w.state == "restarting" else None,
                "reason": w.reason, "reclaim": w.reclaim,
            } for w in self.workers],
        }

    def _publish(self) -> None:
        """The state, for `forkhost ps`: config.json's "workers"."""
        p = self.primary
        p.config["supervisor"] = self._snapshot()
        try:
            runtime.write_config(p.paths, p.config)
        except (ForkhostError, OSError):
            pass        # stopping: the directory may be going

    # -- starting -------------------------------------------------------

    def _launch(self, w: _State) -> None:
        s = w.spec
        p = self.primary
        opened: list[int] = []
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        try:
            out = err = None
            if s.stdout is not None:
                out = os.open(s.stdout, flags, 0o644)
                opened.append(out)
            if s.stderr == "stdout":
                err = client.STDOUT
            elif s.stderr is not None:
                err = os.open(s.stderr, flags, 0o644)
                opened.append(err)
            env = {**os.environ, **s.env} if s.env else None
            w.sec = client.launch(s.entry, s.args, module=s.module, prefix=p.prefix,
                                  runtime_dir=p.paths.root, env=env, cwd=s.cwd,
                                  stdin=client.DEVNULL, stdout=out, stderr=err)
        finally:
            for fd in opened:
                os.close(fd)

    def _start(self, w: _State) -> bool:
        """Launch w; on a refusal, the refusal is its exit (policy applies)."""
        again, w.attempted = w.attempted, True
        try:
            self._launch(w)
        except (ForkhostError, OSError) as err:
            code = getattr(err, "exit_code", None)
            w.sec, w.pid = None, 0
            w.state = "failed"
            w.last_exit = code
            w.exits += 1
            if again:
                w.restarts += 1
            w.reason = f"cannot start: {err}"
            self._event("exit", w, f"worker {w.name} failed to start: {err}",
                        status=code, restarts=w.restarts)
            self._after_exit(w, code, started=False)
            return False
        w.pid = w.sec.pid
        self._started_pids.add(w.pid)
        w.started, w.started_mono = time.time(), time.monotonic()
        w.state = "running"
        if again:
            w.restarts += 1
            self._event("restart", w, f"worker {w.name} restarted (pid {w.pid}; "
                        f"restart {w.restarts}, after {w.delay:g}s; {w.reason})",
                        restarts=w.restarts, delay=w.delay, reason=w.reason)
        else:
            self._event("start", w, f"worker {w.name} started (pid {w.pid}): "
                        f"{' '.join([w.spec.entry, *w.spec.args])}", restarts=w.restarts)
        w.reason = ""
        return True

    def _start_due(self) -> None:
        """Start the restarting workers whose time came, in start order,
        each once what it requires runs."""
        now = time.monotonic()
        for w in self.workers:
            if w.state != "restarting" or w.restart_at > now:
                continue
            blocked = None
            for d in w.spec.requires + w.spec.after:
                dw = self.by_name[d]
                if dw.state == "restarting":
                    blocked = dw
                    break
                if d in w.spec.requires and dw.sec is None:
                    w.state = "stopped"
                    w.reason = f"requires {d}, which is {dw.state}"
                    self._log(f"forkhost primary: worker {w.name} not started: {w.reason}")
                    break
            else:
                self._start(w)
                continue
            if blocked is not None:
                w.restart_at = max(w.restart_at, blocked.restart_at)
        self._publish()

    # -- stopping -------------------------------------------------------

    def _notice_stop(self, w: _State, reason: str) -> int:
        from . import ipc as _ipc
        ep = _ipc._endpoint
        if ep is None or not _ipc.started():
            return 0
        try:
            return ep.send(STOP_NOTICE, reason.encode()[:_ipc.PARAM_MAX], to=w.pid,
                           internal=True)
        except ForkhostError:
            return 0

    def _read_exit(self, w: _State) -> bool:
        """True once w's EXITED report is in (or the template is gone)."""
        try:
            return w.sec.poll() is not None
        except ForkhostError:
            return True       # the template is gone: nobody will report it

    def _stop_many(self, ws: list[_State], reason: str) -> None:
        """Stop ws in waves, dependents first: each wave is the workers that
        no other worker left in ws names in after or requires."""
        left = [w for w in ws if w.sec is not None]
        while left:
            wave = [w for w in left if not any(
                w.name in x.spec.after + x.spec.requires for x in left if x is not w)]
            if not wave:            # (the plan has no cycles; defensive)
                wave = left
            self._stop_wave(wave, reason)
            left = [w for w in left if w not in wave]

    def _stop_wave(self, ws: list[_State], reason: str) -> None:
        """forkhost.stop notice (the reason), SIGTERM after each one's grace,
        SIGKILL after another; wait for all.  Their exits are recorded, not
        recovered from."""
        live = [w for w in ws if w.sec is not None]
        now = time.monotonic()
        phase: dict[_State, int] = {}
        deadline: dict[_State, float | None] = {}
        for w in live:
            w.state = "stopping"
            reached = self._notice_stop(w, reason)
            grace = w.spec.grace if w.spec.grace is not None else self.primary.grace
            # A worker the notice did not reach cannot act on it: SIGTERM
            # at once, SIGKILL after its grace.
            told = (f"{STOP_NOTICE} sent, SIGTERM after {grace:g}s" if reached else
                    f"not an IPC member: SIGTERM now, SIGKILL after {grace:g}s")
            self._event("stop", w, f"worker {w.name} (pid {w.pid}): stopping "
                        f"({told}): {reason}",
                        reason=reason, notified=bool(reached), grace=grace)
            if reached:
                phase[w], deadline[w] = 0, now + grace
            else:
                w.sec.send_signal(signal.SIGTERM)
                phase[w], deadline[w] = 1, now + grace
        pending = list(live)
        import select as _select
        while True:
            pending = [w for w in pending if not (w.sec.returncode is not None
                                                  or self._read_exit(w))]
            if not pending:
                break
            now = time.monotonic()
            for w in pending:
                d = deadline[w]
                if d is not None and d <= now:
                    grace = w.spec.grace if w.spec.grace is not None else self.primary.grace
                    if phase[w] == 0:
                        w.sec.send_signal(signal.SIGTERM)
                        phase[w], deadline[w] = 1, now + grace
                    else:
                        w.sec.send_signal(signal.SIGKILL)
                        phase[w], deadline[w] = 2, None
            waits = [d for d in (deadline[w] for w in pending) if d is not None]
            timeout = max(0.0, min(waits) - time.monotonic()) if waits else None
            poller = _select.poll()
            for w in pending:
                poller.register(w.sec.fileno(), _select.POLLIN)
            poller.poll(None if timeout is None else timeout * 1000 + 1)
        for w in live:
            self._record_exit(w, f" (stopped: {reason})", stopped=True)
            self._reclaim_for(w)
            w.state = "stopped"

    # -- recovery -------------------------------------------------------

    def _dependents_closure(self, roots: set[_State]) -> set[_State]:
        """roots and every worker that requires one of them, transitively."""
        out = set(roots)
        changed = True
        while changed:
            changed = False
            for w in self.workers:
                if w not in out and any(self.by_name[d] in out for d in w.spec.requires):
                    out.add(w)
                    changed = True
        return out

    def _wants_restart(self, w: _State, rc: int | None) -> bool:
        if w.spec.restart == "permanent":
            return True
        if w.spec.restart == "transient":
            return rc != 0
        return False

    def _record_exit(self, w: _State, note: str = "", **fields) -> int | None:
        """w's secondary has exited: its status kept, its handle closed, the
        exit's log line and notice; the status."""
        rc = w.sec.returncode
        w.sec.close()
        w.sec = None
        w.last_exit = rc
        w.exits += 1
        self._event("exit", w, f"worker {w.name} (pid {w.pid}) exited: "
                    f"{describe_status(rc)}{note}", status=rc,
                    restarts=w.restarts, **fields)
        return rc

    def _on_exit(self, w: _State) -> None:
        self._after_exit(w, self._record_exit(w), started=True)

    def _after_exit(self, w: _State, rc: int | None, started: bool) -> None:
        if self._quit or not self.primary.template_alive():
            w.state = "exited"
            self._publish()
            return
        # What the dead worker held comes back first, before its dependents
        # are stopped (their own reports then show only what they held) and
        # before anything starts again.
        if w.pid:
            self._reclaim_for(w)
        g = self.group
        if started and time.monotonic() - w.started_mono >= g.period:
            w.streak = 0            # it stayed up: the backoff starts over
        deps = self._dependents_closure({w}) - {w}
        how = describe_status(rc)
        if not self._wants_restart(w, rc):
            w.state = "exited"
            w.reason = f"{how}; restart = {w.spec.restart}: not restarted"
            down = sorted(deps, key=lambda x: x.index)
            self._stop_many(down, f"{w.name} exited ({how}) and is not restarted")
            for x in down:
                x.state = "stopped"
                x.reason = f"requires {w.name}, which exited and is not restarted"
            self._publish()
            return
        # Which workers go down with it: the strategy's, and what requires them.
        if g.strategy == "one_for_all":
            chosen = set(self.workers)
        elif g.strategy == "rest_for_one":
            chosen = {x for x in self.workers if x.index >= w.index}
        else:
            chosen = {w}
        # Stopped or exited siblings stay as they are; the dead one comes back.
        chosen = {x for x in chosen if x is w or x.sec is not None
                  or x.state == "restarting"}
        group = self._dependents_closure(chosen)
        now = time.monotonic()
        while self._restart_times and self._restart_times[0] <= now - g.period:
            self._restart_times.popleft()
        if len(self._restart_times) >= g.intensity:
            self._give_up(f"worker {w.name} exited ({how}) after {len(self._restart_times)} "
                          f"restart{'s' if len(self._restart_times) != 1 else ''} in "
                          f"{g.period:g}s (intensity {g.intensity}, period {g.period:g}s)")
            return
        self._restart_times.append(now)
        order = sorted(group, key=lambda x: x.index)
        self._stop_many([x for x in order if x is not w],
                        f"{w.name} exited ({how}); {g.strategy} restart")
        delay = min(g.backoff_max, g.backoff * (2 ** w.streak))
        w.streak += 1
        at = time.monotonic() + delay
        for x in order:
            x.state, x.restart_at, x.delay = "restarting", at, delay
            x.reason = (f"{how}; {g.strategy}" if x is w else
                        f"with {w.name}, which exited ({how}); {g.strategy}")
        self._publish()

    def _give_up(self, why: str) -> None:
        self.gave_up = why
        live = sorted((x for x in self.workers if x.sec is not None),
                      key=lambda x: -x.index)
        self._stop_many(live, f"the supervisor gave up: {why}")
        for x in self.workers:
            if x.state not in ("exited",):
                x.state = "gave-up"
        exiting = self.group.exit_on_give_up
        self._event("give_up", None, f"supervisor gave up: {why}; every worker is "
                    f"stopped" + (f"; the primary exits with status {EXIT_GAVE_UP}"
                                  if exiting else ""), reason=why, exiting=exiting)
        self._publish()
        if exiting:
            os.write(self._give_up_w, b"x")

    # -- the thread -----------------------------------------------------

    def _main(self) -> None:
        try:
            try:
                for w in self.workers:
                    w.state, w.restart_at = "restarting", 0.0
                self._start_due()
            finally:
                self._started.set()
            self._loop()
        except BaseException:
            import traceback
            self._log("forkhost primary: the supervisor failed; workers are no "
                      "longer supervised:\n" + traceback.format_exc().rstrip())
            raise
        finally:
            # The primary is stopping (or we failed): workers go in reverse
            # start order.
            live = sorted((x for x in self.workers if x.sec is not None),
                          key=lambda x: -x.index)
            self._stop_many(live, "the primary is stopping")
            for x in self.workers:
                if x.state != "gave-up":
                    x.state = "stopped"
            with self._cmd_lock:
                left, self._commands = list(self._commands), deque()
            for _cmd, _name, answer in left:
                answer({"ok": False, "error": "the primary is stopping"})

    def _loop(self) -> None:
        import select as _select
        while not self._quit:
            now = time.monotonic()
            due = [w.restart_at for w in self.workers if w.state == "restarting"]
            timeout = max(0.0, min(due) - now) if due else None
            poller = _select.poll()
            poller.register(self._wake_r, _select.POLLIN)
            running = {w.sec.fileno(): w for w in self.workers if w.sec is not None
                       and w.state == "running"}
            for fd in running:
                poller.register(fd, _select.POLLIN)
            ready = poller.poll(None if timeout is None else timeout * 1000 + 1)
            for fd, _ in ready:
                if fd == self._wake_r:
                    try:
                        while os.read(self._wake_r, 512):
                            pass
                    except BlockingIOError:
                        pass
            if self._quit:
                break
            for fd, _ in ready:
                w = running.get(fd)
                if w is not None and w.sec is not None and w.state == "running" \
                        and self._read_exit(w):
                    self._on_exit(w)
            while not self._quit:
                with self._cmd_lock:
                    item = self._commands.popleft() if self._commands else None
                if item is None:
                    break
                cmd, name, answer = item
                try:
                    result = self._run_command(cmd, name)
                except Exception as exc:        # say it, keep supervising
                    result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                answer(result)
            if not self._quit:
                self._start_due()


# -- the command line ---------------------------------------------------------

def plan_from_args(a, defaults) -> Plan | None:
    """`forkhost primary`'s --config and --worker options: the plan (None
    without them).  The file's primary options apply where the command
    line left an option at its default (defaults: a parse of `primary`
    alone); --worker workers come after the file's."""
    if not a.config and not a.worker:
        return None
    plan = load_config(a.config) if a.config else Plan([], Group())
    for key, value in plan.primary.items():
        if getattr(a, key) == getattr(defaults, key):
            setattr(a, key, value)
    if not a.worker:
        return plan
    extra = [parse_worker_arg(text) for text in a.worker]
    where = f"{a.config}: " if a.config else ""
    known = {w.name for w in plan.workers}
    for w in extra:
        if w.name in known:
            raise ConfigError(f"--worker {w.name}: a worker named {w.name!r} is "
                              f"already declared" + (f" in {a.config}" if a.config else ""))
        known.add(w.name)
    # The file's workers were checked with it; check the whole again.
    return check_plan(plan.workers + extra, plan.group, where, plan.primary)


def control(prefix, runtime_dir, cmd: str, name: str | None, timeout: float) -> dict:
    """`forkhost restart NAME`, `forkhost stop --worker NAME`: ask the
    prefix's primary over IPC (attached for the time of the request)."""
    def check(cfg, p):
        if not cfg.get("supervisor"):
            raise ForkhostError(f"the primary of prefix {p.prefix!r} (pid {cfg['pid']}) "
                                f"supervises no workers")
    answer = runtime.ask_primary(prefix, runtime_dir, CONTROL_ACTION,
                                 {"cmd": cmd, "worker": name}, timeout, check)
    if not answer.get("ok"):
        raise ForkhostError(answer.get("error", "failed"))
    return answer


def ps_rows(prefix: str, cfg: dict) -> list[dict]:
    """`forkhost ps`'s worker rows, from config.json's "supervisor"."""
    sup = cfg.get("supervisor") or {}
    now = time.time()
    rows = []
    for w in sup.get("workers", []):
        rows.append({"prefix": prefix, "role": "worker", "name": w["name"],
                     "pid": w["pid"], "client_pid": None, "state": w["state"],
                     "restarts": w["restarts"], "last_exit": w["last_exit"],
                     "last_exit_text": w["last_exit_text"],
                     "uptime": round(now - w["started"], 1) if w["started"] else None,
                     "command": " ".join([w["entry"], *w["args"]]),
                     "reason": w["reason"], "reclaim": w.get("reclaim"),
                     "ipc": None})
    return rows


def ps_print(cfg_by_prefix: list[tuple[str, dict]]) -> None:
    for prefix, cfg in cfg_by_prefix:
        sup = cfg.get("supervisor")
        if not sup:
            continue
        gave = f"; gave up: {sup['gave_up']}" if sup.get("gave_up") else ""
        print(f"\nworkers of {prefix!r} ({sup['strategy']}, at most {sup['intensity']} "
              f"restarts in {sup['period']:g}s{gave})")
        print(f"{'WORKER':<16} {'STATE':<10} {'PID':>8} {'RESTARTS':>8} "
              f"{'UPTIME':>9} {'LAST EXIT':<22} COMMAND")
        for r in ps_rows(prefix, cfg):
            up = f"{r['uptime']:>8.1f}s" if r["uptime"] is not None else f"{'-':>9}"
            print(f"{r['name']:<16} {r['state']:<10} {r['pid'] or '-':>8} "
                  f"{r['restarts']:>8} {up} {r['last_exit_text'] or '-':<22} "
                  f"{r['command']}")
