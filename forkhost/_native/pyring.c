/* forkhost._native._ring: the hot ring calls of forkhost.shm.Ring without
 * cffi's per-call cost.
 *
 * Through cffi, Ring.enqueue_burst(buf) is a ffi.from_buffer (a new cdata
 * object), a length check in Python and the call: several times the cost
 * of moving 32 items.  Here a Handle holds the ring's pointer and element
 * size, and each method takes the caller's buffer with the buffer protocol
 * (no object created) and calls the ring's inline code from
 * forkhost/ring.h, the same code libforkhost exports.  The GIL is kept:
 * these calls never wait (waiting goes through cffi, which releases it).
 *
 *   Handle(addr, mz, gen, gone)   addr: the struct fh_ring * as an int;
 *                                 mz: its memzone's slot (const struct
 *                                 fh_memzone *) as an int, gen: the
 *                                 generation the slot had then; gone: what
 *                                 to call (it raises DestroyedError) when
 *                                 the ring was destroyed
 *   h.enqueue_bulk(buf) -> int    all of buf's elements or none
 *   h.enqueue_burst(buf) -> int   as many as fit
 *   h.dequeue_bulk_into(buf) -> int        fill all of buf or nothing
 *   h.dequeue_burst_into(buf, n=-1) -> int up to n (-1: all buf holds)
 *
 * buf: any C-contiguous buffer; for the enqueues its length must be a
 * whole number of elements (ValueError otherwise), the dequeues fill the
 * whole elements that fit.
 *
 * Checked: every call first loads the generation of the ring's memzone
 * slot and compares it with gen (what fh_memzone_gen does, inline): once
 * the ring was destroyed, by any process, the call raises (through gone)
 * and never touches the memory, even if a new ring of the same name now
 * lives at the same address.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdatomic.h>
#include <stdint.h>

#include "forkhost/memzone.h"
#include "forkhost/ring.h"

typedef struct {
    PyObject_HEAD
    struct fh_ring *r;
    Py_ssize_t esize;
    _Atomic uint32_t *genp;     /* the gen word of the ring's memzone slot */
    uint32_t gen;               /* its value when the ring was found */
    PyObject *gone;             /* raises DestroyedError */
} Handle;

static int handle_init(Handle *self, PyObject *args, PyObject *kw)
{
    PyObject *addr, *mzaddr, *gone;
    unsigned long gen;
    void *p;
    struct fh_memzone *mz;

    if (!PyArg_ParseTuple(args, "OOkO:Handle", &addr, &mzaddr, &gen, &gone))
        return -1;
    p = PyLong_AsVoidPtr(addr);
    mz = p ? PyLong_AsVoidPtr(mzaddr) : NULL;
    if (p == NULL || mz == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "Handle: NULL ring or memzone");
        return -1;
    }
    if (!PyCallable_Check(gone) || gen > UINT32_MAX) {
        PyErr_SetString(PyExc_TypeError, "Handle: gen must be a uint32 and "
                        "gone callable");
        return -1;
    }
    self->r = p;
    self->esize = (Py_ssize_t)fh_ring_elem_size(self->r);
    /* The cast fh_memzone_gen makes: the word is written atomically. */
    self->genp = (_Atomic uint32_t *)&mz->gen;
    self->gen = (uint32_t)gen;
    Py_INCREF(gone);
    Py_XSETREF(self->gone, gone);
    return 0;
}

