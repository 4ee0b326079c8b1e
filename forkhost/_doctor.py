"""``forkhost doctor``: what this machine offers forkhost, and how a
prefix's primary and template are doing.  Each line is OK, INFO, WARN or
FAIL; the exit status is 1 when anything FAILed.

``forkhost doctor ENTRY`` (doctor_entry): whether ENTRY can be loaded in a
secondary of the prefix, and if not, why and what fixes it.  The check is
the real loader under the real conditions: it runs in a secondary of the
prefix (forkhost/entry_check.py, and for native entries libforkhost's
fh_entry_check), launched like any entry.
"""

from __future__ import annotations

import os
import platform
import re
import select
import shutil
import signal
import stat
import subprocess
import sys
import time

from . import _client as client, _runtime as runtime
from ._errors import (EXIT_CANNOT_RUN, EXIT_NOT_FOUND, ForkhostError, NoPrimaryError,
                     RefusedError)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def doctor(prefix: str | None = None, runtime_dir=None) -> int:
    failed = False

    def say(level: str, text: str) -> None:
        nonlocal failed
        failed |= level == "FAIL"
        print(f"{level:<5} {text}")

    try:
        from ._native import LIBRARY, ffi, lib
        say("OK", f"native library {LIBRARY} (version "
                  f"{ffi.string(lib.fh_version()).decode()})")
    except ImportError as err:
        say("FAIL", f"native library does not load: {err}")
        return 1

    say("INFO", f"kernel {platform.release()}, {platform.libc_ver()[0]} "
                f"{platform.libc_ver()[1]}")
    for name, ok in (("pidfd_open", hasattr(os, "pidfd_open")),
                     ("memfd_create", hasattr(os, "memfd_create"))):
        say("OK" if ok else "FAIL", f"{name} available" if ok else f"{name} missing")

    aslr = _read("/proc/sys/kernel/randomize_va_space")
    say("INFO", f"ASLR is {'on' if aslr in ('1', '2') else 'off'} "
                f"(randomize_va_space={aslr or '?'}): forked secondaries share the "
                f"primary's layout either way; classic attach depends on it")

    from .primary import human_size, huge_page_pool
    pool = huge_page_pool()
    hp_size = human_size(pool["size"]) if pool["size"] else "?"
    if pool["available"]:
        say("OK", f"{pool['available']} free huge pages of {hp_size} (of {pool['total']} "
                  f"reserved): arenas that fit in them use them")
    elif pool["total"]:
        say("INFO", f"{pool['total']} huge pages of {hp_size} reserved, none free "
                    f"(other mappings hold them): arenas use normal pages")
    else:
        say("INFO", f"no huge pages reserved ({hp_size} pages): arenas use normal "
                    f"pages; reserve some with /proc/sys/vm/nr_hugepages")

    runner = shutil.which("forkhost-run")
    if runner:
        out = subprocess.run([runner, "--version"], capture_output=True, text=True)
        say("OK" if out.returncode == 0 else "FAIL",
            f"{runner}: {out.stdout.strip() or out.stderr.strip()}")
    else:
        say("FAIL", "forkhost-run is not on PATH")

    try:
        p = runtime.paths(prefix, runtime_dir)
    except ForkhostError as err:
        say("FAIL", str(err))
        return 1
    try:
        st = os.stat(p.root)
        mode = stat.S_IMODE(st.st_mode)
        say("OK" if mode == 0o700 else "WARN",
            f"runtime directory {p.root} (mode {mode:04o}, uid {st.st_uid})")
    except FileNotFoundError:
        say("INFO", f"runtime directory {p.root} does not exist yet")

    cfg = runtime.read_config(p)
    if cfg is None or not runtime.pid_alive(cfg.get("pid", 0)):
        say("INFO", f"no primary running for prefix {p.prefix!r}")
        return 1 if failed else 0
    say("OK", f"primary {cfg['pid']} for prefix {p.prefix!r}, arena "
              f"{cfg['arena']['size']} bytes at start, growing to "
              f"{cfg['arena'].get('max', cfg['arena']['size'])}, at "
              f"0x{cfg['arena']['base']:x} ({cfg['arena']['page_size']}-byte pages)")
    thp = cfg.get("thp")
    if thp:
        say(*_thp_line(thp))
    try:
        info = client.info(p.prefix, p.root)
    except ForkhostError as err:
        say("FAIL", f"the template does not answer: {err}")
        return 1
    say("OK" if info["threads"] == 1 else "FAIL",
        f"template {info['template_pid']}: {info['threads']} thread(s), "
        f"{len(info['secondaries'])} secondaries running, {info['launched']} "
        f"launched ({info['pool_launches']} by pool members), "
        f"{info['refused']} refused")
    sock_mode = stat.S_IMODE(os.stat(p.socket).st_mode)
    say("OK" if sock_mode == 0o600 else "WARN", f"socket {p.socket} mode {sock_mode:04o}")
    say(*cgroup_line(os.getpid(), info["template_pid"]))
    return 1 if failed else 0


