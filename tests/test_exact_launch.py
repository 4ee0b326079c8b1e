"""Issue 17, the launch: a program run through forkhost-run starts as the
same program run directly would, as far as signals, fds, the environment
and the process's own view go.

Every case runs the probe both ways and compares: directly (python
tests/fixtures/exact_probe.py, or native_entry.c built as a PIE) and
through forkhost-run (the same script, or the shared object's twin
entry), with a Python and a native entry.  What the runner inherited
(nohup, an ignored SIGINT) reaches both runs alike, so the comparisons
hold under any of them.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from fhtest import FIXTURES, RUNNER, forkhost_flags

PROBE = str(FIXTURES / "exact_probe.py")
KINDS = ["python", "native"]


@pytest.fixture
def primary(shared_primary):
    """These tests launch secondaries and leave nothing behind: one primary
    for the module (conftest.py, own_primary)."""
    return shared_primary


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    """native_entry.c as a shared object (the entries) and a PIE (run
    directly, and as an entry for the process-view cases)."""
    d = tmp_path_factory.mktemp("exact_native")
    flags = forkhost_flags()
    src = str(FIXTURES / "native_entry.c")
    so, pie = d / "entry.so", d / "entry_pie"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", so, src, *flags], check=True)
    subprocess.run(["cc", "-fPIE", "-pie", "-rdynamic", "-o", pie, src, *flags],
                   check=True)
    return {"so": str(so), "pie": str(pie)}


def commands(kind: str, native, what: str, *args: str) -> tuple[list, list]:
    """(direct argv, forkhost-run argv) of a probe."""
    if kind == "python":
        return ([sys.executable, PROBE, what, *args], [RUNNER, PROBE, what, *args])
    return ([native["pie"], what, *args], [RUNNER, f"{native['so']}:exact_{what}", *args])


def run_both(primary, kind, native, what, *args, wrap=(), extra_env=None,
             **kw) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    direct, through = commands(kind, native, what, *args)
    env = dict(primary.env, **(extra_env or {}))
    kw.setdefault("cwd", FIXTURES)
    out = []
    for argv in (direct, through):
        out.append(subprocess.run([*wrap, *map(str, argv)], env=env,
                                  capture_output=True, timeout=60, **kw))
    return out[0], out[1]


def same(a: subprocess.CompletedProcess, b: subprocess.CompletedProcess) -> str:
    assert (a.returncode, a.stdout, a.stderr) == (b.returncode, b.stdout, b.stderr), \
        f"directly: {a}\nforkhost-run: {b}"
    return a.stdout.decode()


def line(out: str, name: str) -> list[str]:
    for ln in out.splitlines():
        if ln.startswith(name + ":"):
            return ln[len(name) + 1:].split()
    raise AssertionError(f"no {name!r} line in {out!r}")


# -- signals --------------------------------------------------------------

RTMIN3 = int(signal.SIGRTMIN) + 3


def _ignore(*sigs):
    def pre():
        for s in sigs:
            signal.signal(s, signal.SIG_IGN)
    return pre


def _block(*sigs):
    return lambda: signal.pthread_sigmask(signal.SIG_BLOCK, sigs)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", ["as-is", "nohup", "trap-pipe", "background",
                                  "blocked"])
def test_ignored_signals_and_the_mask_are_kept(primary, native, kind, case):
    wrap, kw, want_ignored, want_blocked = (), {}, set(), set()
    if case == "nohup":
        wrap, want_ignored = ("nohup",), {signal.SIGHUP}
    elif case == "trap-pipe":
        wrap = ("sh", "-c", "trap '' PIPE; exec \"$@\"", "sh")
        want_ignored = {signal.SIGPIPE}
    elif case == "background":         # a non-interactive shell's `prog &`
        kw["preexec_fn"] = _ignore(signal.SIGINT, signal.SIGQUIT)
        want_ignored = {signal.SIGINT, signal.SIGQUIT}
    elif case == "blocked":
        kw["preexec_fn"] = _block(signal.SIGUSR1, RTMIN3, signal.SIGALRM)
        want_blocked = {signal.SIGUSR1, RTMIN3, signal.SIGALRM}
    d, f = run_both(primary, kind, native, "state", wrap=wrap, **kw)
    out = same(d, f)
    assert want_ignored <= {int(s) for s in line(out, "ignored")}
    assert want_blocked <= {int(s) for s in line(out, "blocked")}


def test_a_write_to_a_closed_pipe_fails_under_trap_pipe(primary, native):
    """Native only: python ignores SIGPIPE itself either way."""
    d, f = run_both(primary, "native", native, "epipe",
                    wrap=("sh", "-c", "trap '' PIPE; exec \"$@\"", "sh"))
    assert same(d, f) == "EPIPE\n"
    d, f = run_both(primary, "native", native, "epipe")   # subprocess: SIG_DFL
    same(d, f)
    assert d.returncode == -signal.SIGPIPE


def _caught(argv, env, sigs) -> tuple[list[str], int]:
    """Start argv, send each signal once its previous one was seen, then
    SIGTERM; the lines printed and the status."""
    p = subprocess.Popen(argv, env=env, cwd=FIXTURES, stdout=subprocess.PIPE,
                         stdin=subprocess.DEVNULL)
    try:
        lines = [p.stdout.readline().decode().strip()]
        for s in [*sigs, signal.SIGTERM]:
            os.kill(p.pid, s)
            lines.append(p.stdout.readline().decode().strip())
        return lines, p.wait(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()


@pytest.mark.parametrize("kind", KINDS)
def test_every_catchable_signal_reaches_the_programs_handler(primary, native, kind):
    sigs = [signal.SIGALRM, RTMIN3, signal.SIGXCPU, signal.SIGVTALRM,
            signal.SIGPWR, signal.SIGPROF, signal.SIGUSR1, signal.SIGURG,
            signal.SIGCHLD, signal.SIGPIPE, signal.SIGTTIN, signal.SIGTTOU,
            signal.SIGSYS, int(signal.SIGRTMAX)]
    nums = [str(int(s)) for s in [*sigs, signal.SIGTERM]]
    direct, through = commands(kind, native, "catch", *nums)
    got_d = _caught(direct, primary.env, sigs)
    got_f = _caught(through, primary.env, sigs)
    assert got_d == got_f
    assert got_d == (["ready", *(f"got {int(s)}" for s in [*sigs, signal.SIGTERM])], 0)


# -- fds ------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_the_clients_fds_arrive_at_their_numbers(primary, native, kind, tmp_path):
    f = tmp_path / "three"
    f.write_text("hello\n")
    direct, through = commands(kind, native, "state")
    outs = []
    for argv in (direct, through):
        cmd = " ".join(map(str, argv)) + f" 3<{f} 7< <(echo x)"
        outs.append(subprocess.run(["bash", "-c", cmd], env=primary.env, cwd=FIXTURES,
                                   capture_output=True, timeout=60))
    fds = line(same(*outs), "fds")
    assert "3=hello" in fds and "7=x" in fds
    assert len(fds) == len({x.split("=")[0] for x in fds})


def test_json_tool_reads_a_process_substitution(primary):
    outs = [subprocess.run(["bash", "-c", f"{run} -m json.tool <(echo '{{\"a\": 1}}')"],
                           env=primary.env, cwd=FIXTURES, capture_output=True,
                           timeout=60)
            for run in (sys.executable, RUNNER)]
    assert same(*outs) == '{\n    "a": 1\n}\n'


def test_fd_still_renumbers_and_sets_listen_fds(primary, native, tmp_path):
    f = tmp_path / "five"
    f.write_text("five\n")
    with open(f) as fh:
        r = subprocess.run([RUNNER, "--fd", str(fh.fileno()), PROBE, "state"],
                           env=primary.env, cwd=FIXTURES, capture_output=True,
                           timeout=60, pass_fds=[fh.fileno()],
                           preexec_fn=lambda: None)
    assert r.returncode == 0, r.stderr
    assert line(r.stdout.decode(), "fds") == ["3=five"]


def test_too_many_fds_is_one_clear_error(primary, tmp_path):
    import forkhost._protocol as protocol
    n = protocol.MAX_EXTRA_FDS + 1
    fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(n)]
    try:
        r = subprocess.run([RUNNER, PROBE, "state"], env=primary.env, cwd=FIXTURES,
                           capture_output=True, timeout=60, pass_fds=fds)
    finally:
        for fd in fds:
            os.close(fd)
    assert r.returncode == 125
    assert r.stderr.decode().startswith(
        f"forkhost-run: too many open file descriptors to pass on: more than "
        f"{protocol.MAX_EXTRA_FDS} besides 0, 1 and 2")
    assert r.stderr.count(b"\n") == 1


# -- environment ----------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("tz", ["XYZ-5:30", "EST5EDT,M3.2.0,M11.1.0", "UTC0"])
def test_the_clients_tz_applies(primary, native, kind, tz):
    d, f = run_both(primary, kind, native, "state", extra_env={"TZ": tz})
    out = same(d, f)
    if tz.startswith("XYZ"):
        assert line(out, "tz") == ["1970-01-01", "05:30", "XYZ"]


# execve with an environment no mapping can hold: read NUL-separated
# entries from the file in argv[1], exec argv[2:].
_EXECVE = textwrap.dedent("""\
    import ctypes, sys
    env = open(sys.argv[1], "rb").read().split(b"\\0")[:-1]
    args = [a.encode() for a in sys.argv[2:]]
    cargv = (ctypes.c_char_p * (len(args) + 1))(*args, None)
    cenv = (ctypes.c_char_p * (len(env) + 1))(*env, None)
    ctypes.CDLL(None).execve(args[0], cargv, cenv)
    sys.exit(99)