static void handle_dealloc(Handle *self)
{
    Py_XDECREF(self->gone);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* 0 while the ring lives; else -1 with gone()'s exception (DestroyedError)
 * set.  A handle not initialised has no ring: TypeError. */
static int check(const Handle *self)
{
    PyObject *r;

    if (self->genp == NULL) {
        PyErr_SetString(PyExc_TypeError, "Handle: not initialised");
        return -1;
    }
    /* Acquire, as fh_memzone_gen: pairs with the release stores of gen in
     * fh_memzone_reserve and fh_memzone_free, so a ring seen alive here
     * was published before (its destroy frees the memzone last). */
    if (atomic_load_explicit(self->genp, memory_order_acquire) == self->gen)
        return 0;
    r = PyObject_CallNoArgs(self->gone);
    if (r != NULL) {            /* gone must raise; it did not */
        Py_DECREF(r);
        PyErr_SetString(PyExc_RuntimeError, "Handle: the ring was destroyed");
    }
    return -1;
}

/* The element count of view, or -1 with ValueError. */
static Py_ssize_t elements(const Handle *self, const Py_buffer *view)
{
    Py_ssize_t n = view->len / self->esize;

    if (n * self->esize != view->len) {
        PyErr_Format(PyExc_ValueError, "a buffer of %zd bytes is not a whole "
                     "number of %zd-byte elements", view->len, self->esize);
        return -1;
    }
    if (n > (Py_ssize_t)UINT_MAX) {
        PyErr_SetString(PyExc_ValueError, "buffer larger than any ring");
        return -1;
    }
    return n;
}

typedef unsigned (*ring_in_fn)(struct fh_ring *, const void *, unsigned,
                               unsigned *);
typedef unsigned (*ring_out_fn)(struct fh_ring *, void *, unsigned,
                                unsigned *);

static PyObject *put(Handle *self, PyObject *const *args, Py_ssize_t nargs,
                     ring_in_fn fn)
{
    Py_buffer view;
    Py_ssize_t n;
    unsigned got = 0;

    if (nargs != 1) {
        PyErr_SetString(PyExc_TypeError, "expected one buffer");
        return NULL;
    }
    if (check(self) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    n = elements(self, &view);
    if (n > 0)
        got = fn(self->r, view.buf, (unsigned)n, NULL);
    PyBuffer_Release(&view);
    return n < 0 ? NULL : PyLong_FromUnsignedLong(got);
}

static PyObject *take(Handle *self, PyObject *const *args, Py_ssize_t nargs,
                      ring_out_fn fn, int burst)
{
    Py_buffer view;
    Py_ssize_t n, want = -1;
    unsigned got = 0;

    if (nargs < 1 || nargs > 1 + burst) {
        PyErr_SetString(PyExc_TypeError, burst ? "expected a buffer and n"
                                               : "expected one buffer");
        return NULL;
    }
    if (check(self) < 0)
        return NULL;
    if (nargs == 2 && args[1] != Py_None) {
        want = PyLong_AsSsize_t(args[1]);
        if (want == -1 && PyErr_Occurred())
            return NULL;
        if (want < 0) {
            PyErr_SetString(PyExc_ValueError, "n must be >= 0");
            return NULL;
        }
    }
    if (PyObject_GetBuffer(args[0], &view,
                           PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0)
        return NULL;
    /* Into a buffer, whole elements only: a tail shorter than one
     * element is left alone, as Ring did through cffi. */
    n = view.len / self->esize;
    if (n >= 0 && want >= 0) {
        if (want > n) {
            PyErr_Format(PyExc_ValueError, "n=%zd does not fit a buffer of "
                         "%zd elements", want, n);
            n = -1;
        } else {
            n = want;
        }
    }
    if (n > 0)
        got = fn(self->r, view.buf, (unsigned)n, NULL);
    PyBuffer_Release(&view);
    return n < 0 ? NULL : PyLong_FromUnsignedLong(got);
}

static PyObject *h_enqueue_bulk(Handle *self, PyObject *const *args,
                                Py_ssize_t nargs)
{ return put(self, args, nargs, fh_ring_enqueue_bulk); }

static PyObject *h_enqueue_burst(Handle *self, PyObject *const *args,
                                 Py_ssize_t nargs)
{ return put(self, args, nargs, fh_ring_enqueue_burst); }

static PyObject *h_dequeue_bulk_into(Handle *self, PyObject *const *args,
                                     Py_ssize_t nargs)
{ return take(self, args, nargs, fh_ring_dequeue_bulk, 0); }

static PyObject *h_dequeue_burst_into(Handle *self, PyObject *const *args,
                                      Py_ssize_t nargs)
{ return take(self, args, nargs, fh_ring_dequeue_burst, 1); }

static PyMethodDef handle_methods[] = {
    {"enqueue_bulk", (PyCFunction)(void (*)(void))h_enqueue_bulk,
     METH_FASTCALL, "All of the buffer's elements or none: how many."},
    {"enqueue_burst", (PyCFunction)(void (*)(void))h_enqueue_burst,
     METH_FASTCALL, "As many of the buffer's elements as fit: how many."},
    {"dequeue_bulk_into", (PyCFunction)(void (*)(void))h_dequeue_bulk_into,
     METH_FASTCALL, "Fill all of the buffer or nothing: how many."},
    {"dequeue_burst_into", (PyCFunction)(void (*)(void))h_dequeue_burst_into,
     METH_FASTCALL, "Up to n (default: the buffer's size) elements."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject HandleType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "forkhost._native._ring.Handle",
    .tp_basicsize = sizeof(Handle),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A ring's pointer, for the hot calls of forkhost.shm.Ring.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)handle_init,
    .tp_dealloc = (destructor)handle_dealloc,
    .tp_methods = handle_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_ring",
    "The hot ring calls of forkhost.shm.Ring (see pyring.c).", -1, NULL,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__ring(void);

PyMODINIT_FUNC PyInit__ring(void)
{
    PyObject *m;

    if (PyType_Ready(&HandleType) < 0)
        return NULL;
    m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&HandleType);
    if (PyModule_AddObject(m, "Handle", (PyObject *)&HandleType) < 0) {
        Py_DECREF(&HandleType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