# -- cgroups -----------------------------------------------------------------

def cgroup2_mount() -> str | None:
    """The first cgroup2 mount point whose root is "/", from
    /proc/self/mountinfo (the secondary's own lookup: csrc/lib/spawn.c)."""
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            for line in f:
                head, sep, tail = line.partition(b" - ")
                fields = head.split()
                if sep and tail.startswith(b"cgroup2 ") and len(fields) >= 5 \
                        and fields[3] == b"/":
                    return os.fsdecode(re.sub(   # \040 is a space
                        rb"\\([0-7]{3})", lambda m: bytes([int(m[1], 8)]), fields[4]))
    except OSError:
        pass
    return None


def cgroup_of(pid: int) -> str | None:
    """pid's cgroup v2 path (its /proc/PID/cgroup "0::" line), or None."""
    for line in _read(f"/proc/{pid}/cgroup").splitlines():
        if line.startswith("0::"):
            return line[3:] or None
    return None


def _creds(pid: int) -> tuple[int, int, bool] | None:
    """pid's effective uid and gid, and whether it has CAP_DAC_OVERRIDE
    (which writes any cgroup.procs whatever its mode), from
    /proc/PID/status; None if unreadable."""
    uid = gid = cap = None
    for line in _read(f"/proc/{pid}/status").splitlines():
        if line.startswith("Uid:"):
            uid = int(line.split()[2])
        elif line.startswith("Gid:"):
            gid = int(line.split()[2])
        elif line.startswith("CapEff:"):
            cap = int(line.split()[1], 16)
    if uid is None or gid is None or cap is None:
        return None
    return uid, gid, bool(cap & (1 << 1))      # CAP_DAC_OVERRIDE is 1


def _writable_by(path: str, creds: tuple[int, int, bool]) -> bool:
    """Whether a process with creds may open path for writing, by its mode
    bits (as the kernel decides for cgroupfs files)."""
    uid, gid, override = creds
    try:
        st = os.stat(path)
    except OSError:
        return False
    if override:
        return True
    if st.st_uid == uid:
        return bool(st.st_mode & 0o200)
    if st.st_gid == gid:
        return bool(st.st_mode & 0o020)
    return bool(st.st_mode & 0o002)


