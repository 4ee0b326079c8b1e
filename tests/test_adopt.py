"""The primary's death is not the end (docs/reliability.md, "The primary's
death"): after kill -9 of the primary its template serves on, orphaned,
with its running secondaries; the next primary on the prefix adopts the
template, the pool, the secondaries and the arena at its address, objects
and contents included; `forkhost ps` and `forkhost stop` know an orphan.

Real processes throughout: a `forkhost primary` killed with SIGKILL, its
template left to init, a new primary (a program using forkhost.Primary, so
that it can look at the arena itself) that adopts it.  The killed primary's
stderr goes to a file: its orphaned template still holds it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

import forkhost
from fhtest import FIXTURES, RUNNER, LineReader, end_template, ended, reap, wait_until

PY = sys.executable

# A secondary that makes shared objects, then holds until its stdin ends
# and exits with 7 (its client must get 7, primary or none).
HOLDER = """\
import sys
from forkhost.shm.ring import Ring
from forkhost.shm.memzone import Memzone
r = Ring.create("adopt-ring", 16)
for v in (11, 22, 33):
    r.enqueue(v)
mz = Memzone.reserve("adopt-zone", 64)
mz.buffer()[:12] = b"kept through"
print("ready", flush=True)
data = sys.stdin.read()
print("read", len(data), flush=True)
sys.exit(7)
"""

# The new primary: adopts, checks the objects, reports the survivors'
# exits (forkhost.exit), stops when its stdin ends.
ADOPTER = """\
import json, sys, threading
import forkhost
from forkhost import ipc
from forkhost.ipc._messages import parse_exit_notice
from forkhost.shm.ring import Ring
from forkhost.shm.memzone import Memzone
said = threading.Lock()     # the IPC thread's lines and ours, whole


def say(line):
    with said:
        sys.stdout.write(line + "\\n")
        sys.stdout.flush()


ipc.register("forkhost.exit", lambda msg, peer: say(
    "exit %d %s" % parse_exit_notice(msg)))
p = forkhost.Primary(sys.argv[1], runtime_dir=sys.argv[2], ipc=True,
                     log_level="info", grace=2)
p.start()
r = Ring.lookup("adopt-ring")
items = [r.dequeue() for _ in range(3)]
r.enqueue(44)
zone = bytes(Memzone.lookup("adopt-zone").buffer()[:12])
say(json.dumps({"adopted": p.adopted, "items": items, "zone": zone.decode(),
                "base": p.arena_base, "template": p.template_pid, "pid": p.pid}))
for line in sys.stdin:                  # "reload": a new generation
    say(json.dumps(p.reload()))
