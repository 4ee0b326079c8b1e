"""Address-space layouts: read them, prove a secondary holds its template's,
compare two processes, and say what an address is in each of several
processes (``forkhost verify``, ``forkhost maps``, ``forkhost ptr``;
docs/aslr.md).

A mapping's *backing* is what its pages are: a file or memfd (device,
inode and the file offset at each address), or private anonymous memory.
Two processes hold "the same mapping" at an address when both map there
with the same backing at the same offset: then a pointer to that address
means the same bytes (and, executable, the same code) in both.  Private
anonymous memory (heap, stacks, interpreter arenas) is copied on write
after a fork: the address is valid in both, the contents are each
process's own.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ._errors import ForkhostError

# Names /proc/PID/maps gives to mappings without a file.
_SPECIAL = ("[heap]", "[stack]", "[vdso]", "[vvar]", "[vsyscall]")
# Mappings the kernel places itself, at the same address in a forked child.
_KERNEL = ("[vdso]", "[vvar]", "[vsyscall]")
ARENA_MEMFD = "/memfd:forkhost-arena:"


@dataclass(frozen=True)
class Mapping:
    """One line of /proc/PID/maps."""

    start: int
    end: int
    perms: str          # "r-xp"
    offset: int         # file offset at start
    dev: str            # "fd:01"
    inode: int
    path: str           # "" for anonymous; " (deleted)" stripped
    deleted: bool = False

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def shared(self) -> bool:
        return self.perms[3:4] == "s"

    @property
    def executable(self) -> bool:
        return self.perms[2:3] == "x"

    @property
    def backed(self) -> bool:
        """A file, a memfd or shared anonymous memory: the same pages in
        every process that maps it (private file pages until written)."""
        return self.inode != 0

    @property
    def kernel(self) -> bool:
        return self.path in _KERNEL

    @property
    def arena(self) -> bool:
        return self.path.startswith(ARENA_MEMFD)

    @property
    def module(self) -> str:
        """What groups this mapping with others: the file's path, the
        special name, "[arena PREFIX]" or "[anonymous]"."""
        if self.arena:
            return f"[arena {self.path[len(ARENA_MEMFD):]}]"
        if self.path:
            return self.path
        return "[anonymous]"

    def offset_at(self, addr: int) -> int:
        return self.offset + (addr - self.start)

    def same_backing(self, other: "Mapping", addr: int) -> bool:
        """Whether addr is the same page of the same object in both."""
        if self.kernel or other.kernel:
            return self.path == other.path
        if not self.backed or not other.backed:
            return not self.backed and not other.backed
        return (self.dev, self.inode) == (other.dev, other.inode) and \
            self.offset_at(addr) == other.offset_at(addr)

    def describe(self) -> str:
        what = self.module
        if self.backed and not self.arena and self.path:
            what += f" @0x{self.offset:x}"
        return f"{self.start:x}-{self.end:x} {self.perms} {what}"


def parse_maps(text: str) -> list[Mapping]:
    """/proc/PID/maps text to Mappings, in address order."""
    out = []
    for line in text.splitlines():
        fields = line.split(None, 5)
        if len(fields) < 5:
            continue
        try:
            lo, _, hi = fields[0].partition("-")
            path = fields[5] if len(fields) > 5 else ""
            deleted = path.endswith(" (deleted)")
            if deleted:
                path = path[: -len(" (deleted)")]
            out.append(Mapping(int(lo, 16), int(hi, 16), fields[1], int(fields[2], 16),
                               fields[3], int(fields[4]), path, deleted))
        except ValueError:
            continue
    return out


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        raise ForkhostError(f"no process {path.split('/')[2]}") from None
    except PermissionError:
        raise ForkhostError(f"cannot read {path}: permission denied") from None
    except ProcessLookupError:
        raise ForkhostError(f"no process {path.split('/')[2]}") from None


def read_maps(pid: int) -> list[Mapping]:
    return parse_maps(_read(f"/proc/{pid}/maps"))


def not_inherited(pid: int) -> set[tuple[int, int]]:
    """The ranges of pid that a fork does not copy (MADV_DONTFORK: VmFlags
    "dc" in /proc/PID/smaps): the template's per-launch state."""
    out = set()
    current = None
    for line in _read(f"/proc/{pid}/smaps").splitlines():
        head = line.split(None, 1)[0] if line else ""
        if "-" in head and not head.endswith(":"):
            lo, _, hi = head.partition("-")
            try:
                current = (int(lo, 16), int(hi, 16))
            except ValueError:
                current = None
        elif head == "VmFlags:" and current is not None and " dc" in " " + line[8:]:
            out.add(current)
    return out


