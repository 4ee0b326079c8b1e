"""The primary and its template as processes: their lifetime, their
prefix's runtime directory, the single-thread rule, --preload, --detach and
the commands around them.

Every primary here is a real `forkhost primary` (or a user program using
forkhost.Primary) on a private runtime directory, and every test stops what
it started, however it ends.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap

import psutil
import pytest

import forkhost
from fhtest import (FIXTURES, HERE, RUNNER, LineReader, PrimaryProc, ended, entry, reap,
                    secondary_pids, wait_until)

PY = sys.executable


def forkhost_cmd(env, *args, timeout=60, **kw) -> subprocess.CompletedProcess:
    """`python -m forkhost ARGS` (the same as the `forkhost` command).  Not
    from the checkout's root, whose forkhost/ would shadow the installed one."""
    kw.setdefault("cwd", FIXTURES)
    return subprocess.run([PY, "-m", "forkhost", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, **kw)


def prefix_env(runtime_dir, prefix, **extra) -> dict:
    return dict(os.environ, FORKHOST_RUNTIME_DIR=runtime_dir, FORKHOST_PREFIX=prefix,
                **extra)


def no_primary_line(runtime_dir, prefix) -> str:
    sock = os.path.join(runtime_dir, prefix, "template.sock")
    return f"forkhost-run: no forkhost primary for prefix '{prefix}' (looked for {sock})\n"


def stop_all(*primaries):
    """Stop every primary, even when an earlier one fails to."""
    results = []
    for p in primaries:
        if p is not None:
            results.append(p.stop())
    return results


# -- the primary's death ---------------------------------------------------

def test_sigkilled_primary_takes_its_template_and_socket_with_it(runtime_dir):
    """--on-primary-death stop: the old behaviour, asked for (the default,
    survive, is tests/test_adopt.py's)."""
    p = PrimaryProc(runtime_dir, args=("--on-primary-death", "stop"))
    client = None
    try:
        client = p.popen("fhfix:sleeper", cwd=FIXTURES, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
        assert LineReader(client.stdout).readline() == b"ready\n"
        sec = secondary_pids(p.prefix, runtime_dir)[0]
        p.proc.kill()
        wait_until(lambda: ended(p.template_pid), what="the template to die")
        wait_until(lambda: not os.path.exists(p.socket), what="the socket to be removed")
        # The template ended its secondary on the way out; the client
        # reports it like any death by signal.
        assert client.wait(30) == -signal.SIGTERM
        wait_until(lambda: ended(sec), what="the secondary to end")
        r = p.run("fhfix:exit_with", 0, cwd=FIXTURES)
        assert r.returncode == 125
        assert r.stderr.decode() == no_primary_line(runtime_dir, p.prefix)
        with pytest.raises(forkhost.NoPrimaryError) as info:
            forkhost.launch("fhfix:exit_with", ["0"], prefix=p.prefix,
                            runtime_dir=runtime_dir)
        assert info.value.exit_code == 125
        assert f"no forkhost primary for prefix '{p.prefix}'" in str(info.value)
    finally:
        reap(client)
        code, _, _ = p.stop()
    assert code == -signal.SIGKILL


def test_stale_runtime_directory_is_recovered(runtime_dir):
    """kill -9 of the primary and its template at once leaves the lock,
    config.json and template.sock behind; the next primary takes over."""
    old = PrimaryProc(runtime_dir)
    new = None
    try:
        # Stopped first, so that neither can clean up after the other.
        os.kill(old.template_pid, signal.SIGSTOP)
        os.kill(old.pid, signal.SIGSTOP)
        os.kill(old.template_pid, signal.SIGKILL)
        os.kill(old.pid, signal.SIGKILL)
        wait_until(lambda: ended(old.pid) and ended(old.template_pid),
                   what="the primary and the template to die")
        left = sorted(os.listdir(os.path.join(runtime_dir, old.prefix)))
        assert {"lock", "config.json", "template.sock"} <= set(left), left
        # A socket nobody listens on is the same as none.
        r = old.run("fhfix:exit_with", 0, cwd=FIXTURES)
        assert r.returncode == 125
        assert r.stderr.decode() == no_primary_line(runtime_dir, old.prefix)

        new = PrimaryProc(runtime_dir)
        assert new.pid != old.pid
        assert new.run("fhfix:exit_with", 5, cwd=FIXTURES).returncode == 5
    finally:
        results = stop_all(old, new)
    assert results[0][0] == -signal.SIGKILL
    code, _, err = results[1]
    assert code == 0, err
    assert f"recovered the runtime directory left by pid {old.pid}" in err


def test_primary_sigterm_ends_secondaries_and_their_clients_die_by_it(runtime_dir,
                                                                      native_so):
    p = PrimaryProc(runtime_dir)
    clients = []
    try:
        for name, kind in (("sleeper", "python"), ("sleeper", "native"),
                           ("ignore_term", "python"), ("ignore_term", "native")):
            c = p.popen(entry(kind, name, native_so), cwd=FIXTURES, stdout=subprocess.PIPE)
            clients.append(c)
            assert LineReader(c.stdout).readline() == b"ready\n"
        p.proc.send_signal(signal.SIGTERM)
        codes = [c.wait(30) for c in clients]
        # SIGTERM first; whoever ignores it gets SIGKILL after --grace.
        assert codes == [-signal.SIGTERM, -signal.SIGTERM,
                         -signal.SIGKILL, -signal.SIGKILL]
        p.proc.wait(30)      # (stop() would signal a primary still exiting)
    finally:
        reap(*clients)
        code, out, err = p.stop()
    assert code == 0, err
    assert "stopped" in out
    assert ended(p.template_pid)
    assert not os.path.exists(os.path.join(runtime_dir, p.prefix))


# -- prefixes --------------------------------------------------------------

def test_two_prefixes_side_by_side(runtime_dir):
    a = b = None
    try:
        a = PrimaryProc(runtime_dir, "alpha", args=["--arena-size", "8M"])
        b = PrimaryProc(runtime_dir, "beta", args=["--arena-size", "16M"])
        assert a.template_pid != b.template_pid and a.socket != b.socket
        for p, size in ((a, 8 << 20), (b, 16 << 20)):
            r = p.run("fhfix:whoami", cwd=FIXTURES)
            assert r.returncode == 0, r.stderr
            got = json.loads(r.stdout)
            assert got["ppid"] == p.template_pid
            assert got["arena_base"] == p.config["arena"]["base"]
            assert got["arena_size"] == size == p.config["arena"]["size"]
        r = forkhost_cmd(a.env, "ps", "--all", "--json")
        assert r.returncode == 0, r.stderr
        rows = {(row["prefix"], row["role"]): row["pid"] for row in json.loads(r.stdout)
                if row["role"] != "pool"}
        assert rows == {("alpha", "primary"): a.pid, ("alpha", "template"): a.template_pid,
                        ("beta", "primary"): b.pid, ("beta", "template"): b.template_pid}
    finally:
        results = stop_all(a, b)
    assert [code for code, _, _ in results] == [0, 0], results


def test_second_primary_on_a_live_prefix_is_refused(primary):
    r = forkhost_cmd(primary.env, "primary")
    assert r.returncode == 1
    assert (f"prefix '{primary.prefix}' is in use by the primary with pid "
            f"{primary.pid}") in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    with pytest.raises(forkhost.PrefixInUseError) as info:
        forkhost.Primary(primary.prefix, runtime_dir=primary.runtime_dir).start()
    assert info.value.pid == primary.pid
    # The live one is untouched.
    assert primary.run("fhfix:exit_with", 6, cwd=FIXTURES).returncode == 6


# -- one thread --------------------------------------------------------------

THREADED_PRIMARY = textwrap.dedent("""\
    import ctypes, os, sys, threading
    import forkhost

    runtime_dir, how = sys.argv[1], sys.argv[2]
    stop = threading.Event()
    if how == "python":
        worker = threading.Thread(target=stop.wait, name="busy-worker")
        worker.start()
    else:
        # A thread Python does not know about, as a C extension starts one.
        assert ctypes.CDLL(sys.argv[3]).start_c_thread() == 0
    try:
        forkhost.Primary("mt", runtime_dir=runtime_dir).start()
    except forkhost.NotSingleThreadedError as err:
        print(err, flush=True)
        code = 0
    else:
        print("the primary started", flush=True)
        code = 3
    if how == "python":
        stop.set()
        worker.join()
    print("left:", sorted(os.listdir(runtime_dir)), flush=True)
    sys.exit(code)
""")

C_THREAD = r"""
#define _GNU_SOURCE
#include <pthread.h>
#include <unistd.h>

static void *idle(void *arg)
{
    (void)arg;
    for (;;)
        pause();
    return NULL;
}

int start_c_thread(void)
{
    pthread_t t;

    if (pthread_create(&t, NULL, idle, NULL) != 0)
        return -1;
    return pthread_setname_np(t, "c-worker");
}
"""


@pytest.mark.parametrize("how", ["python", "c"])
def test_multithreaded_primary_is_refused_naming_the_threads(runtime_dir, tmp_path, how):
    script = tmp_path / "threaded_primary.py"
    script.write_text(THREADED_PRIMARY)
    args = [PY, str(script), runtime_dir, how]
    if how == "c":
        so = tmp_path / "cthread.so"
        src = tmp_path / "cthread.c"
        src.write_text(C_THREAD)
        subprocess.run(["cc", "-shared", "-fPIC", "-pthread", "-o", str(so), str(src)],
                       check=True)
        args.append(str(so))
    r = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    msg, left = r.stdout.splitlines()
    assert "the primary has 2 threads" in msg
    if how == "python":
        assert "busy-worker" in msg
    else:
        # Python sees one thread; the kernel's count is what caught it.
        assert "c-worker" in msg and "Python threads" not in msg
    assert left == "left: []"     # the prefix was released and cleaned


def test_preload_that_starts_a_thread_is_refused(runtime_dir, tmp_path):
    (tmp_path / "starts_thread.py").write_text(textwrap.dedent("""\
        import threading
        threading.Thread(target=threading.Event().wait, name="preload-worker",
                         daemon=True).start()
    """))
    r = forkhost_cmd(prefix_env(runtime_dir, "t", PYTHONPATH=str(tmp_path)),
                     "primary", "--preload", "starts_thread")
    assert r.returncode == 1
    assert "preload-worker" in r.stderr and "single-threaded" in r.stderr, r.stderr
    assert not os.path.exists(os.path.join(runtime_dir, "t"))


# -- preload -----------------------------------------------------------------

def test_failing_preload_stops_the_primary_with_its_traceback(runtime_dir, tmp_path):
    (tmp_path / "bad_preload.py").write_text(
        "def explode():\n    raise RuntimeError('preload exploded')\n\nexplode()\n")
    r = forkhost_cmd(prefix_env(runtime_dir, "t", PYTHONPATH=str(tmp_path)),
                     "primary", "--preload", "bad_preload")
    assert r.returncode == 1
    assert "Traceback (most recent call last)" in r.stderr
    assert "bad_preload.py" in r.stderr and "in explode" in r.stderr
    assert "RuntimeError: preload exploded" in r.stderr
    assert "ready" not in r.stdout
    assert not os.path.exists(os.path.join(runtime_dir, "t"))


def test_preloaded_module_is_already_imported_in_secondaries(runtime_dir, tmp_path):
    (tmp_path / "good_preload.py").write_text(
        "import os\nLOADED_IN_PID = os.getpid()\n")
    p = PrimaryProc(runtime_dir, args=["--preload", "good_preload"],
                    env=dict(os.environ, PYTHONPATH=str(tmp_path)))
    try:
        for _ in range(2):
            r = p.run("fhfix:preloaded", "good_preload", cwd=FIXTURES)
            assert r.returncode == 0, r.stderr
            got = json.loads(r.stdout)
            assert got["in_sys_modules"] is True
            assert got["loaded_in_pid"] == p.pid != got["pid"]
        assert p.config["preload"] == ["good_preload"]
    finally:
        code, _, err = p.stop()
    assert code == 0, err


# -- the commands ------------------------------------------------------------

_ATTACHER = """\
import sys, forkhost.shm
try:
    forkhost.shm.attach(sys.argv[1], sys.argv[2])
except forkhost.shm.AttachError as exc:   # ASLR put something in the way
    print(exc, file=sys.stderr)
    sys.exit(2)
print("ready", flush=True)
sys.stdin.read()
"""

_FORKER = """\
import os, sys
pid = os.fork()
if pid == 0:
    print(os.getpid(), flush=True)
    sys.stdin.read()
    os._exit(0)
os.waitpid(pid, 0)
"""


def test_ps_lists_the_processes_attached_to_the_arena(primary, tmp_path):
    """forkhost ps shows, besides the template's processes, every other
    process mapping the prefix's arena: one attached the classic way, and a
    child a secondary forked; not the rest of the machine's."""
    for _ in range(5):
        # Not from the checkout's root, whose forkhost/ would shadow the
        # installed one.
        attacher = subprocess.Popen([sys.executable, "-c", _ATTACHER, primary.prefix,
                                     primary.runtime_dir], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    cwd=tmp_path)
        line = LineReader(attacher.stdout).readline()
        if line == b"ready\n":
            break
        err = attacher.communicate(timeout=30)[1]
    assert line == b"ready\n", err
    (tmp_path / "forker.py").write_text(_FORKER)
    sec = primary.popen("forker.py", cwd=tmp_path, stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE)
    try:
        child = int(LineReader(sec.stdout).readline())
        r = forkhost_cmd(primary.env, "ps", "--json")
        assert r.returncode == 0, r.stderr
        rows = json.loads(r.stdout)
        roles = {row["pid"]: row["role"] for row in rows}
        assert sorted(pid for pid, role in roles.items() if role == "attached") == \
            sorted([attacher.pid, child])
        assert roles[primary.pid] == "primary" and roles[primary.template_pid] == "template"
        assert os.getpid() not in roles
        text = forkhost_cmd(primary.env, "ps").stdout
        assert re.search(rf"attached +{attacher.pid} ", text), text
    finally:
        for p in (attacher, sec):
            p.communicate(timeout=30)     # closes stdin: both end
    assert sec.returncode == 0 and attacher.returncode == 0


def test_detach_then_ps_doctor_and_stop(runtime_dir):
    env = prefix_env(runtime_dir, "d")
    client = None
    pid = tpid = 0
    try:
        r = forkhost_cmd(env, "primary", "--detach", "--grace", "2")
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("forkhost primary ready: prefix 'd'"), r.stdout
        cfg = json.loads((open(os.path.join(runtime_dir, "d", "config.json")).read()))
        pid, tpid = cfg["pid"], cfg["template_pid"]
        assert f"pid {pid}, template {tpid}" in r.stdout
        assert not ended(pid) and not ended(tpid)

        client = subprocess.Popen([RUNNER, "fhfix:sleeper"], env=env, cwd=FIXTURES,
                                  stdout=subprocess.PIPE)
        assert LineReader(client.stdout).readline() == b"ready\n"
        r = forkhost_cmd(env, "ps", "--json")
        assert r.returncode == 0, r.stderr
        rows = json.loads(r.stdout)
        assert [(row["role"], row["pid"]) for row in rows[:2]] == \
            [("primary", pid), ("template", tpid)]
        secs = [row for row in rows if row["role"] == "secondary"]
        assert len(secs) == 1 and secs[0]["client_pid"] == client.pid
        assert "fhfix:sleeper" in secs[0]["command"]
        # The pool (being refilled after the launch: one or two members).
        pool = [row for row in rows if row["role"] == "pool"]
        assert 1 <= len(pool) <= 2
        for row in pool:
            assert psutil.Process(row["pid"]).ppid() == tpid
            assert row["command"] == "forkhost pool [d]" and row["state"] in ("idle", "busy")
        r = forkhost_cmd(env, "ps")
        assert r.returncode == 0 and "template" in r.stdout and str(tpid) in r.stdout

        r = forkhost_cmd(env, "doctor")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "FAIL" not in r.stdout
        assert f"template {tpid}: 1 thread(s)" in r.stdout
        assert re.search(r"1 launched \([01] by pool members\), 0 refused", r.stdout)

        r = forkhost_cmd(env, "stop")
        assert r.returncode == 0, r.stderr
        assert f"stopped (pid {pid})" in r.stdout
        assert ended(pid)
        wait_until(lambda: ended(tpid), what="the template to end")
        assert client.wait(30) == -signal.SIGTERM
        assert sorted(os.listdir(runtime_dir)) == ["d.log"]   # the log stays
        r = forkhost_cmd(env, "stop")
        assert r.returncode == 1 and "no forkhost primary for prefix 'd'" in r.stderr
    finally:
        reap(client)
        for leftover in (pid, tpid):      # not our children: only if the test failed
            if leftover and not ended(leftover):
                os.kill(leftover, signal.SIGKILL)


USER_PROGRAM = textwrap.dedent("""\
    import json, os, sys, threading
    import forkhost

    runtime_dir, fixtures = sys.argv[1], sys.argv[2]
    with forkhost.Primary("ctx", runtime_dir=runtime_dir, arena_size="8M") as p:
        print(p.ready_line(), flush=True)
        # Once the template exists the primary may run threads of its own.
        stop = threading.Event()
        worker = threading.Thread(target=stop.wait, name="app-worker")
        worker.start()
        with forkhost.launch("fhfix:whoami", prefix="ctx", runtime_dir=runtime_dir,
                             cwd=fixtures) as sec:
            code = sec.wait(30)
        stop.set()
        worker.join()
        print(json.dumps({"code": code, "pid": p.pid, "template": p.template_pid,
                          "base": p.arena_base}), flush=True)
    print(json.dumps({"left": sorted(os.listdir(runtime_dir))}), flush=True)
""")


def test_primary_as_a_context_manager_in_a_user_program(runtime_dir, tmp_path):
    script = tmp_path / "app.py"
    script.write_text(USER_PROGRAM)
    r = subprocess.run([PY, str(script), runtime_dir, str(FIXTURES)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    ready, who, summary, left = r.stdout.splitlines()
    assert ready.startswith("forkhost primary ready: prefix 'ctx'")
    who, summary, left = json.loads(who), json.loads(summary), json.loads(left)
    assert summary["code"] == 0
    assert who["ppid"] == summary["template"]
    assert who["arena_base"] == summary["base"] and who["arena_size"] == 8 << 20
    assert left == {"left": []}
    assert ended(summary["template"])


def test_template_title_and_single_thread(primary):
    t = primary.template_pid
    with open(f"/proc/{t}/cmdline", "rb") as f:
        assert f.read().rstrip(b"\0 ") == b"forkhost template [t]"
    for _ in range(3):
        assert primary.run("fhfix:exit_with", 0, cwd=FIXTURES).returncode == 0
    assert os.listdir(f"/proc/{t}/task") == [str(t)]
    info = forkhost.info(primary.prefix, primary.runtime_dir)
    assert info["threads"] == 1 and info["template_pid"] == t
    assert info["primary_pid"] == primary.pid


def test_demo_calls_the_stored_pointer_from_python_and_c_secondaries(runtime_dir):
    """`forkhost demo`, the README's first command, end to end: both kinds
    of secondary see the arena at the primary's address and call the
    function pointer stored there, 40 calls in all, and the primary is
    gone afterwards."""
    r = subprocess.run([sys.executable, "-m", "forkhost", "demo", "--prefix", "dm",
                        "--runtime-dir", runtime_dir],
                       capture_output=True, text=True, timeout=120, cwd=str(HERE))
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    ready = next(l for l in lines if "forkhost primary ready" in l)
    base = ready.split(" at ")[1].split(",")[0]
    stored = next(l for l in lines if "stored fn at" in l)
    fn = stored.split("stored fn at ")[1].split()[0]
    for kind in ("Python", "C"):
        seen = next(l for l in lines if l.strip().startswith(f"{kind} secondary (pid"))
        assert f"arena at {base}," in seen, seen
        assert f"called fn at {fn} -> call #" in seen, seen
        assert '"hello from the primary"' in seen, seen
    assert "fn was called 40 times" in r.stdout
    assert "launch latency" in r.stdout and "/bin/true" in r.stdout
    assert r.stdout.rstrip().endswith("40 calls through one function pointer from 40 "
                                      "secondaries")
    assert not os.path.exists(os.path.join(runtime_dir, "dm")), os.listdir(runtime_dir)