def cgroup_line(client_pid: int, template_pid: int) -> tuple[str, str]:
    """Whether a secondary launched by client_pid joins client_pid's cgroup
    (csrc/lib/spawn.c's join_client_cgroup) or stays in the template's,
    and why: (level, text) for doctor's report."""
    stays = "secondaries of this shell stay in the primary's cgroup"
    mount = cgroup2_mount()
    want, own = cgroup_of(client_pid), cgroup_of(template_pid)
    if mount is None or want is None or own is None:
        return ("INFO", f"no cgroup v2 hierarchy mounted: {stays} "
                        f"(a systemd-run --scope around forkhost-run does not limit "
                        f"them)")
    if want == own:
        return ("OK", f"cgroup {own}: this shell's is the primary's; a client in "
                      f"another cgroup (systemd-run --scope) gets its secondaries "
                      f"moved into it")
    creds = _creds(template_pid)
    if creds is None:
        return ("INFO", f"cannot read the template's credentials: whether "
                        f"secondaries of this shell join its cgroup {want} is unknown")
    uid = creds[0]
    target = mount.rstrip("/") + (want if want != "/" else "") + "/cgroup.procs"
    if not _writable_by(target, creds):
        return ("WARN", f"{stays} ({own}): {target} is not writable by uid {uid}, "
                        f"the primary's; delegate the cgroup to that user, or run "
                        f"the primary as the client's user (systemd --user)")
    common = os.path.commonpath([want, own])
    ancestor = mount.rstrip("/") + (common if common != "/" else "") + "/cgroup.procs"
    if not _writable_by(ancestor, creds):
        return ("WARN", f"{stays} ({own}): moving a process from {own} to {want} "
                        f"needs write access to the common ancestor's {ancestor} "
                        f"too, which uid {uid} lacks")
    subtree = _read(os.path.dirname(target) + "/cgroup.subtree_control")
    if want != "/" and subtree:
        return ("WARN", f"{stays} ({own}): {want} enables controllers for its "
                        f"children ({subtree}), and the no-internal-processes rule "
                        f"keeps processes out of such a cgroup")
    return ("OK", f"secondaries of this shell join its cgroup {want} (the primary's "
                  f"is {own}), so its limits hold them")


def _thp_line(thp: dict) -> tuple[str, str]:
    """What the primary's huge-page collapse before the template fork did
    (config.json "thp", forkhost/_thp.py)."""
    what = "transparent huge pages for the primary's private memory"
    if not thp.get("enabled"):
        return "INFO", f"{what}: off ({thp.get('why', '')})"
    if "unsupported" in thp or "error" in thp:
        return "INFO", f"{what}: {thp.get('unsupported') or thp.get('error')}"
    if not thp.get("regions"):
        return "INFO", (f"{what}: none needed (no mapping with "
                        f"{thp['min_bytes'] >> 20} MiB resident)")
    line = (f"{what}: {thp['collapsed_bytes'] >> 20} MiB of "
            f"{thp['region_bytes'] >> 20} MiB collapsed before the template fork")
    if thp.get("failed_bytes"):
        return "WARN", (line + f"; {thp['failed_bytes'] >> 20} MiB refused "
                        f"({thp.get('first_error')}): every fork copies their page "
                        f"tables")
    return "OK", line


# -- forkhost doctor ENTRY --------------------------------------------------