def find(maps: list[Mapping], addr: int) -> Mapping | None:
    lo, hi = 0, len(maps)
    while lo < hi:
        mid = (lo + hi) // 2
        if maps[mid].end <= addr:
            lo = mid + 1
        else:
            hi = mid
    if lo < len(maps) and maps[lo].start <= addr < maps[lo].end:
        return maps[lo]
    return None


def _overlapping(maps: list[Mapping], start: int, end: int) -> list[Mapping]:
    return [m for m in maps if m.start < end and m.end > start]


# -- verify ---------------------------------------------------------------

@dataclass
class Difference:
    start: int
    end: int
    what: str           # "missing", "remapped", "protection", "private"
    template: str       # the template's mapping, described
    here: str           # what the secondary has there ("" when nothing)

    @property
    def fails(self) -> bool:
        return self.what in ("missing", "remapped")

    def line(self) -> str:
        rng = f"{self.start:x}-{self.end:x}"
        if self.what == "missing":
            return f"missing  {rng}: the template maps {self.template}; nothing here"
        if self.what == "remapped":
            return f"remapped {rng}: the template maps {self.template}; here {self.here}"
        if self.what == "protection":
            return f"protection {rng}: the template maps {self.template}; here {self.here}"
        return f"private  {rng}: the template's {self.template} is unmapped here"


@dataclass
class Verdict:
    pid: int
    checked: int = 0               # template mappings compared
    own: int = 0                   # the secondary's mappings the template lacks
    differences: list[Difference] = field(default_factory=list)

    def holds(self, strict: bool = False) -> bool:
        return not any(d.fails or (strict and d.what == "private")
                       for d in self.differences)


def verify(template: list[Mapping], secondary: list[Mapping], pid: int = 0,
           skip: set[tuple[int, int]] = frozenset()) -> Verdict:
    """Every mapping of the template at the same address with the same
    backing in the secondary.  Backed mappings (files, the arena, shared
    memory) and the kernel's (vdso) must hold; a changed protection is
    listed without failing (mprotect keeps the pages); private anonymous
    memory only needs to be there to count, its absence is listed as
    "private" (a program frees what it inherited).  skip: ranges the
    template does not pass on (not_inherited())."""
    v = Verdict(pid)
    for t in template:
        if (t.start, t.end) in skip:
            continue
        v.checked += 1
        pos = t.start
        for s in _overlapping(secondary, t.start, t.end):
            lo, hi = max(s.start, t.start), min(s.end, t.end)
            if lo > pos:
                v.differences.append(_gap(t, pos, lo))
            pos = max(pos, hi)
            if not t.same_backing(s, lo):
                if t.backed or t.kernel:
                    v.differences.append(Difference(lo, hi, "remapped", t.describe(),
                                                    s.describe()))
                else:
                    v.differences.append(Difference(lo, hi, "private", t.describe(),
                                                    s.describe()))
            elif s.perms != t.perms and (t.backed or t.kernel):
                v.differences.append(Difference(lo, hi, "protection", t.describe(),
                                                s.describe()))
        if pos < t.end:
            v.differences.append(_gap(t, pos, t.end))
    tset = [(t.start, t.end) for t in template]
    v.own = sum(1 for s in secondary if not any(a < s.end and b > s.start for a, b in tset))
    return v


def _gap(t: Mapping, lo: int, hi: int) -> Difference:
    what = "missing" if (t.backed or t.kernel) else "private"
    return Difference(lo, hi, what, t.describe(), "")


# -- maps: two layouts side by side ---------------------------------------

