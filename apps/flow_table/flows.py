"""Flows: the 5-tuple key, packed, and the deterministic flows each role
adds, so every role can check the others' without talking to them.

Key (16 bytes, network byte order): src IPv4, dst IPv4, src port, dst
port, protocol, 3 zero bytes.  Flow i of owner o: src 10.o.hi(i).lo(i),
dst 192.168.x.y with x.y = 7*i, sport 1024 + i % 50000, dport one of
80/443/53/8080, TCP or UDP; its data is o << 32 | i.  c_secondary.c
implements the same rule.
"""

from __future__ import annotations

import ipaddress
import struct

import names

_KEY = struct.Struct("!IIHHB3x")
assert _KEY.size == names.KEY_LEN
_DPORTS = (80, 443, 53, 8080)


def pack(src: int, dst: int, sport: int, dport: int, proto: int) -> bytes:
    return _KEY.pack(src, dst, sport, dport, proto)


def flow(owner: int, i: int) -> bytes:
    return pack(0x0A000000 | owner << 16 | (i & 0xFFFF),
                0xC0A80000 | ((7 * i) & 0xFFFF),
                1024 + i % 50000, _DPORTS[i % 4], 6 if i % 3 else 17)


def data(owner: int, i: int) -> int:
    return owner << 32 | i


def keys(owner: int, n: int = names.FLOWS_EACH) -> list[bytes]:
    return [flow(owner, i) for i in range(n)]


def describe(key: bytes) -> str:
    src, dst, sport, dport, proto = _KEY.unpack(key)
    return (f"{ipaddress.IPv4Address(src)}:{sport} -> {ipaddress.IPv4Address(dst)}:"
            f"{dport} {'tcp' if proto == 6 else 'udp'}")


def check(table, owner: int, n: int = names.FLOWS_EACH) -> int:
    """How many of owner's flows are in the table with the right data
    (one bulk lookup through the table's stored hash function)."""
    positions, found = table.lookup_bulk(keys(owner, n))
    return sum(1 for i, (p, d) in enumerate(zip(positions, found))
               if p >= 0 and d == data(owner, i))
