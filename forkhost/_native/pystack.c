/* forkhost._native._pystack: run a Python secondary's entry on a stack of
 * its own, as `python` runs its program.
 *
 * A secondary is a fork of the template, which is a fork of the primary:
 * its thread state still holds every frame that led the primary into the
 * template's loop (runpy, the primary's program, forkhost's) and the ones
 * that led the launch back into Python.  Run on top of them, an entry sees
 * them in inspect.stack(), tracebacks, faulthandler and warnings, and has
 * that much less of the recursion limit.
 *
 * run(entry, arg, done, fail_status) moves the thread to a new thread
 * state, whose stack is empty, and there evaluates the entry as python's
 * own C code does: a code object with PyEval_EvalCode(entry, arg, arg)
 * (`python script.py`), anything else with PyObject_Call(entry, arg)
 * (`python -m`: runpy._run_module_as_main).  Then done(result, exception)
 * finishes the secondary; it never returns (it exits), and run() does not
 * either: the frames it was called from belong to the thread state it left.
 *
 * The old thread state is taken off the interpreter's list (so
 * sys._current_frames() and faulthandler see one thread) without being
 * cleared: what it references stays alive, as the frames on its stack stay
 * in memory (a frame object of one of them may still be reachable), and
 * threading's lock for the main thread stays held as in a fresh process.
 * The GIL state API (cffi's and ctypes' callbacks) is bound to the new
 * thread state.
 *
 * Python 3.13 also keeps the main thread's state by pointer: a signal's C
 * handler flags it there (_PyRuntime.main_tstate: the eval loop of that
 * state alone runs the Python handlers, so a busy loop on another never
 * would), and so does Py_AddPendingCall; and the state running __main__
 * is the interpreter's threads.main.  Both pointed at the old state, which
 * no thread runs any more: they move to the new one, through CPython's
 * internal headers (checked on 3.13; not needed before it, where the flag
 * was the interpreter's; 3.14 is not covered: its internals were not
 * checked).
 */
#define PY_SSIZE_T_CLEAN
#include <patchlevel.h>
#if PY_VERSION_HEX >= 0x030D0000 && PY_VERSION_HEX < 0x030E0000
#define FH_MAIN_TSTATE 1
#define Py_BUILD_CORE_MODULE 1      /* before Python.h: the internal headers */
#elif PY_VERSION_HEX >= 0x030E0000
#warning "pystack.c: main_tstate is not moved on this Python (its internals were not checked): signal handlers may not run in a secondary busy in bytecode"
#endif
#include <Python.h>
#ifdef FH_MAIN_TSTATE
#include "internal/pycore_ceval.h"
#include "internal/pycore_interp.h"
#include "internal/pycore_runtime.h"
#endif

#include <stdio.h>
#include <unistd.h>

static void flush_std(const char *name)
{
    PyObject *f = PySys_GetObject(name), *r;    /* borrowed */

    if (f != NULL && f != Py_None) {
        r = PyObject_CallMethod(f, "flush", NULL);
        Py_XDECREF(r);
    }
    PyErr_Clear();
}

static PyObject *pystack_run(PyObject *self, PyObject *args)
{
    PyObject *entry, *arg, *done, *result, *exc;
    PyObject *type = NULL, *value = NULL, *tb = NULL;
    PyThreadState *old, *spare;
    PyInterpreterState *interp;
    int fail_status;

    (void)self;
    if (!PyArg_ParseTuple(args, "OOOi:run", &entry, &arg, &done, &fail_status))
        return NULL;
    if (PyCode_Check(entry) && !PyDict_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "run: a code object runs in a dict");
        return NULL;
    }
    /* The frames of the caller keep these alive; the new state keeps its own. */
    Py_INCREF(entry);
    Py_INCREF(arg);
    Py_INCREF(done);
    old = PyThreadState_Get();
    interp = PyThreadState_GetInterpreter(old);
    /* A placeholder while the old state goes: a thread state made when the
     * interpreter has none reuses the interpreter's first, which the old
     * one may be (Python 3.11 cannot reuse it). */
    spare = PyThreadState_New(interp);
    if (spare == NULL) {
        Py_DECREF(entry);
        Py_DECREF(arg);
        Py_DECREF(done);
        return PyErr_NoMemory();
    }
    PyEval_SaveThread();                    /* no thread state current now */
#ifdef FH_MAIN_TSTATE
    /* A signal from here on flags spare, which lives until the new state
     * has taken over, not old, which is about to be deleted. */
    _PyRuntime.main_tstate = spare;
#endif
    old->datastack_chunk = NULL;            /* its frames stay where they are */
    PyThreadState_Delete(old);              /* off the list and the GIL state */
    (void)PyGILState_Ensure();              /* a new state: the GIL state's */
#ifdef FH_MAIN_TSTATE
    {
        PyThreadState *now = PyThreadState_Get();

        _PyRuntime.main_tstate = now;
        if (interp->threads.main == old || interp->threads.main == spare)
            interp->threads.main = now;
        /* What arrived during the move (signals, pending calls: their
         * flags went to old or spare) is looked at once by the new state;
         * a flag with nothing pending costs one check. */
        _Py_set_eval_breaker_bit(now, _PY_SIGNALS_PENDING_BIT | _PY_CALLS_TO_DO_BIT);
    }
#endif
    PyThreadState_Clear(spare);
    PyThreadState_Delete(spare);

    if (PyCode_Check(entry))
        result = PyEval_EvalCode(entry, arg, arg);
    else
        result = PyObject_Call(entry, arg, NULL);
    if (result == NULL) {
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        if (tb != NULL && value != NULL)
            PyException_SetTraceback(value, tb);
        exc = value != NULL ? value : Py_None;
        result = Py_None;
        Py_INCREF(result);
    } else {
        exc = Py_None;
    }
    /* done() exits; if it returns, something of ours broke.  Printed,
     * not PyErr_Print()ed: that exits by Py_Exit() on a SystemExit, which
     * finalizes the interpreter and runs the C library's exit handlers,
     * the template's, in the secondary. */
    if (PyObject_CallFunctionObjArgs(done, result, exc, NULL) == NULL) {
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        if (type != NULL)
            PyErr_Display(type, value, tb);
        flush_std("stderr");
    }
    fflush(stderr);
    _exit(fail_status);
}

static PyMethodDef methods[] = {
    {"run", pystack_run, METH_VARARGS,
     "run(entry, arg, done, fail_status): evaluate entry on a new, empty "
     "stack, then done(result, exception); never returns."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_pystack",
    "A secondary's entry on a stack of its own (pystack.c).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__pystack(void);

PyMODINIT_FUNC PyInit__pystack(void)
{
    return PyModule_Create(&module);
}