@dataclass
class Group:
    module: str
    a: list[Mapping]
    b: list[Mapping]

    @property
    def status(self) -> str:
        if not self.a:
            return "only in B"
        if not self.b:
            return "only in A"
        ra = [(m.start, m.end, m.offset) for m in self.a]
        rb = [(m.start, m.end, m.offset) for m in self.b]
        backed = any(m.backed for m in self.a + self.b)
        if ra == rb:
            if not backed:
                return "private"
            same = {(m.dev, m.inode) for m in self.a} == {(m.dev, m.inode) for m in self.b}
            return "shared" if same else "other file"
        if self.module.startswith("[") and not backed:
            return "private"
        # The same file (or name) elsewhere: moved when its bases differ.
        if self.base("a") != self.base("b"):
            return "moved"
        return "changed"

    def base(self, side: str) -> int:
        ms = self.a if side == "a" else self.b
        return min(m.start for m in ms) if ms else 0

    def size(self, side: str) -> int:
        return sum(m.size for m in (self.a if side == "a" else self.b))


def _group_key(m: Mapping) -> str:
    return m.module


def compare(a: list[Mapping], b: list[Mapping]) -> list[Group]:
    """The two layouts grouped by module (file, special name, arena,
    anonymous memory), in the order of their lowest address in A then B."""
    groups: dict[str, Group] = {}
    for side, maps in (("a", a), ("b", b)):
        for m in maps:
            g = groups.setdefault(_group_key(m), Group(_group_key(m), [], []))
            (g.a if side == "a" else g.b).append(m)
    return sorted(groups.values(),
                  key=lambda g: (g.base("a") if g.a else g.base("b")))


# -- ptr: what an address is ------------------------------------------------

