"""``forkhost verify``, ``forkhost maps`` and ``forkhost ptr``: the layout
tools (forkhost/_layout.py has the model; docs/aslr.md the guide).

Exit statuses: 0 the layouts hold (verify: every secondary holds the
template's mappings; maps: every file and shared mapping at the same
address in both; ptr: the address is the same object in every process
that was asked about); 1 they do not; 2 bad input (no such process, no
primary, a malformed address)."""

from __future__ import annotations

import json
import sys

from . import _client as client, _layout as layout, _runtime as runtime
from ._errors import ForkhostError

EXIT_DIFFERS = 1
EXIT_USAGE = 2


class UsageError(ForkhostError):
    exit_code = EXIT_USAGE


def _prefix_procs(a) -> tuple[runtime.PrefixPaths, dict, dict]:
    """The prefix's config and the template's INFO; UsageError when no
    primary runs."""
    p = runtime.paths(a.prefix, a.runtime_dir)
    cfg = runtime.read_config(p)
    if cfg is None or not runtime.pid_alive(cfg.get("pid", 0)):
        raise UsageError(f"no forkhost primary for prefix {p.prefix!r} "
                         f"(looked for {p.config})")
    return p, cfg, client.info(p.prefix, p.root)


def _pid(text: str) -> int:
    try:
        pid = int(text)
    except ValueError:
        raise UsageError(f"not a process id: {text!r}") from None
    if pid <= 0:
        raise UsageError(f"not a process id: {text!r}")
    return pid


def _maps(pid: int) -> list[layout.Mapping]:
    try:
        return layout.read_maps(pid)
    except ForkhostError as err:
        raise UsageError(str(err)) from None


# -- verify ---------------------------------------------------------------

def cmd_verify(a) -> int:
    p, cfg, info = _prefix_procs(a)
    secondaries = {s["pid"]: s for s in info["secondaries"]}
    if a.all:
        pids = sorted(secondaries)
    elif a.pids:
        pids = [_pid(t) for t in a.pids]
    else:
        raise UsageError("name secondaries by pid, or --all for every one")
    template_pid = cfg["template_pid"]
    template = _maps(template_pid)
    skip = layout.not_inherited(template_pid)
    results = []
    for pid in pids:
        try:
            maps = layout.read_maps(pid)
        except ForkhostError as err:
            # Ended meanwhile: --all lists what INFO listed a moment ago.
            if a.all:
                continue
            raise UsageError(str(err)) from None
        v = layout.verify(template, maps, pid, skip)
        results.append((v, pid in secondaries))
    if a.json:
        print(json.dumps([{"pid": v.pid, "secondary": sec, "holds": v.holds(a.strict),
                           "checked": v.checked, "own": v.own,
                           "differences": [d.__dict__ for d in v.differences]}
                          for v, sec in results], indent=2))
    else:
        if not results:
            print(f"forkhost verify: prefix {p.prefix!r}: no secondary running")
        for v, sec in results:
            _print_verdict(v, sec, a.strict, p.prefix, template_pid)
    return 0 if all(v.holds(a.strict) for v, _ in results) else EXIT_DIFFERS


def _print_verdict(v: layout.Verdict, secondary: bool, strict: bool, prefix: str,
                   template_pid: int) -> None:
    cmd, _ = runtime.proc_line(v.pid)
    ok = v.holds(strict)
    note = "" if secondary else f" (not a running secondary of prefix {prefix!r})"
    fails = [d for d in v.differences if d.fails or (strict and d.what == "private")]
    if ok:
        print(f"OK   {v.pid} {cmd}{note}: all {v.checked} mappings of template "
              f"{template_pid} at the same addresses with the same backing; "
              f"{v.own} mapping(s) of its own")
    else:
        print(f"FAIL {v.pid} {cmd}{note}: {len(fails)} of the template's "
              f"{v.checked} mappings differ")
    for d in v.differences:
        if d.fails or d.what == "protection" or strict:
            print(f"     {d.line()}")
    private = [d for d in v.differences if d.what == "private"]
    if private and not strict:
        size = sum(d.end - d.start for d in private)
        print(f"     ({len(private)} range(s), {size >> 10} KiB, of inherited private "
              f"memory freed or replaced by the program: --strict lists them)")


# -- maps -----------------------------------------------------------------

def _forked(pid: int) -> list[layout.Mapping]:
    """pid's mappings but those no fork copies (MADV_DONTFORK: the
    template's per-launch tables and its launch counters), which no child
    can have."""
    maps = _maps(pid)
    try:
        skip = layout.not_inherited(pid)
    except ForkhostError:
        return maps
    return [m for m in maps if (m.start, m.end) not in skip]