p.stop()
say("stopped")
"""

# A secondary forked after the adoption: sees what the new primary wrote.
TAKER = """\
from forkhost.shm.ring import Ring
print(Ring.lookup("adopt-ring").dequeue())
"""


def start_primary(runtime_dir, prefix, err_path, *args):
    """`forkhost primary` with stderr in a file; (proc, config record)."""
    env = dict(os.environ, FORKHOST_RUNTIME_DIR=runtime_dir, FORKHOST_PREFIX=prefix)
    with open(err_path, "wb") as err:
        proc = subprocess.Popen([PY, "-m", "forkhost", "primary", "--grace", "2",
                                 *args], stdout=subprocess.PIPE, stderr=err, env=env,
                                cwd=str(FIXTURES))
    line = LineReader(proc.stdout).readline()
    assert b"ready" in line, open(err_path).read()
    cfg = forkhost._runtime.read_config(forkhost._runtime.paths(prefix, runtime_dir))
    return proc, cfg, env


def forkhost_cmd(env, *args):
    return subprocess.run([PY, "-m", "forkhost", *args], env=env, capture_output=True,
                          text=True, timeout=60, cwd=str(FIXTURES))


def orphaned(prefix, runtime_dir) -> bool:
    return forkhost.info(prefix, runtime_dir).get("orphaned") is True


def test_killed_primary_survivors_and_adoption(runtime_dir, tmp_path):
    prefix = "ad"
    (tmp_path / "holder.py").write_text(HOLDER)
    (tmp_path / "adopter.py").write_text(ADOPTER)
    (tmp_path / "taker.py").write_text(TAKER)
    # A 256 MiB arena range: the adopter (a program of its own, which does
    # not run itself again as `forkhost primary` does) finds it free unless
    # a library of its landed there, rarer than in the default 16 GiB.
    old, cfg, env = start_primary(runtime_dir, prefix, tmp_path / "old.err",
                                  "--pool", "1", "--log-level", "info",
                                  "--arena-max", "256M")
    holder = adopter = None
    templates = [cfg["template_pid"]]
    try:
        holder = subprocess.Popen([RUNNER, str(tmp_path / "holder.py")], env=env,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
        out = LineReader(holder.stdout)
        assert out.readline() == b"ready\n"
        sec = forkhost.info(prefix, runtime_dir)["secondaries"][0]["pid"]

        old.kill()
        assert old.wait(30) == -signal.SIGKILL
        wait_until(lambda: orphaned(prefix, runtime_dir), what="the template to "
                   "hear of its primary's death")
        assert not ended(sec) and not ended(cfg["template_pid"])
        # During the gap: launches are served, ps shows the orphan and the
        # survivor.
        r = subprocess.run([RUNNER, "fhfix:exit_with", "5"], env=env, cwd=str(FIXTURES),
                           capture_output=True, timeout=60)
        assert (r.returncode, r.stderr) == (5, b"")
        wait_until(lambda: forkhost.info(prefix, runtime_dir)["exits"]["status"].get("5"),
                   what="the template to count its exit")
        ps = json.loads(forkhost_cmd(env, "ps", "--json").stdout)
        roles = {(row["role"], row["pid"], row["state"]) for row in ps}
        assert ("template", cfg["template_pid"], "orphan") in roles, ps
        assert ("secondary", sec, None) in roles, ps
        assert "primary" not in {row["role"] for row in ps}, ps
        assert "orphan" in (tmp_path / "old.err").read_text()   # the template's line

        # A new primary whose address space has the arena's range taken
        # says which mapping is in the way and leaves the orphan as it was.
        base, size = cfg["arena"]["base"], cfg["arena"]["max"]
        squat = textwrap.dedent(f"""\
            import mmap, ctypes, sys, forkhost
            libc = ctypes.CDLL(None, use_errno=True)
            libc.mmap.restype = ctypes.c_void_p
            libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                                  ctypes.c_int, ctypes.c_int, ctypes.c_long]
            got = libc.mmap({base} + 4096, 4096, mmap.PROT_READ,
                            mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x100000, -1, 0)
            assert got == {base} + 4096, got
            try:
                forkhost.Primary({prefix!r}, runtime_dir={runtime_dir!r}).start()
            except forkhost.ForkhostError as err:
                print(err)
                sys.exit(3)
            """)
        r = subprocess.run([PY, "-c", squat], capture_output=True, text=True,
                           timeout=60, cwd=str(FIXTURES))
        assert r.returncode == 3, r.stderr
        assert (f"cannot adopt the arena of prefix '{prefix}' (pid "
                f"{cfg['template_pid']}'s template) at 0x{base:x}: address range "
                f"0x{base:x}-0x{base + size:x} is taken by: {base + 4096:x}-"
                f"{base + 8192:x} r--p") in r.stdout, r.stdout
        assert orphaned(prefix, runtime_dir)

        # The adoption.
        adopter = subprocess.Popen([PY, str(tmp_path / "adopter.py"), prefix,
                                    runtime_dir], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   cwd=str(FIXTURES))
        aout = LineReader(adopter.stdout)
        # The exit of the gap's launch (exit_with 5), kept by the orphan, is
        # reported to the adopter, maybe before it prints its findings.
        exits = []
        while (line := aout.readline()).startswith(b"exit "):
            exits.append(line)
        assert line.startswith(b"{"), (line, adopter.poll() is not None and
                                       adopter.stderr.read())
        got = json.loads(line)
        if not exits:
            exits.append(aout.readline())
        assert [e.split()[2] for e in exits] == [b"5"], exits
        assert got["adopted"] == {"template_pid": cfg["template_pid"],
                                  "old_primary_pid": cfg["pid"], "running": 1}
        assert got["items"] == [11, 22, 33]
        assert got["zone"] == "kept through"
        assert got["base"] == base and got["template"] == cfg["template_pid"]
        inf = forkhost.info(prefix, runtime_dir)
        assert (inf["orphaned"], inf["primary_pid"]) == (False, got["pid"])
        new_cfg = forkhost._runtime.read_config(forkhost._runtime.paths(prefix,
                                                                         runtime_dir))
        assert (new_cfg["pid"], new_cfg["template_pid"], new_cfg["arena"]["base"],
                new_cfg["adopted_from"]) == (got["pid"], cfg["template_pid"], base,
                                             cfg["pid"])
        ps = json.loads(forkhost_cmd(env, "ps", "--json").stdout)
        roles = {(row["role"], row["pid"]) for row in ps}
        assert {("primary", got["pid"]), ("template", cfg["template_pid"]),
                ("secondary", sec)} <= roles, ps
        # The adopter reloads: the generation it forks watches it, and a
        # launch on it sees what the new primary wrote.
        adopter.stdin.write(b"reload\n")
        adopter.stdin.flush()
        gen = json.loads(aout.readline())
        templates.append(gen["template_pid"])
        assert (gen["generation"], gen["old_template_pid"]) == (2, cfg["template_pid"])
        assert forkhost.info(prefix, runtime_dir)["primary_pid"] == got["pid"]
        r = subprocess.run([RUNNER, str(tmp_path / "taker.py")], env=env,
                           capture_output=True, timeout=60)
        assert (r.returncode, r.stdout, r.stderr) == (0, b"44\n", b"")
        word, _, code = aout.readline().split()      # its exit, reported
        assert (word, code) == (b"exit", b"0")

        # The survivor finishes normally: its client gets its status, the
        # new primary its exit.
        holder.stdin.write(b"abc")
        holder.stdin.close()
        assert holder.wait(30) == 7
        assert out.readline() == b"read 3\n"
        assert holder.stderr.read() == b""
        assert aout.readline() == f"exit {sec} 7\n".encode()

        adopter.stdin.close()
        assert adopter.wait(30) == 0
        assert aout.readline() == b"stopped\n"
        err = adopter.stderr.read().decode()
        assert (f"adopt pid={got['pid']} template_pid={cfg['template_pid']} "
                f"old_primary_pid={cfg['pid']} running=1 arena_base={base}") in err
        wait_until(lambda: ended(cfg["template_pid"]) and ended(gen["template_pid"]),
                   what="both generations to end")
        assert not os.path.exists(os.path.join(runtime_dir, prefix))
    finally:
        for proc in (holder, adopter):
            if proc is not None and proc.stdin is not None and not proc.stdin.closed:
                proc.stdin.close()
        reap(holder, adopter, old)
        old.stdout.close()
        for pid in templates:
            end_template(pid)


def test_cli_primary_adopts_and_stop_ends_an_orphan(runtime_dir, tmp_path):
    """`forkhost primary` on the prefix adopts (one line on stderr); killed
    in its turn, it leaves an orphan again, which `forkhost stop` ends
    (its secondary by SIGTERM), leaving no file of the prefix."""
    prefix = "ad2"
    old, cfg, env = start_primary(runtime_dir, prefix, tmp_path / "old.err",
                                  "--pool", "0")
    new = client = None
    try:
        client = subprocess.Popen([RUNNER, "fhfix:sleeper"], env=env, cwd=str(FIXTURES),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert LineReader(client.stdout).readline() == b"ready\n"
        sec = forkhost.info(prefix, runtime_dir)["secondaries"][0]["pid"]
        old.kill()
        old.wait(30)
        wait_until(lambda: orphaned(prefix, runtime_dir), what="the orphan")
        new, new_cfg, _ = start_primary(runtime_dir, prefix, tmp_path / "new.err")
        assert new_cfg["template_pid"] == cfg["template_pid"]
        assert new_cfg["arena"]["base"] == cfg["arena"]["base"]
        new.kill()
        new.wait(30)
        assert (tmp_path / "new.err").read_text() == (
            f"forkhost primary: adopted the template (pid {cfg['template_pid']}), "
            f"its 1 running secondary and the arena at 0x{cfg['arena']['base']:x} "
            f"of the dead primary (pid {cfg['pid']})\n")
        wait_until(lambda: orphaned(prefix, runtime_dir), what="the orphan again")
        r = forkhost_cmd(env, "stop")
        assert (r.returncode, r.stderr) == (0, ""), r.stderr
        assert r.stdout == (f"forkhost stop: prefix '{prefix}' stopped (its orphaned "
                            f"template, pid {cfg['template_pid']}; its primary, pid "
                            f"{new_cfg['pid']}, had died)\n")
        assert client.wait(30) == -signal.SIGTERM
        assert client.stderr.read() == b""
        wait_until(lambda: ended(sec) and ended(cfg["template_pid"]),
                   what="the template and its secondary to end")
        assert not os.path.exists(os.path.join(runtime_dir, prefix))
        r = forkhost_cmd(env, "stop")
        assert r.returncode == 1 and "no forkhost primary" in r.stderr
    finally:
        reap(client, old, new)
        for p in (old, new):
            if p is not None:
                p.stdout.close()
        end_template(cfg["template_pid"])


def test_a_dead_supervisors_workers_end_with_it(runtime_dir, tmp_path):
    """A supervised worker's client is its primary: kill -9 of the primary
    ends the worker too (SIGTERM after the grace), and `forkhost ps` of the
    orphan shows no workers table from the dead primary's record."""
    prefix = "ad3"
    old, cfg, env = start_primary(runtime_dir, prefix, tmp_path / "old.err",
                                  "--pool", "0", "--worker", "w=fhfix:sleeper")
    try:
        paths = forkhost._runtime.paths(prefix, runtime_dir)

        def worker_pid():
            cfg = forkhost._runtime.read_config(paths)
            return ((cfg.get("supervisor") or {}).get("workers") or [{}])[0].get("pid")
        wait_until(worker_pid, what="the worker in config.json")
        worker = worker_pid()
        assert "workers of" in forkhost_cmd(env, "ps").stdout
        old.kill()
        old.wait(30)
        wait_until(lambda: orphaned(prefix, runtime_dir) and ended(worker),
                   what="the orphan, its worker ended")
        ps = forkhost_cmd(env, "ps")
        assert ps.returncode == 0, ps.stderr
        assert "workers of" not in ps.stdout and f" {cfg['template_pid']} " in ps.stdout
        assert " orphan " in ps.stdout
        r = forkhost_cmd(env, "stop")
        assert r.returncode == 0, r.stderr
    finally:
        reap(old)
        old.stdout.close()
        end_template(cfg["template_pid"])