class _Elf:
    """The symbols of one ELF file and how file offsets map to its
    addresses; just enough for address -> "symbol+offset".  Every read is
    bounds-checked: a file that is not ELF or is cut short yields no
    symbols, never an exception."""

    def __init__(self, path: str):
        self.segments: list[tuple[int, int, int]] = []   # (offset, vaddr, filesz)
        self.symbols: list[tuple[int, int, str]] = []    # (value, size, name)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            return
        try:
            self._parse(data)
        except (struct.error, IndexError, ValueError, UnicodeDecodeError):
            self.segments, self.symbols = [], []
        self.symbols.sort()

    def _parse(self, d: bytes) -> None:
        if d[:4] != b"\x7fELF" or d[4] not in (1, 2) or d[5] not in (1, 2):
            return
        is64, end = d[4] == 2, "<" if d[5] == 1 else ">"
        if is64:
            (phoff, shoff) = struct.unpack_from(end + "QQ", d, 32)
            phentsize, phnum, shentsize, shnum = struct.unpack_from(end + "HHHH", d, 54)
            ph, sh, sym = end + "IIQQQQQQ", end + "IIQQQQIIQQ", end + "IBBHQQ"
        else:
            (phoff, shoff) = struct.unpack_from(end + "II", d, 28)
            phentsize, phnum, shentsize, shnum = struct.unpack_from(end + "HHHH", d, 42)
            ph, sh, sym = end + "IIIIIIII", end + "IIIIIIIIII", end + "IIIBBH"
        for i in range(phnum):
            p = struct.unpack_from(ph, d, phoff + i * phentsize)
            if is64:
                ptype, off, vaddr, filesz = p[0], p[2], p[3], p[5]
            else:
                ptype, off, vaddr, filesz = p[0], p[1], p[2], p[4]
            if ptype == 1:                                  # PT_LOAD
                self.segments.append((off, vaddr, filesz))
        sections = [struct.unpack_from(sh, d, shoff + i * shentsize) for i in range(shnum)]
        for s in sections:
            stype, link = s[1], s[6]
            off, size, entsize = (s[4], s[5], s[9]) if is64 else (s[4], s[5], s[9])
            if stype not in (2, 11) or not entsize or link >= len(sections):  # SYMTAB, DYNSYM
                continue
            stroff, strsize = sections[link][4], sections[link][5]
            strtab = d[stroff:stroff + strsize]
            for k in range(size // entsize):
                e = struct.unpack_from(sym, d, off + k * entsize)
                if is64:
                    name, info, shndx, value, ssize = e[0], e[1], e[3], e[4], e[5]
                else:
                    name, value, ssize, info, shndx = e[0], e[1], e[2], e[3], e[5]
                if shndx == 0 or (info & 0xF) not in (1, 2) or not value:  # OBJECT, FUNC
                    continue
                nul = strtab.find(b"\0", name)
                text = strtab[name:nul if nul >= 0 else len(strtab)].decode()
                if text:
                    self.symbols.append((value, ssize, text))

    def vaddr(self, file_offset: int) -> int | None:
        for off, vaddr, filesz in self.segments:
            if off <= file_offset < off + filesz:
                return vaddr + (file_offset - off)
        return None

    def symbol(self, vaddr: int) -> str | None:
        """The symbol whose extent holds vaddr ("name" or "name+0xN"); None
        when no sized symbol does (a guess from the nearest one below
        would name the wrong function)."""
        best = None
        for value, size, name in self.symbols:
            if value > vaddr:
                break
            if value <= vaddr < value + max(size, 1):
                best = (value, name)
        if best is None:
            return None
        value, name = best
        return name if vaddr == value else f"{name}+0x{vaddr - value:x}"


_elf_cache: dict[str, _Elf] = {}


def symbolize(m: Mapping, addr: int) -> str:
    """"module + 0xOFF (symbol+0xN)" for an address in a file mapping."""
    off = m.offset_at(addr)
    elf = _elf_cache.get(m.path)
    if elf is None:
        elf = _elf_cache[m.path] = _Elf(m.path)
    va = elf.vaddr(off)
    text = f"{m.path} + 0x{off:x}" if va is None else f"{m.path} + 0x{va:x}"
    sym = elf.symbol(va) if va is not None else None
    return f"{text} ({sym})" if sym else text


@dataclass
class Where:
    pid: int
    mapping: Mapping | None
    what: str           # one line


def describe(pid: int, maps: list[Mapping], addr: int,
             arena_name=None) -> Where:
    """What addr is in process pid.  arena_name(addr) -> "memzone NAME + 0xN"
    or None, for addresses in a forkhost arena."""
    m = find(maps, addr)
    if m is None:
        return Where(pid, None, "not mapped")
    if m.arena:
        zone = arena_name(addr) if arena_name else None
        what = f"{m.module} + 0x{addr - m.start:x}"
        return Where(pid, m, f"{what}, {zone}" if zone else what)
    if m.path in _SPECIAL:
        return Where(pid, m, f"{m.path} + 0x{addr - m.start:x} ({m.perms})")
    if m.path and not m.path.startswith("/dev/zero") and not m.path.startswith("/SYSV"):
        return Where(pid, m, f"{symbolize(m, addr)} ({m.perms})")
    kind = "shared anonymous memory" if m.backed else "anonymous memory"
    return Where(pid, m, f"{kind} {m.start:x}-{m.end:x} + 0x{addr - m.start:x} ({m.perms})")


def validity(here: Where, there: Where, addr: int, there_maps: list[Mapping]) -> str:
    """Whether addr, as it is in ``here``, is valid (and callable) in
    ``there``."""
    h, t = here.mapping, there.mapping
    if h is None:
        return "-"
    if t is None:
        return "INVALID: not mapped there" + _moved_hint(h, addr, there_maps)
    if not h.same_backing(t, addr):
        return f"INVALID: there it is {there.what}" + _moved_hint(h, addr, there_maps)
    if not h.backed and not h.kernel:
        return "valid address, private memory: each process has its own copy"
    if h.executable:
        return ("callable: the same code" if t.executable
                else "not callable: mapped without execute permission there")
    return "valid: the same bytes"


def _moved_hint(h: Mapping, addr: int, there_maps: list[Mapping]) -> str:
    """Where the other process has the same file page, if it maps it."""
    if not h.backed or not h.path:
        return ""
    off = h.offset_at(addr)
    for m in there_maps:
        if (m.dev, m.inode) == (h.dev, h.inode) and m.offset <= off < m.offset + m.size:
            return (f"; it maps {h.module} elsewhere (the same byte is at "
                    f"0x{m.start + off - m.offset:x} there)"
                    + ("; not callable" if h.executable else ""))
    return ""
