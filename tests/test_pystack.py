"""forkhost._native._pystack.run in a forked child of the test."""

import os

from forkhost._native import _pystack


def _child(done) -> tuple[int, bytes]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                  # pragma: no cover (child)
        try:
            os.close(r)
            os.dup2(w, 1)
            os.dup2(w, 2)
            import sys                # not the test's capture: fd 2
            sys.stderr = open(2, "w", closefd=False)
            import atexit
            atexit.register(os.write, 1, b"python's atexit ran\n")
            _pystack.run(lambda: 7, (), done, 125)
        finally:
            os._exit(99)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out


def test_done_exits():
    def done(result, exc):
        os.write(1, b"done %d %r\n" % (result, exc is None))
        os._exit(3)
    assert _child(done) == (3, b"done 7 True\n")


def test_done_raising_systemexit_does_not_finalize():
    """done() raising is printed and the child exits with fail_status,
    without Py_Exit()'s finalization (atexit, the C library's exit)."""
    def done(result, exc):
        raise SystemExit(0)
    code, out = _child(done)
    assert code == 125, out
    assert b"atexit ran" not in out and b"SystemExit" in out, out