class ReloadedThenKilled:
    """A `forkhost primary` (pool 0) whose client's secondary (fhfix:cat,
    until its stdin ends) runs across a reload, then kill -9 of the
    primary: the old generation retiring with that secondary, the new one
    serving, both orphaned.  templates: [old, new]."""

    def __init__(self, runtime_dir, prefix, tmp_path):
        self.prefix, self.runtime_dir = prefix, runtime_dir
        self.old, self.cfg, self.env = start_primary(runtime_dir, prefix,
                                                     tmp_path / "old.err", "--pool", "0")
        self.templates = [self.cfg["template_pid"]]
        self.paths = forkhost._runtime.paths(prefix, runtime_dir)
        self.client = subprocess.Popen([RUNNER, "fhfix:cat"], env=self.env,
                                       cwd=str(FIXTURES), stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def reload_and_kill(self):
        wait_until(lambda: forkhost.info(self.prefix, self.runtime_dir)["secondaries"],
                   what="the secondary")
        r = forkhost_cmd(self.env, "reload")
        assert r.returncode == 0, r.stderr
        self.templates.append(forkhost._runtime.read_config(self.paths)["template_pid"])
        self.old.kill()
        self.old.wait(30)
        wait_until(lambda: orphaned(self.prefix, self.runtime_dir), what="the orphan")

    def close(self, *more):
        if self.client.stdin and not self.client.stdin.closed:
            self.client.stdin.close()
        reap(self.client, self.old, *more)
        for p in (self.old, *more):
            if p is not None:
                p.stdout.close()
        for t in self.templates:
            end_template(t)


@pytest.mark.parametrize("recorded", [True, False], ids=["recorded", "unrecorded"])
def test_a_retiring_generation_is_listed_and_ended_by_the_adopter(runtime_dir, tmp_path,
                                                                  recorded):
    """reload, then kill -9 of the primary: the old generation, retiring,
    serves its secondary on; the adopter lists it (ps: retiring) until its
    last secondary ends, whose client gets its status.  Unrecorded: the
    primary died before config.json named the new generation (it still
    names the old one): the adopter adopts the one serving template.sock."""
    k = ReloadedThenKilled(runtime_dir, "ad4", tmp_path)
    new = None
    try:
        k.reload_and_kill()
        old_template, new_template = k.templates
        if not recorded:
            dead = forkhost._runtime.read_config(k.paths)
            forkhost._runtime.write_config(k.paths, dict(dead, template_pid=old_template,
                                                         generation=1, retiring=[]))
        new, new_cfg, _ = start_primary(runtime_dir, "ad4", tmp_path / "new.err")
        assert new_cfg["retiring"] == [old_template]
        assert (new_cfg["template_pid"], new_cfg["generation"]) == (new_template, 2)
        rows = json.loads(forkhost_cmd(k.env, "ps", "--json").stdout)
        retiring = [(r["role"], r["pid"]) for r in rows if r["state"] == "retiring"]
        assert retiring[0] == ("template", old_template), rows
        assert [role for role, _ in retiring[1:]] == ["secondary"], rows
        out, err = k.client.communicate(b"bye\n", timeout=30)
        assert (k.client.returncode, out, err) == (0, b"bye\n", b"")
        wait_until(lambda: not forkhost._runtime.read_config(k.paths)["retiring"],
                   what="the adopter to forget the retired generation")
        assert ended(old_template)
        r = forkhost_cmd(k.env, "stop")
        assert r.returncode == 0, r.stderr
    finally:
        k.close(new)


def test_stop_of_an_orphan_ends_its_retiring_generation_too(runtime_dir, tmp_path):
    k = ReloadedThenKilled(runtime_dir, "ad5", tmp_path)
    try:
        k.reload_and_kill()
        r = forkhost_cmd(k.env, "stop")
        assert r.returncode == 0, r.stderr
        assert k.client.wait(30) == -signal.SIGTERM      # the retiring one's secondary
        wait_until(lambda: all(ended(t) for t in k.templates), what="both generations")
        assert not os.path.exists(os.path.join(runtime_dir, "ad5"))
    finally:
        k.close()