""")


@pytest.mark.parametrize("kind", KINDS)
def test_environment_order_and_entries_without_equals(primary, native, kind, tmp_path):
    env = [b"EXACT_Z=1", b"NOEQ_EXACT", b"EXACT_A=2", b"EXACT_Z=3", b"=EXACT_EMPTY"]
    env += [os.fsencode(f"{k}={v}") for k, v in primary.env.items()]
    envfile = tmp_path / "env"
    envfile.write_bytes(b"".join(e + b"\0" for e in env))
    direct, through = commands(kind, native, "state")
    outs = [subprocess.run([sys.executable, "-c", _EXECVE, str(envfile), *map(str, argv)],
                           cwd=FIXTURES, capture_output=True, timeout=60)
            for argv in (direct, through)]
    got = line(same(*outs), "env")
    if kind == "python":        # os.environ: in order, the first of a name
        assert got == ["EXACT_Z=1", "EXACT_A=2", "=EXACT_EMPTY"]
    else:                       # environ: as exec passed it
        assert got == ["EXACT_Z=1", "NOEQ_EXACT", "EXACT_A=2", "EXACT_Z=3",
                       "=EXACT_EMPTY"]


# -- the process's own view -----------------------------------------------

def _view(argv, env) -> tuple[list[str], dict, bytes, bytes]:
    """psutil's cmdline and environ of a running probe, and the raw files."""
    p = subprocess.Popen(argv, env=env, cwd=FIXTURES, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE)
    try:
        ready, _, _ = select.select([p.stdout], [], [], 60)
        assert ready
        pid = 0
        while not pid:
            text = p.stdout.readline().decode()
            assert text, "the probe ended early"
            if text.startswith("pid="):
                pid = int(text[4:])
        proc = psutil.Process(pid)
        view = (proc.cmdline(), proc.environ(),
                Path(f"/proc/{pid}/cmdline").read_bytes(),
                Path(f"/proc/{pid}/environ").read_bytes())
        p.stdin.close()
        assert p.wait(timeout=60) == 0
        return view
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()