# What each cause the entry check names (fh_entry_check in csrc/lib/entry.c,
# forkhost/entry_check.py) means, and what fixes it: the one table.
ENTRY_CAUSES: dict[str, tuple[str, str]] = {
    "not-found": (
        "not found",
        "check the path (relative to this directory) or the module name; "
        "modules are looked for in this directory, PYTHONPATH, then the "
        "primary's sys.path"),
    "unreadable": (
        "cannot be read",
        "make it a readable regular file (check its permissions)"),
    "not-elf": (
        "not a native entry",
        "a ':symbol' needs a shared object or a PIE executable; a file that "
        "is not ELF runs as a Python script, without ':symbol'"),
    "wrong-elf": (
        "not an ELF object this process can load",
        "build it for this machine and word size, as a shared object "
        "(-fPIC -shared) or a PIE executable (-fPIC -pie)"),
    "not-pie": (
        "not a position-independent executable",
        "rebuild it with -fPIE -pie"),
    "static-pie": (
        "a static PIE, with a C library of its own",
        "link it dynamically: -fPIC -pie, without -static-pie"),
    "pie-tls": (
        "a PIE with thread-local variables, at local-exec offsets from the "
        "thread pointer that belong to the main program",
        "build the entry as a shared object (-fPIC -shared), whose __thread "
        "variables use the global-dynamic model; in an executable the linker "
        "makes every TLS access local-exec, whatever -ftls-model says"),
    "copy-relocation": (
        "copy relocations (-fPIE code) of variables a library loaded already "
        "owns, which forkhost binds to the program's copies on x86_64 only",
        "rebuild it with -fPIC -pie instead of -fPIE -pie"),
    "static-tls": (
        "no static TLS left for its initial-exec __thread variables",
        "compile it with -ftls-model=global-dynamic (drop "
        "-ftls-model=initial-exec and tls_model(\"initial-exec\") attributes), "
        "or load the library in the primary before the template forks "
        "(LD_PRELOAD=/path/to/lib.so forkhost primary ...), where static TLS "
        "is sized at start"),
    "missing-library": (
        "a library it needs is not found",
        "install the library where the loader looks, link the entry with "
        "-Wl,-rpath,DIR, or start the primary with LD_LIBRARY_PATH=DIR (a "
        "secondary's loader searches the primary's LD_LIBRARY_PATH; the "
        "client's is searched only for the entry's own libraries and theirs)"),
    "undefined-symbol": (
        "a symbol it uses is defined by no library loaded",
        "link the library that defines it (-lNAME; forkhost's own functions: "
        "$(forkhost config --libs))"),
    "load-error": (
        "the loader refused it",
        "see the loader's message"),
    "not-exported": (
        "the symbol is not exported by the entry",
        "export it: -rdynamic (-Wl,--export-dynamic) for a PIE, "
        "__attribute__((visibility(\"default\"))) under -fvisibility=hidden, "
        "extern \"C\" in C++; or fix the name"),
    "stripped": (
        "a stripped PIE whose symbol is not exported and cannot be read from "
        "its _start (only main can, from glibc's x86_64 _start)",
        "link it with -rdynamic (or -Wl,--export-dynamic-symbol=SYMBOL): "
        ".dynsym survives strip"),
    "python-entry": (
        "a Python entry, which the native check does not load",
        "check it with forkhost doctor ENTRY"),
    "refused": (
        "the primary refuses Python entries",
        "start a Python primary (forkhost primary) for Python entries"),
    "syntax-error": (
        "a syntax error",
        "fix the source at the line named"),
    "pyc-magic": (
        "a .pyc file of another Python",
        "compile it with the primary's Python (python -m py_compile FILE.py), "
        "or run the source"),
    "pyc-bad": (
        "a damaged .pyc file",
        "compile it again (python -m py_compile FILE.py), or run the source"),
    "package-no-main": (
        "a package without __main__.py",
        "add a __main__.py to the package, or name one of its modules: "
        "-m PACKAGE.MODULE"),
    "import-error": (
        "the module cannot be imported",
        "fix the error named (a parent package that raises, say)"),
    "no-attribute": (
        "the function is not in the module",
        "define it at the module's top level (def NAME(argv): ...), or fix "
        "the name"),
    "not-callable": (
        "the name is not callable",
        "point the entry at a function taking argv"),
    "cannot-run": (
        "it cannot be run",
        "see the message"),
}

# What forkhost-run exits with when it cannot run an entry (docs/cli.md).
_EXIT_MEANING = {EXIT_CANNOT_RUN: "the entry was found but cannot be loaded or run",
                 EXIT_NOT_FOUND: "the entry was not found"}
_VERDICT = "entry-check: "
# How long a check may take: the entry's ELF constructors run in it.
CHECK_TIMEOUT = 60.0


