"""``forkhost stats``: a prefix's counters, as text, JSON or Prometheus's
text format (docs/cli.md, "forkhost stats").

Everything comes from the template's INFO answer (csrc/lib/template.c,
forkhost/log.h): the template counts launches, refusals, exits and the
launch latency histogram itself, knows its pool members and reads the
arena's use; nothing is kept anywhere else.  The counters are the
prefix's since the primary started, across reloads: every generation's
template counts into one shared set (a retiring one counts its last
secondaries' exits there), and the running secondaries include a retiring
generation's.
"""

from __future__ import annotations

import json

from . import _client as client, _runtime as runtime
from ._errors import ForkhostError


def collect(prefix: str | None, runtime_dir) -> dict:
    """The figures of prefix's primary; ForkhostError (ps's line) when
    there is none."""
    p = runtime.paths(prefix, runtime_dir)
    cfg = runtime.read_config(p)
    if cfg is None or not runtime.pid_alive(cfg.get("pid", 0)):
        raise ForkhostError(f"no forkhost primary for prefix {p.prefix!r} "
                            f"(looked for {p.config})")
    inf = client.info(p.prefix, p.root)
    members = inf.get("members", [])
    lat = inf["latency"]
    out = {
        "prefix": p.prefix,
        "primary_pid": inf["primary_pid"],
        "template_pid": inf["template_pid"],
        "generation": inf["generation"],
        "reloads": inf["reloads"],
        "launches": inf["launched"],
        "pool_launches": inf["pool_launches"],
        "refusals": inf["refused"],
        "exits": inf["exits"],
        # Every generation's: a reload's old template still serves its own
        # (config.json's "retiring"; they are its children but the next
        # generation's template).
        "secondaries": len(inf["secondaries"]) + sum(
            map(len, runtime.retiring_secondaries(cfg).values())),
        "pool": {"idle": sum(m["state"] == "idle" for m in members),
                 "busy": sum(m["state"] == "busy" for m in members),
                 "size": inf["pool_size"]},
        "latency": {"bounds_us": lat["bounds_us"], "buckets": lat["buckets"],
                    "sum_us": lat["sum_us"], "count": sum(lat["buckets"])},
    }
    arena = inf.get("arena")
    if arena is not None:
        out["arena"] = {"used": arena["max"] - arena["free"], "size": arena["size"],
                        "max": arena["max"]}
    return out


def _seconds(us: int) -> str:
    return format(us / 1e6, "g")


def prometheus(s: dict) -> str:
    """node_exporter's textfile collector format: HELP and TYPE once per
    family, before its samples; counters end in _total."""
    lab = f'prefix="{s["prefix"]}"'      # a prefix has no quote or backslash
    lines: list[str] = []

    def family(name, kind, help_text, samples):
        if not samples:          # no exit of that kind yet: no family
            return
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for suffix, labels, value in samples:
            extra = "".join(f',{k}="{v}"' for k, v in labels)
            lines.append(f"{name}{suffix}{{{lab}{extra}}} {value}")

    family("forkhost_launches_total", "counter",
           "Secondaries launched.", [("", (), s["launches"])])
    family("forkhost_pool_launches_total", "counter",
           "Launches taken by a pre-forked pool member.",
           [("", (), s["pool_launches"])])
    family("forkhost_refusals_total", "counter",
           "Requests refused (the client exits 125, 126 or 127).",
           [("", (), s["refusals"])])
    family("forkhost_exits_total", "counter",
           "Secondaries that exited, by exit status.",
           [("", (("status", k),), v)
            for k, v in sorted(s["exits"]["status"].items(), key=lambda kv: int(kv[0]))])
    family("forkhost_killed_total", "counter",
           "Secondaries killed by a signal, by signal.",
           [("", (("signal", k),), v) for k, v in sorted(s["exits"]["signal"].items())])
    family("forkhost_secondaries", "gauge", "Secondaries running.",
           [("", (), s["secondaries"])])
    family("forkhost_reloads_total", "counter",
           "New generations started by a reload.", [("", (), s["reloads"])])
    family("forkhost_generation", "gauge",
           "The serving generation (1, one more at each reload).",
           [("", (), s["generation"])])
    family("forkhost_pool_members", "gauge", "Pre-forked pool members, by state.",
           [("", (("state", st),), s["pool"][st]) for st in ("idle", "busy")])
    lat = s["latency"]
    cumulative, samples = 0, []
    for bound, n in zip(lat["bounds_us"] + [None], lat["buckets"]):
        cumulative += n
        le = "+Inf" if bound is None else _seconds(bound)
        samples.append(("_bucket", (("le", le),), cumulative))
    samples.append(("_sum", (), _seconds(lat["sum_us"])))
    samples.append(("_count", (), lat["count"]))
    family("forkhost_launch_latency_seconds", "histogram",
           "From a launch's connection accepted to its launch taken "
           "(STARTED sent).", samples)
    if "arena" in s:
        for key, text in (("used", "Arena bytes in use (its maximum less what "
                           "memzones can still get)."),
                          ("size", "Arena bytes mapped now."),
                          ("max", "Arena bytes it can grow to.")):
            family(f"forkhost_arena_{key}_bytes", "gauge", text,
                   [("", (), s["arena"][key])])
    return "\n".join(lines) + "\n"


def text(s: dict) -> str:
    from .primary import human_size
    ex = s["exits"]
    exits = [f"status {k}: {v}" for k, v in sorted(ex["status"].items(),
                                                   key=lambda kv: int(kv[0]))]
    exits += [f"{k}: {v}" for k, v in sorted(ex["signal"].items())]
    lat = s["latency"]
    hist = ", ".join(
        f"{'<=' + _us(b) if b is not None else '>' + _us(lat['bounds_us'][-1])} {n}"
        for b, n in zip(lat["bounds_us"] + [None], lat["buckets"]) if n)
    mean = (f", mean {_us(lat['sum_us'] // lat['count'])}" if lat["count"] else "")
    out = [f"prefix {s['prefix']!r}: primary {s['primary_pid']}, "
           f"template {s['template_pid']} (generation {s['generation']}, "
           f"{s['reloads']} reload{'s' if s['reloads'] != 1 else ''})",
           f"launches     {s['launches']} ({s['pool_launches']} by pool members)",
           f"refusals     {s['refusals']}",
           f"exits        {', '.join(exits) or 'none'}",
           f"running      {s['secondaries']} secondaries",
           f"pool         {s['pool']['idle']} idle, {s['pool']['busy']} busy "
           f"(--pool {s['pool']['size']})",
           f"latency      {hist or 'no launches'}{mean}"]
    if "arena" in s:
        a = s["arena"]
        out.append(f"arena        {a['used'] / (1 << 20):.1f} MiB used, "
                   f"{human_size(a['size'])} mapped (grows to {human_size(a['max'])})")
    return "\n".join(out)


def _us(us: int) -> str:
    return f"{us / 1000:g} ms" if us >= 1000 else f"{us} us"


def stats(a) -> int:
    s = collect(a.prefix, a.runtime_dir)
    if a.json:
        print(json.dumps(s, indent=2))
    elif a.prometheus:
        print(prometheus(s), end="")
    else:
        print(text(s))
    return 0