def cmd_maps(a) -> int:
    pa, pb = _pid(a.a), _pid(a.b)
    ma, mb = _forked(pa), _forked(pb)
    groups = layout.compare(ma, mb)
    differs = any(g.status not in ("shared", "private") and
                  any(m.backed or m.kernel for m in g.a + g.b) for g in groups)
    if a.json:
        print(json.dumps({"a": pa, "b": pb, "groups": [
            {"module": g.module, "status": g.status,
             "a": [m.describe() for m in g.a], "b": [m.describe() for m in g.b]}
            for g in groups]}, indent=2))
        return EXIT_DIFFERS if differs else 0
    print(f"A = {pa} {runtime.proc_line(pa)[0]}")
    print(f"B = {pb} {runtime.proc_line(pb)[0]}")
    w = min(max((len(g.module) for g in groups), default=10), 60)
    print(f"{'MODULE':<{w}}  {'A':>26}  {'B':>26}  STATUS")
    counts: dict[str, int] = {}
    for g in groups:
        counts[g.status] = counts.get(g.status, 0) + 1
        name = g.module if len(g.module) <= w else "..." + g.module[-(w - 3):]
        print(f"{name:<{w}}  {_side(g, 'a'):>26}  {_side(g, 'b'):>26}  {g.status}")
        if a.verbose or g.status in ("moved", "changed", "other file"):
            for m in g.a:
                print(f"{'':<{w}}  A {m.describe()}")
            for m in g.b:
                print(f"{'':<{w}}  B {m.describe()}")
    print(", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return EXIT_DIFFERS if differs else 0


def _side(g: layout.Group, side: str) -> str:
    ms = g.a if side == "a" else g.b
    if not ms:
        return "-"
    size = g.size(side)
    human = f"{size >> 20}M" if size >= 1 << 20 else f"{size >> 10}K"
    return f"0x{g.base(side):x} {human:>5}"


# -- ptr ------------------------------------------------------------------

def _address(text: str) -> int:
    try:
        addr = int(text, 0)
    except ValueError:
        raise UsageError(f"not an address: {text!r} (use 0x... or decimal)") from None
    if not 0 <= addr < 1 << 64:
        raise UsageError(f"not an address: {text!r}")
    return addr


class _ArenaNames:
    """Memzone names for addresses in a prefix's arena, read by attaching
    to it the classic way, once and only when an address needs it."""

    def __init__(self, a):
        self.a = a
        self.zones = None
        self.error = ""

    def __call__(self, addr: int) -> str | None:
        if self.zones is None:
            try:
                from .shm import attach, memzones
                attach(self.a.prefix, self.a.runtime_dir)
                self.zones = [(z.addr, z.size, z.name) for z in memzones()]
            except (ForkhostError, OSError, ImportError) as err:
                self.zones, self.error = [], str(err)
        for start, size, name in self.zones:
            if start <= addr < start + size:
                return f"memzone {name!r} + 0x{addr - start:x}"
        return None if not self.error else f"memzone unknown ({self.error})"


def cmd_ptr(a) -> int:
    addr = _address(a.address)
    cfg = None
    if a.pid:
        procs = [(_pid(t), "") for t in a.pid]
    else:
        _, cfg, info = _prefix_procs(a)
        procs = [(cfg["pid"], "primary"), (cfg["template_pid"], "template")]
        procs += [(s["pid"], "secondary") for s in info["secondaries"]]
    if cfg is None:
        try:
            cfg = runtime.read_config(runtime.paths(a.prefix, a.runtime_dir))
        except ForkhostError:
            cfg = None
    from . import _adopt
    arena = _adopt.arena_range(cfg)
    if arena is not None and arena[0] <= addr < arena[0] + arena[1]:
        # Naming its memzone maps the arena at its base here: a library of
        # ours in the range would refuse that, so run again if one is.
        _adopt.fresh_layout(cfg)
    names = _ArenaNames(a)
    maps = {pid: _maps(pid) for pid, _ in procs}
    where = {pid: layout.describe(pid, maps[pid], addr, names) for pid, _ in procs}
    ref = next((pid for pid, _ in procs if where[pid].mapping is not None), None)
    print(f"0x{addr:x}")
    label = {pid: f"{pid} {role or runtime.proc_line(pid)[0]}" for pid, role in procs}
    for pid, _ in procs:
        print(f"  {label[pid]}: {where[pid].what}")
    if ref is None:
        print("  mapped in none of them")
        return EXIT_DIFFERS
    same = True
    print(f"as a pointer from {label[ref]}:")
    for pid, _ in procs:
        if pid == ref:
            continue
        verdict = layout.validity(where[ref], where[pid], addr, maps[pid])
        same &= not verdict.startswith(("INVALID", "not callable"))
        print(f"  in {label[pid]}: {verdict}")
    return 0 if same else EXIT_DIFFERS


def run(fn, a) -> int:
    """Usage errors exit 2 with one line; the rest as every command."""
    try:
        return fn(a)
    except UsageError as err:
        print(f"forkhost {a.cmd}: {err}", file=sys.stderr)
        return EXIT_USAGE
