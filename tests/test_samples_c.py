"""DPDK's multi-process samples in C (apps/Makefile: simple_mp, symmetric_mp,
client_server_mp), built against the installed forkhost and run end to end
as DPDK's are: each program started directly, its role chosen by fh_init's
--proc-type, with ASLR on.

What the samples prove beyond DPDK's: a secondary started from a shell is
handed to the template (the pid it reports is not the one we started), and
function pointers stored in shared memory by the primary (the flow tables'
hash functions) are called in every other process, including one running
another executable (mp_client calls mp_server's function).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import psutil
import pytest

from fhtest import ROOT, LineReader, reap

APPS = ROOT / "apps"
PROGRAMS = ("simple_mp", "symmetric_mp", "mp_server", "mp_client")


@pytest.fixture(scope="module")
def bins(tmp_path_factory) -> dict[str, str]:
    """The four programs, built once with apps/Makefile (-Werror here)."""
    out = tmp_path_factory.mktemp("samples_c")
    subprocess.run(["make", "-s", "-C", str(APPS), f"OUT={out}", "CFLAGS=-O2 -g -Werror"],
                   check=True)
    return {name: str(out / name) for name in PROGRAMS}


@pytest.fixture(autouse=True)
def aslr_on():
    """The point of the samples is pointers under ASLR: it must be on."""
    assert Path("/proc/sys/kernel/randomize_va_space").read_text().strip() == "2"


class Proc:
    """A sample started directly, as from a shell, with its output read
    line by line."""

    def __init__(self, argv, stdin=subprocess.DEVNULL, cwd=None):
        self.p = subprocess.Popen(list(map(str, argv)), stdin=stdin,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  cwd=cwd)
        self.out = LineReader(self.p.stdout)
        self.lines: list[str] = []

    @property
    def pid(self) -> int:
        return self.p.pid

    def readline(self, timeout: float = 60) -> str:
        line = self.out.readline(timeout).decode()
        self.lines.append(line)
        return line

    def expect(self, pattern: str, timeout: float = 60) -> re.Match:
        """Read lines until one matches pattern (re.search); fail at EOF."""
        while True:
            line = self.readline(timeout)
            if not line:
                raise AssertionError(f"EOF before {pattern!r}: {self.lines} "
                                     f"{self.p.stderr.read().decode()}")
            m = re.search(pattern, line)
            if m:
                return m

    def send(self, text: str) -> None:
        self.p.stdin.write(text.encode())
        self.p.stdin.flush()

    def finish(self, timeout: float = 60) -> tuple[int, str, str]:
        """Wait for the exit; its status, the rest of stdout, all stderr."""
        if self.p.stdin:
            self.p.stdin.close()
        code = self.p.wait(timeout)
        rest = self.out.rest(timeout).decode()
        self.lines.extend(rest.splitlines(keepends=True))
        err = self.p.stderr.read().decode()
        self.p.stdout.close()
        self.p.stderr.close()
        return code, rest, err


def fh_opts(runtime_dir: str, prefix: str, proc_type: str) -> list[str]:
    return [f"--proc-type={proc_type}", f"--file-prefix={prefix}",
            f"--runtime-dir={runtime_dir}"]


def reap_all(*procs: Proc | None) -> None:
    reap(*(p.p for p in procs if p is not None))


def prefix_dir_gone(runtime_dir: str, prefix: str) -> bool:
    d = Path(runtime_dir) / prefix
    return not d.exists() or not any(d.iterdir())


def handed_over(proc: Proc, reported_pid: int) -> None:
    """proc, started from here, ran as a secondary the template forked:
    the pid the program reports is another process, not our child."""
    assert reported_pid != proc.pid
    try:
        assert psutil.Process(reported_pid).ppid() != proc.pid
    except psutil.NoSuchProcess:
        pass                      # already gone: it was not ours either


# -- simple_mp ---------------------------------------------------------------

READY = r"^simple_mp: (primary|secondary) ready \(pid (\d+), prefix '([^']+)'\)"


@pytest.mark.heavy
def test_simple_mp_primary_and_secondary_exchange_messages(bins, runtime_dir):
    prefix = f"smp{os.getpid()}"
    pri = sec = None
    try:
        pri = Proc([bins["simple_mp"], *fh_opts(runtime_dir, prefix, "primary")],
                   stdin=subprocess.PIPE)
        m = pri.expect(READY)
        assert (m[1], int(m[2]), m[3]) == ("primary", pri.pid, prefix)
        sec = Proc([bins["simple_mp"], *fh_opts(runtime_dir, prefix, "secondary")],
                   stdin=subprocess.PIPE)
        m = sec.expect(READY)
        assert (m[1], m[3]) == ("secondary", prefix)
        handed_over(sec, int(m[2]))

        pri.send("send hello_secondary\n")
        assert sec.readline() == "Received 'hello_secondary'\n"
        sec.send("send hello primary, with spaces\n")
        assert pri.readline() == "Received 'hello primary, with spaces'\n"
        # Four times half a ring (64 slots): the ring wraps, nothing is
        # dropped (a full ring would discard, as DPDK's does).
        for batch in range(4):
            pri.send("".join(f"send m{batch}.{i}\n" for i in range(32)))
            for i in range(32):
                assert sec.readline() == f"Received 'm{batch}.{i}'\n"
        pri.send("send " + "x" * 200 + "\n")     # a buffer holds 127 bytes
        assert sec.readline() == f"Received '{'x' * 127}'\n"
        sec.send("bogus\n")
        assert sec.readline() == "Bad arguments: 'bogus' (try help)\n"

        sec.send("quit\n")
        code, rest, err = sec.finish()
        assert (code, rest, err) == (0, "", "")
        pri.send("quit\n")
        code, rest, err = pri.finish()
        assert (code, rest, err) == (0, "", "")
        assert prefix_dir_gone(runtime_dir, prefix)
    finally:
        reap_all(sec, pri)


def test_simple_mp_auto_roles_and_the_secondary_ends_with_its_primary(bins, runtime_dir):
    prefix = f"sma{os.getpid()}"
    first = second = None
    try:
        first = Proc([bins["simple_mp"], *fh_opts(runtime_dir, prefix, "auto")],
                     stdin=subprocess.PIPE)
        assert first.expect(READY)[1] == "primary"
        second = Proc([bins["simple_mp"], *fh_opts(runtime_dir, prefix, "auto")],
                      stdin=subprocess.PIPE)
        m = second.expect(READY)
        assert m[1] == "secondary"
        handed_over(second, int(m[2]))
        second.send("send before the end\n")
        assert first.readline() == "Received 'before the end'\n"
        # End of input is quit; the primary's end stops the secondary.
        code, rest, err = first.finish()
        assert (code, rest, err) == (0, "", "")
        code, rest, err = second.finish()
        assert code == 0, err
        assert rest == "simple_mp: stopped by SIGTERM (the primary quit?)\n"
        assert err == ""
        assert prefix_dir_gone(runtime_dir, prefix)
    finally:
        reap_all(second, first)


def test_simple_mp_bad_arguments(bins, runtime_dir):
    prefix = f"smb{os.getpid()}"
    # fh_init's: no primary to hand over to; an unknown proc type.
    for opts, status in ((fh_opts(runtime_dir, prefix, "secondary"), 125),
                         (fh_opts(runtime_dir, prefix, "sideways"), 125)):
        r = subprocess.run([bins["simple_mp"], *opts], capture_output=True, text=True,
                           timeout=60, stdin=subprocess.DEVNULL)
        assert r.returncode == status, r
        assert r.stderr.count("\n") == 1 and r.stdout == "", r
    # The sample's own: it takes no arguments (it ran as the primary first).
    r = subprocess.run([bins["simple_mp"], *fh_opts(runtime_dir, prefix, "primary"),
                        "--", "extra"], capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 1, r
    assert r.stderr.startswith("simple_mp: unexpected argument 'extra'")
    assert r.stderr.count("\n") == 1


# -- symmetric_mp ------------------------------------------------------------

SMP_ROLE = (r"^symmetric_mp: proc (\d+) of (\d+): (primary|secondary) \(pid (\d+), "
            r"prefix '[^']+'\); the flow table hashes with the function in (.*) loaded "
            r"at (0x[0-9a-f]+); this process runs the copy loaded at (0x[0-9a-f]+)$")
SMP_SUMMARY = (r"^symmetric_mp: proc (\d+): generated (\d+), received (\d+) "
               r"\(expected (\d+)\), flow hits (\d+), misses (\d+), misrouted (\d+): "
               r"(\w+)$")


def run_symmetric(bins, runtime_dir, prefix, n, count):
    """n processes started at once with --proc-type=auto; their role lines
    and summaries, after checking every exit status."""
    procs = []
    try:
        for i in range(n):
            procs.append(Proc([bins["symmetric_mp"], *fh_opts(runtime_dir, prefix, "auto"),
                               "--", "-p", "3", "--num-procs", n, "--proc-id", i,
                               "--count", count]))
        results = [p.finish(120) for p in procs]
    finally:
        reap_all(*procs)
    roles, summaries = [], []
    for p, (code, _rest, err) in zip(procs, results):
        out = "".join(p.lines)
        assert code == 0, (out, err)
        assert err == "", err
        roles.append(re.search(SMP_ROLE, out, re.M))
        summaries.append(re.search(SMP_SUMMARY, out, re.M))
        assert roles[-1] and summaries[-1], out
        ports = re.findall(r"^Port (\d+): RX - (\d+), TX - (\d+), Drop - 0$", out, re.M)
        assert [pt for pt, _, _ in ports] == ["0", "1"], out
        # What came in on one port went out on the other.
        assert (ports[0][1], ports[1][1]) == (ports[1][2], ports[0][2]), out
    return procs, roles, summaries


def test_symmetric_mp_processes_start_together_one_primary(bins, runtime_dir):
    n, count = 3, 20000
    prefix = f"sym{os.getpid()}"
    procs, roles, summaries = run_symmetric(bins, runtime_dir, prefix, n, count)
    kinds = [r[3] for r in roles]
    assert kinds.count("primary") == 1, kinds
    for i, (p, r, s) in enumerate(zip(procs, roles, summaries)):
        assert (int(r[1]), int(r[2])) == (i, n)
        assert os.path.basename(r[5]) == "symmetric_mp", r[0]
        # Every process runs the primary's copy of the executable, which
        # holds the function.
        assert r[6] == r[7], r[0]
        if r[3] == "primary":
            assert int(r[4]) == p.pid           # the primary runs in place
        else:
            handed_over(p, int(r[4]))
        gen, rx, expected, hits, misses, misrouted = map(int, s.groups()[1:7])
        assert int(s[1]) == i and s[8] == "ok", s[0]
        assert gen == count
        assert rx == expected == hits and misses == 0 and misrouted == 0, s[0]
    received = [int(s[3]) for s in summaries]
    assert sum(received) == n * count
    assert sum(1 for r in received if r > 0) > 1, received   # the flows spread
    # The one hash function pointer, in the primary's executable at one
    # address in every process (every lookup above called it) ...
    bases = {r[6] for r in roles}
    assert len(bases) == 1, bases
    assert prefix_dir_gone(runtime_dir, prefix)

    # ... and elsewhere in another run: the executable does move (ASLR).
    _, roles2, _ = run_symmetric(bins, runtime_dir, prefix + "b", 2, 1000)
    assert {r[6] for r in roles2} != bases


def test_symmetric_mp_stats_on_sigint_and_one_process_per_id(bins, runtime_dir):
    """Two of three processes: they cannot finish (proc 2 never generates),
    so they stop at SIGINT, forwarded to the secondary by the process we
    started, and still print their statistics."""
    prefix = f"syi{os.getpid()}"
    args = ["--", "--num-procs", "3", "--count", "5000"]
    a = b = None
    try:
        a = Proc([bins["symmetric_mp"], *fh_opts(runtime_dir, prefix, "primary"),
                  *args, "--proc-id", "0"])
        assert a.expect(SMP_ROLE)[3] == "primary"
        b = Proc([bins["symmetric_mp"], *fh_opts(runtime_dir, prefix, "auto"),
                  *args, "--proc-id", "1"])
        m = b.expect(SMP_ROLE)
        assert m[3] == "secondary"
        dup = subprocess.run([bins["symmetric_mp"], *fh_opts(runtime_dir, prefix, "auto"),
                              *args, "--proc-id", "1"], capture_output=True, text=True,
                             timeout=60, stdin=subprocess.DEVNULL)
        assert dup.returncode == 1, dup
        assert dup.stderr == (f"symmetric_mp: proc-id 1 is already served by pid "
                              f"{m[4]}\n")
        wrong = subprocess.run([bins["symmetric_mp"], *fh_opts(runtime_dir, prefix, "auto"),
                                "--", "--num-procs", "4", "--proc-id", "2"],
                               capture_output=True, text=True, timeout=60,
                               stdin=subprocess.DEVNULL)
        assert wrong.returncode == 1
        assert wrong.stderr == ("symmetric_mp: --num-procs 4, but the primary runs 3 "
                                "processes\n")
        for p in (b, a):
            p.p.send_signal(signal.SIGINT)
            code, rest, err = p.finish()
            assert (code, err) == (0, ""), rest
            assert "\nExiting on signal 2\n" in rest, rest
            s = re.search(SMP_SUMMARY, rest, re.M)
            assert s and s[8] == "stopped" and int(s[6]) == int(s[7]) == 0, rest
        assert prefix_dir_gone(runtime_dir, prefix)
    finally:
        reap_all(b, a)


def test_symmetric_mp_usage(bins, runtime_dir):
    prefix = f"syu{os.getpid()}"
    for app_args, msg in ((["--proc-id", "0"], "missing --num-procs"),
                          (["--num-procs", "2"], "missing --proc-id"),
                          (["--num-procs", "2", "--proc-id", "0", "-p", "7"],
                           "the port mask must name an even number of ports"),
                          (["--num-procs", "x", "--proc-id", "0"], "invalid --num-procs")):
        r = subprocess.run([bins["symmetric_mp"], *fh_opts(runtime_dir, prefix, "primary"),
                            "--", *app_args], capture_output=True, text=True, timeout=60,
                           stdin=subprocess.DEVNULL)
        assert r.returncode == 1, r
        assert r.stderr.startswith(f"symmetric_mp: {msg}\nusage: "), r.stderr
        assert prefix_dir_gone(runtime_dir, prefix)


# -- client_server_mp --------------------------------------------------------

SERVER_READY = (r"^mp_server: primary \(pid (\d+), prefix '[^']+'\): (\d+) clients, "
                r"(\S+) distribution, (\d+) flows; flow hash function mp_flow_hash at "
                r"0x[0-9a-f]+ in (.*) loaded at (0x[0-9a-f]+)$")
CLIENT_READY = (r"^Client process (\d+) handling packets \(pid (\d+), prefix '[^']+'\); "
                r"flow hash function in (.*), loaded at (0x[0-9a-f]+)$")
CLIENT_DONE = (r"^Client (\d+): rx (\d+), tx port 0 (\d+) port 1 (\d+), flow hits (\d+), "
               r"misses (\d+), misrouted (\d+)$")
SERVER_CLIENT = (r"^Client +(\d+) - rx: +(\d+), rx_drop: +(\d+)\n +tx: +(\d+), tx_drop: +(\d+)"
                 r"\n +flow hits: (\d+), misses: (\d+), misrouted: (\d+)$")


def mappings(pid: int) -> set[tuple[int, str]]:
    """(start address, file) of each file mapping of a process."""
    found = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(None, 5)
        if len(fields) == 6:
            found.add((int(fields[0].split("-")[0], 16), fields[5].strip()))
    return found


@pytest.mark.parametrize("dist", ["rr", "hash"])
def test_client_server_mp(bins, runtime_dir, dist):
    """rr: the clients know their share and stop at --count; hash: the
    server says when the clients have everything, and they stop at SIGINT.
    Either way the server stops at SIGINT, and the counts add up."""
    nclients, count = 3, 30001
    prefix = f"cs{dist}{os.getpid()}"
    server, clients = None, []
    try:
        server = Proc([bins["mp_server"], *fh_opts(runtime_dir, prefix, "primary"), "--",
                       "-p", "3", "-n", nclients, "--count", count, "--dist", dist])
        m = server.expect(SERVER_READY)
        assert int(m[1]) == server.pid and int(m[2]) == nclients
        assert m[3] == ("hash" if dist == "hash" else "round-robin")
        for i in range(nclients):
            extra = ["--count", count // nclients + (i < count % nclients)] \
                if dist == "rr" else []
            clients.append(Proc([bins["mp_client"], *fh_opts(runtime_dir, prefix, "auto"),
                                 "--", "-n", i, *extra]))
        for i, c in enumerate(clients):
            cm = c.expect(CLIENT_READY)
            assert int(cm[1]) == i
            handed_over(c, int(cm[2]))
            # The function the client calls is the server's, in the
            # server's executable, which the client's process maps where
            # the server does.
            assert (cm[3], cm[4]) == (m[5], m[6]), (cm[0], m[0])
            assert os.path.basename(cm[3]) == "mp_server"
            if dist == "hash":
                assert (int(m[6], 16), bins["mp_server"]) in mappings(int(cm[2]))
        server.expect(rf"^mp_server: sent {count} packets$")
        if dist == "hash":
            server.expect(rf"^mp_server: the clients received all {count} packets$")
            for c in clients:
                c.p.send_signal(signal.SIGINT)
        done = {}
        for i, c in enumerate(clients):
            code, rest, err = c.finish()
            assert (code, err) == (0, ""), "".join(c.lines)
            d = re.search(CLIENT_DONE, rest, re.M)
            assert d and int(d[1]) == i, rest
            rx, tx0, tx1, hits, misses, misrouted = map(int, d.groups()[1:])
            assert rx == tx0 + tx1 == hits and misses == misrouted == 0, rest
            done[i] = rx
        if dist == "rr":
            assert [done[i] for i in range(nclients)] == [10001, 10000, 10000]
        else:
            assert sum(done.values()) == count
            assert sum(1 for v in done.values() if v > 0) > 1, done
        server.p.send_signal(signal.SIGINT)
        code, rest, err = server.finish()
        assert (code, err) == (0, ""), rest
        ports = re.findall(r"^Port (\d) - rx: +(\d+)\ttx: +(\d+)$", rest, re.M)
        assert [p for p, _, _ in ports] == ["0", "1"], rest
        assert sum(int(r) for _, r, _ in ports) == sum(int(t) for _, _, t in ports) == count
        table = re.findall(SERVER_CLIENT, rest, re.M)
        assert [int(t[0]) for t in table] == list(range(nclients)), rest
        for t in table:
            i, rx, drop, tx, txdrop, hits, misses, misrouted = map(int, t)
            assert rx == done[i] == tx == hits and drop == txdrop == misses == 0
        assert prefix_dir_gone(runtime_dir, prefix)
    finally:
        reap_all(*clients, server)


def test_client_server_mp_clients_end_with_the_server(bins, runtime_dir):
    """A client waiting for packets stops when the server stops (the
    prefix's end sends it SIGTERM): statistics, exit 0."""
    prefix = f"cse{os.getpid()}"
    server = client = None
    try:
        server = Proc([bins["mp_server"], *fh_opts(runtime_dir, prefix, "primary"), "--",
                       "-n", "1", "--count", "100"])
        server.expect(SERVER_READY)
        client = Proc([bins["mp_client"], *fh_opts(runtime_dir, prefix, "secondary"),
                       "--", "-n", "0"])
        client.expect(CLIENT_READY)
        server.expect(r"^mp_server: the clients received all 100 packets$")
        server.p.send_signal(signal.SIGINT)
        code, rest, err = server.finish()
        assert (code, err) == (0, ""), rest
        code, rest, err = client.finish()
        assert (code, err) == (0, ""), rest
        assert f"\nExiting on signal {int(signal.SIGTERM)}\n" in rest
        d = re.search(CLIENT_DONE, rest, re.M)
        assert d and int(d[2]) == 100, rest
        assert prefix_dir_gone(runtime_dir, prefix)
    finally:
        reap_all(client, server)


def test_mp_client_without_a_server(bins, runtime_dir):
    prefix = f"csn{os.getpid()}"
    # auto: it would be the primary, which a client cannot be.
    r = subprocess.run([bins["mp_client"], *fh_opts(runtime_dir, prefix, "auto"),
                        "--", "-n", "0"], capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 1, r
    assert r.stderr == (f"mp_client: no server is running (prefix '{prefix}'): "
                        f"start mp_server first\n")
    assert prefix_dir_gone(runtime_dir, prefix)
    # secondary: fh_init finds no primary.
    r = subprocess.run([bins["mp_client"], *fh_opts(runtime_dir, prefix, "secondary"),
                        "--", "-n", "0"], capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 125 and r.stderr.count("\n") == 1, r
