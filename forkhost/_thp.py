"""Transparent huge pages for the primary's big private memory, before the
template fork (csrc/lib/thp.c, docs/architecture.md#a-big-preload).

fork() copies the page tables of every private mapping: the template, each
pool member and each secondary forked on demand pays one entry per 4 KiB
page a preload touched (a model, a big table), and its exit tears them down
again.  Collapsed into 2 MiB pages, the same memory costs one entry per
2 MiB.  The primary calls :func:`before_template_fork` just before it forks
the template, while it is single-threaded.

``FORKHOST_THP`` in the primary's environment: unset or ``1`` for the
default (mappings with at least 64 MiB resident), ``0`` (or ``off``,
``no``, ``never``) to leave memory alone, or a size (``16M``) for another
threshold.
"""

from __future__ import annotations

import errno
import os

from ._native import ffi, lib
from ._wire import THP_INVALID
from ._errors import ForkhostError

DEFAULT_MIN_BYTES = lib.FH_THP_MIN_BYTES


def _min_bytes(value: str | None) -> int | None:
    """The threshold FORKHOST_THP asks for; None when it disables
    (fh_thp_wanted, which a C primary's fh_init reads it with)."""
    out = ffi.new("size_t *")
    wanted = lib.fh_thp_wanted(ffi.NULL if value is None else os.fsencode(value), out)
    if wanted < 0:
        raise ForkhostError(THP_INVALID % value)
    return int(out[0]) if wanted else None


def collapse(min_bytes: int = DEFAULT_MIN_BYTES) -> dict:
    """Collapse this process's qualifying regions now (fh_thp_collapse);
    the report as a dict.  Never raises for what the kernel refuses: the
    report says it (``unsupported``, ``first_error``, ``failed_bytes``)."""
    r = ffi.new("struct fh_thp_report *")
    got = lib.fh_thp_collapse(min_bytes, r)
    err = ffi.errno if got < 0 else 0
    out = {
        "enabled": True,
        "min_bytes": int(min_bytes),
        "regions": int(r.regions),
        "region_bytes": int(r.region_bytes),
        "chunk_bytes": int(r.chunk_bytes),
        "aligned_bytes": int(r.aligned_bytes),
        "collapsed_bytes": int(r.collapsed_bytes),
        "failed_bytes": int(r.failed_bytes),
        "sparse_bytes": int(r.sparse_bytes),
        "failed_chunks": {"ENOMEM": int(r.fail_enomem), "EAGAIN": int(r.fail_eagain),
                          "other": int(r.fail_other)},
        "seconds": round(r.elapsed_ns / 1e9, 4),
    }
    if r.first_errno:
        out["first_error"] = errno.errorcode.get(r.first_errno, str(r.first_errno))
    if r.madvise_errno:
        out["madvise_hugepage_error"] = errno.errorcode.get(r.madvise_errno,
                                                            str(r.madvise_errno))
    if r.unsupported:
        out["unsupported"] = ("MADV_COLLAPSE is not supported by this kernel "
                              "(Linux >= 6.1 with transparent huge pages): "
                              + os.strerror(r.unsupported))
    elif got < 0:
        out["error"] = f"cannot read /proc/self/smaps: {os.strerror(err)}"
    return out


def before_template_fork(primary) -> dict:
    """What Primary._fork_template calls before the fork: collapse unless
    FORKHOST_THP disables it, and record the report in the primary's
    config (config.json's "thp").  Prints nothing."""
    min_bytes = _min_bytes(os.environ.get("FORKHOST_THP"))
    if min_bytes is None:
        report = {"enabled": False, "why": "FORKHOST_THP=" + os.environ["FORKHOST_THP"]}
    else:
        report = collapse(min_bytes)
    primary.config["thp"] = report
    return report