def test_proc_cmdline_and_environ_of_a_native_program(primary, native):
    env = dict(primary.env, EXACT_ONE="1 2", EXACT_TWO="")
    argv = [native["pie"], "wait", "a b", "", "c"]
    direct = _view(argv, env)
    through = _view([RUNNER, *argv], env)
    assert through == direct
    assert direct[0] == argv


def test_proc_cmdline_and_environ_of_a_python_script(primary):
    """python's own argv[0] (the interpreter) comes first when it is run
    directly; through forkhost-run the script is the program."""
    env = dict(primary.env, EXACT_ONE="1")
    direct = _view([sys.executable, PROBE, "wait", "a b", ""], env)
    through = _view([RUNNER, PROBE, "wait", "a b", ""], env)
    assert through[0] == direct[0][1:] == [PROBE, "wait", "a b", ""]
    assert through[1] == direct[1]
    assert through[3] == direct[3]


# -- LD_LIBRARY_PATH ------------------------------------------------------

def test_a_native_entry_finds_its_library_on_the_clients_library_path(primary, tmp_path):
    """libexactdep.so needs libexactdep2.so; both only in a directory the
    client's LD_LIBRARY_PATH names, the entry and the program linked with
    no RUNPATH.  Each has a DT_SONAME, as installed libraries do: that is
    how the entry's DT_NEEDED matches the copy loaded by path."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (tmp_path / "dep2.c").write_text("int exact_dep2(void) { return 40; }\n")
    (tmp_path / "dep.c").write_text(
        "int exact_dep2(void);\nint exact_dep(void) { return exact_dep2() + 2; }\n")
    (tmp_path / "prog.c").write_text(textwrap.dedent("""\
        #include <stdio.h>
        int exact_dep(void);
        int main(int argc, char **argv) {
            (void)argc; (void)argv;
            printf("dep says %d\\n", exact_dep());
            return 0;
        }
        """))
    cc = ["cc", "-fPIC"]
    subprocess.run([*cc, "-shared", "-o", lib / "libexactdep2.so", tmp_path / "dep2.c",
                    "-Wl,-soname,libexactdep2.so"], check=True)
    subprocess.run([*cc, "-shared", "-o", lib / "libexactdep.so", tmp_path / "dep.c",
                    "-Wl,-soname,libexactdep.so", "-L", lib, "-lexactdep2"], check=True)
    link = ["-L", lib, "-lexactdep", f"-Wl,-rpath-link,{lib}"]
    subprocess.run([*cc, "-pie", "-o", tmp_path / "prog", tmp_path / "prog.c", *link],
                   check=True)
    subprocess.run([*cc, "-shared", "-o", tmp_path / "entry.so", tmp_path / "prog.c",
                    *link], check=True)
    env = dict(primary.env, LD_LIBRARY_PATH=f"/nonexistent::{lib}")
    outs = [subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, timeout=60)
            for argv in ([tmp_path / "prog"], [RUNNER, tmp_path / "entry.so"])]
    assert same(*outs) == "dep says 42\n"


# -- fh_init / forkhost.init(): the same client code ----------------------

def test_init_passes_inheritable_fds_and_not_close_on_exec_ones(runtime_dir, tmp_path):
    """The program that hands itself over (client.c in-process) has its own
    close-on-exec fd open; only what exec would keep reaches the secondary."""
    from fhtest import LineReader, reap
    app = str(FIXTURES / "exact_init.py")
    env = dict(os.environ, FORKHOST_RUNTIME_DIR=runtime_dir)
    env.pop("FORKHOST_PREFIX", None)
    prim = subprocess.Popen([sys.executable, app, "--file-prefix=ex"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            cwd=tmp_path)
    try:
        line = LineReader(prim.stdout).readline().decode()
        assert line == f"primary {prim.pid}\n", (line, prim.poll())
        r_, w_ = os.pipe()
        try:
            r = subprocess.run([sys.executable, app, "--file-prefix=ex"], env=env,
                               capture_output=True, timeout=60, cwd=tmp_path,
                               pass_fds=[r_])
        finally:
            os.close(r_)
            os.close(w_)
        assert (r.returncode, r.stdout.decode(), r.stderr) == \
            (0, f"secondary [{r_}]\n", b"")
        prim.send_signal(signal.SIGTERM)
        out, err = prim.communicate(timeout=30)
        assert prim.returncode == 0, err
    finally:
        reap(prim)


def test_argv0_of_a_program_named_with_its_symbol(primary, native, tmp_path):
    """`forkhost-run ./prog:main` runs ./prog, whose argv[0] a direct run
    makes "./prog": the ":main" is the entry's, not the program's."""
    direct = subprocess.run([native["pie"]], capture_output=True, cwd=tmp_path,
                            env=primary.env, timeout=60)
    through = subprocess.run([RUNNER, native["pie"] + ":main"], capture_output=True,
                             cwd=tmp_path, env=primary.env, timeout=60)
    assert direct.stdout.splitlines()[:2] == through.stdout.splitlines()[:2], \
        (direct.stdout, through.stdout, through.stderr)
    assert through.stdout.splitlines()[1] == f"argv[0]={native['pie']}".encode()


def test_ctypes_finds_a_library_on_the_clients_ld_library_path(primary, tmp_path):
    """ctypes.CDLL("libname.so") with the library only on the client's
    LD_LIBRARY_PATH loads as it does directly."""
    lib = tmp_path / "libfhx.so"
    src = tmp_path / "fhx.c"
    src.write_text("int fhx(void) { return 7; }\n")
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    script = tmp_path / "use_lib.py"
    script.write_text("import ctypes\nprint(ctypes.CDLL('libfhx.so').fhx())\n")
    env = dict(primary.env, LD_LIBRARY_PATH=str(tmp_path))
    direct = subprocess.run([sys.executable, str(script)], capture_output=True,
                            env=env, cwd=tmp_path, timeout=60)
    through = subprocess.run([RUNNER, str(script)], capture_output=True, env=env,
                             cwd=tmp_path, timeout=60)
    assert direct.stdout == b"7\n", direct.stderr
    assert (through.returncode, through.stdout, through.stderr) == \
        (direct.returncode, direct.stdout, direct.stderr)