def doctor_entry(entry: str, prefix: str | None = None, runtime_dir=None,
                 module: bool = False) -> int:
    """``forkhost doctor [-m] ENTRY``: can ENTRY (anything forkhost-run
    takes; ``module``: the module of ``-m``) be loaded in a secondary of
    the prefix?  Prints what was checked where, then one verdict line, and
    for an entry that cannot be loaded the fix and the status forkhost-run
    would exit with.  Returns 0 when the entry loads, 1 when it does not
    or could not be checked.

    The check runs in a secondary of the prefix's primary, launched like
    any entry, with this process's environment and cwd; without a primary,
    in a forked child of this process, which the output says."""
    from . import _classify
    shown = f"-m {entry}" if module else entry
    try:
        p = runtime.paths(prefix, runtime_dir)
    except ForkhostError as err:
        print(f"FAIL  {err}")
        return 1
    try:
        target = _classify.classify(entry, module, None)
    except _classify.EntryError as err:
        # What the template answers before any secondary exists: its
        # classifier, on this cwd.
        print(f"INFO  classified {shown} here, as the template classifies a "
              f"launch's entry in its client's cwd: a launch ends there")
        cause = "not-found" if err.exit_code == EXIT_NOT_FOUND else "not-elf"
        return _verdict(shown, f"{_VERDICT}{cause}: {err}".encode(), err.exit_code)
    except ValueError as err:
        print(f"FAIL  {shown}: {err}")
        return 1
    cfg = runtime.read_config(p)
    live = cfg is not None and runtime.pid_alive(cfg.get("pid", 0))
    native = target.kind == _classify.NATIVE
    if native and not (live and "python" in cfg):
        # A primary that runs no Python (a C program serving entries) has
        # libforkhost among its program's own libraries: the check loads
        # as an entry there.  In a Python primary it must not, as loading
        # libforkhost as an entry would make its symbols global in the
        # secondary, and an entry using them unlinked would pass.
        from ._native import LIBRARY
        vehicle, args = f"{os.path.realpath(LIBRARY)}:fh_entry_check", [entry]
    else:
        vehicle, args = "forkhost.entry_check:main", (["-m"] if module else []) + [entry]
    try:
        out, code = _run_in_secondary(vehicle, args, prefix, runtime_dir)
    except NoPrimaryError as err:
        print(f"INFO  {err}: checking {shown} in a forked child of this process "
              f"instead, NOT under a primary's conditions (its loaded libraries, "
              f"static TLS left and library search path are this process's)")
        out, code = _run_in_child(entry, module)
        return _verdict(shown, out, code, primary=False)
    except RefusedError as err:
        if err.exit_code == EXIT_CANNOT_RUN and not native:
            # The check is a Python entry too: this primary refuses them.
            return _verdict(shown, f"{_VERDICT}refused: it refused the check, a "
                                   f"Python entry like this one: {err}".encode(),
                            err.exit_code)
        print(f"FAIL  {shown}: cannot check: the primary refused the check's "
              f"launch (exit {err.exit_code}): {err}")
        return 1
    except ForkhostError as err:
        print(f"FAIL  {shown}: cannot check: {err}")
        return 1
    owner = f"primary {cfg['pid']}" if live else "its primary"
    print(f"INFO  checked {shown} in a secondary of prefix {p.prefix!r} ({owner}): "
          f"the libraries, static TLS and library search path a launch would "
          f"find, with this environment and cwd")
    return _verdict(shown, out, code)


def _verdict(shown: str, out: bytes, code: int | None, primary: bool = True) -> int:
    """Print the check's verdict; 0 when the entry loads.  primary: the
    check ran under a primary's conditions."""
    lines = out.decode("utf-8", "backslashreplace").splitlines()
    verdicts = [i for i, line in enumerate(lines) if line.startswith(_VERDICT)]
    other = [line for i, line in enumerate(lines) if i not in verdicts and line.strip()]
    if other:
        shown_lines = other[:5] + ([f"... ({len(other) - 5} more lines)"]
                                   if len(other) > 5 else [])
        print("      output while loading: " + " | ".join(shown_lines))
    if code is None:
        print(f"FAIL  {shown}: the check did not finish within {CHECK_TIMEOUT:g}s "
              f"and was killed (its ELF constructors may wait for something)")
        return 1
    if code < 0:
        try:
            sig = signal.Signals(-code).name
        except ValueError:
            sig = f"signal {-code}"
        print(f"FAIL  {shown}: loading it killed the process with {sig} (in its "
              f"constructors or its libraries'): forkhost-run {shown} would die "
              f"by {sig} too" + ("" if primary else " under a primary with this "
                                 "process's conditions"))
        return 1
    if not verdicts:
        print(f"FAIL  {shown}: the check gave no verdict (exit {code})")
        return 1
    cause, _, message = lines[verdicts[-1]][len(_VERDICT):].partition(": ")
    if code == 0 and cause == "ok":
        print(f"OK    {shown}: loads: {message}")
        return 0
    if code == 0 and cause == "unverified":
        print(f"WARN  {shown}: found, not fully verified: {message}")
        return 0
    what, fix = ENTRY_CAUSES.get(cause, ("cannot be loaded", "see the message"))
    print(f"FAIL  {shown}: {what}: {message}")
    print(f"      fix: {fix}")
    meaning = _EXIT_MEANING.get(code)
    print(f"      forkhost-run {shown} would exit {code}"
          + ("" if primary else " under a primary with this process's conditions")
          + (f" ({meaning})" if meaning else ""))
    return 1


def _run_in_secondary(vehicle: str, args: list[str], prefix, runtime_dir
                      ) -> tuple[bytes, int | None]:
    """Launch the check, its stdout and stderr into one pipe; its output
    and exit status (None: killed after CHECK_TIMEOUT)."""
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        try:
            sec = client.launch(vehicle, args, prefix=prefix, runtime_dir=runtime_dir,
                                stdin=client.DEVNULL, stdout=w, stderr=w)
        finally:
            os.close(w)
        with sec:
            out, done = _collect(r, sec.fileno(), lambda: sec.poll() is not None)
            if not done:
                sec.kill()
            code = sec.wait()
        return out, code if done else None
    finally:
        os.close(r)


def _run_in_child(entry: str, module: bool) -> tuple[bytes, int | None]:
    """The same check in a forked child of this process."""
    r, w = os.pipe2(os.O_CLOEXEC)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 125
        try:
            os.close(r)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(w, 1)
            os.dup2(w, 2)
            from . import entry_check, _secondary as secondary
            # sys.path as a secondary's: the cwd, PYTHONPATH, then ours.
            secondary._set_path(os.getcwd(), os.environb)
            code = entry_check.main(["forkhost.entry_check:main",
                                     *(["-m"] if module else []), entry])
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    os.close(w)
    pidfd = os.pidfd_open(pid)
    try:
        out, done = _collect(r, pidfd, lambda: True)
        if not done:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(pidfd)
        os.close(r)
    return out, os.waitstatus_to_exitcode(status) if done else None


def _collect(r: int, done_fd: int, ended) -> tuple[bytes, bool]:
    """Read pipe r until the process behind done_fd has ended (done_fd is
    readable and ended() says so) and what it wrote is read, for at most
    CHECK_TIMEOUT.  (output, whether it ended in time)."""
    os.set_blocking(r, False)
    chunks: list[bytes] = []
    deadline = time.monotonic() + CHECK_TIMEOUT
    eof = finished = False
    while not finished:
        left = deadline - time.monotonic()
        if left <= 0:
            return b"".join(chunks), False
        ready, _, _ = select.select([done_fd] + ([] if eof else [r]), [], [], left)
        if r in ready:
            data = _read_pipe(r)
            eof = data == b""
            chunks.append(data or b"")
        if done_fd in ready:
            finished = ended()
    # Whatever it wrote is in the pipe by now; a process it started may
    # still hold the pipe open, so read what is there, not up to EOF.
    while not eof and (data := _read_pipe(r)):
        chunks.append(data)
    return b"".join(chunks), True


def _read_pipe(r: int) -> bytes | None:
    """What non-blocking pipe r has: b"" at EOF, None when nothing yet."""
    try:
        return os.read(r, 65536)
    except BlockingIOError:
        return None
