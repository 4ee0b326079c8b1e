/* forkhost._native._hashfast: the hot lookups of forkhost.shm.HashTable
 * without cffi's per-call cost.
 *
 * TableBase is the base type of forkhost.shm.HashTable.  It holds the
 * table's address and key length (set by _bind) and implements, as C slots
 * and methods, table[key], `key in table`, get, position, lookup_bulk,
 * lookup_bulk_into and get_bulk, calling libforkhost directly (a list or
 * tuple of keys: running the library's bulk lookup inline, from
 * csrc/lib/hash_core.h, with each key checked as it is hashed).  Each does
 * only the common case itself: keys that are bytes of exactly key_len (or
 * a list/tuple of them, or one packed buffer for the bulk calls), results
 * that are found or not found.  Everything else (another key type, a
 * wrong length, a sigs argument, keywords, any error the library returns)
 * is handed, with the same arguments, to the Python method of the same
 * name with "_slow" appended (HashTable._getitem_slow and so on), the
 * cffi code that checks and raises.  So there is one place that decides
 * what a bad argument raises, and both paths give the same results and
 * the same exceptions.
 *
 * Checked: _bind also takes the table's memzone slot and the generation
 * it had, and every fast path first loads the slot's generation (what
 * fh_memzone_gen does, inline) and compares: once the table was
 * destroyed, by any process, the call goes to its slow method, which
 * raises DestroyedError, and the table's memory is never touched, even if
 * a new table of the same name now lives at the same address.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#include "forkhost/hash.h"
#include "forkhost/memzone.h"
#include "hash_core.h"

typedef struct {
    PyObject_HEAD
    const struct fh_hash *h;    /* NULL until _bind: everything goes slow */
    Py_ssize_t key_len;
    _Atomic uint32_t *genp;     /* the gen word of the table's memzone slot */
    uint32_t gen;               /* its value when the table was found */
} TableBase;

/* True while the table lives (and is bound). */
static inline int live(const TableBase *t)
{
    /* Acquire, as fh_memzone_gen: pairs with the release stores of gen in
     * fh_memzone_reserve and fh_memzone_free, so a table seen alive here
     * was published before (its destroy frees the memzone last). */
    return t->h && atomic_load_explicit(t->genp, memory_order_acquire) == t->gen;
}

/* Method names of the slow paths, and array.array's type with a
 * one-element int32 and uint64 template for the result arrays. */
static PyObject *s_getitem, *s_contains, *s_get, *s_position;
static PyObject *s_bulk_into, *s_bulk, *s_get_bulk;
static PyObject *array_type, *zero_i, *zero_q;

/* Keys in one call's stack before the bulk calls take memory for them. */
#define STACK_KEYS FH_HASH_LOOKUP_BULK_MAX

/* key's bytes when it is bytes of the table's key_len, else NULL. */
static inline const char *key_bytes(const TableBase *t, PyObject *key)
{
    if (PyBytes_CheckExact(key) && PyBytes_GET_SIZE(key) == t->key_len)
        return PyBytes_AS_STRING(key);
    return NULL;
}

static inline const char *fast_key(const TableBase *t, PyObject *key)
{
    return live(t) ? key_bytes(t, key) : NULL;
}

/* self.<name>(*args, **kw) for the vectorcall arguments we were given. */
static PyObject *slow(PyObject *self, PyObject *name, PyObject *const *args,
                      Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *meth = PyObject_GetAttr(self, name), *r;

    if (meth == NULL)
        return NULL;
    r = PyObject_Vectorcall(meth, args, nargs, kwnames);
    Py_DECREF(meth);
    return r;
}

static PyObject *tb_subscript(PyObject *self, PyObject *key)
{
    TableBase *t = (TableBase *)self;
    const char *k = fast_key(t, key);

    if (k) {
        uint64_t d;
        int32_t rc = fh_hash_lookup_data(t->h, k, &d);
        if (rc >= 0)
            return PyLong_FromUnsignedLongLong(d);
        if (rc == -ENOENT) {
            PyErr_SetObject(PyExc_KeyError, key);
            return NULL;
        }
    }
    return PyObject_CallMethodOneArg(self, s_getitem, key);
}

static int tb_contains(PyObject *self, PyObject *key)
{
    TableBase *t = (TableBase *)self;
    const char *k = fast_key(t, key);
    PyObject *r;
    int v;

    if (k) {
        int32_t rc = fh_hash_lookup(t->h, k);
        if (rc >= 0)
            return 1;
        if (rc == -ENOENT)
            return 0;
    }
    r = PyObject_CallMethodOneArg(self, s_contains, key);
    if (r == NULL)
        return -1;
    v = PyObject_IsTrue(r);
    Py_DECREF(r);
    return v;
}

static PyObject *tb_get(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                        PyObject *kwnames)
{
    TableBase *t = (TableBase *)self;
    const char *k = kwnames == NULL && (nargs == 1 || nargs == 2)
                    ? fast_key(t, args[0]) : NULL;

    if (k) {
        uint64_t d;
        int32_t rc = fh_hash_lookup_data(t->h, k, &d);
        if (rc >= 0)
            return PyLong_FromUnsignedLongLong(d);
        if (rc == -ENOENT) {
            PyObject *dflt = nargs == 2 ? args[1] : Py_None;
            Py_INCREF(dflt);
            return dflt;
        }
    }
    return slow(self, s_get, args, nargs, kwnames);
}

static PyObject *tb_position(PyObject *self, PyObject *key)
{
    TableBase *t = (TableBase *)self;
    const char *k = fast_key(t, key);

    if (k) {
        int32_t rc = fh_hash_lookup(t->h, k);
        if (rc >= 0)
            return PyLong_FromLong(rc);
    }
    return PyObject_CallMethodOneArg(self, s_position, key);
}

/*
 * The keys of a bulk call, when they take the fast path: a list or tuple
 * of n keys (seq, the caller's argument, which keeps it alive), each key
 * checked inside the lookup itself (seq_key), or bytes, a bytearray, a
 * memoryview or an array.array of n * key_len bytes (packed, its buffer
 * in view).  1 when fast, 0 when not (nothing held, no exception set).
 */
struct keys {
    const void *packed;
    PyObject *seq;
    Py_ssize_t n;
    Py_buffer view;
    int has_view;
};

/* Start fetching a bytes object's header and its first bytes of data: two
 * lines when the object does not start a line, as pymalloc's 64-byte
 * blocks do not. */
static inline void prefetch_bytes(const PyObject *o)
{
    __builtin_prefetch(o, 0, 3);
    __builtin_prefetch((const char *)o + offsetof(PyBytesObject, ob_sval), 0, 3);
}

static void keys_release(struct keys *ks)
{
    if (ks->has_view)
        PyBuffer_Release(&ks->view);
    ks->has_view = 0;
}

static int keys_get(const TableBase *t, PyObject *keys, struct keys *ks)
{
    ks->packed = NULL;
    ks->seq = NULL;
    ks->has_view = 0;
    if (!live(t))
        return 0;
    if (PyList_CheckExact(keys) || PyTuple_CheckExact(keys)) {
        Py_ssize_t n = PySequence_Fast_GET_SIZE(keys);

        if (n > UINT32_MAX)
            return 0;
        ks->seq = keys;
        ks->n = n;
        return 1;
    }
    if (PyBytes_CheckExact(keys) || PyByteArray_CheckExact(keys)
        || PyMemoryView_Check(keys) || Py_IS_TYPE(keys, (PyTypeObject *)array_type)) {
        if (PyObject_GetBuffer(keys, &ks->view, PyBUF_SIMPLE) < 0) {
            PyErr_Clear();
            return 0;
        }
        ks->has_view = 1;
        if (ks->view.len % t->key_len || ks->view.len / t->key_len > UINT32_MAX) {
            PyBuffer_Release(&ks->view);
            ks->has_view = 0;
            return 0;
        }
        ks->packed = ks->view.buf;
        ks->n = ks->view.len / t->key_len;
        return 1;
    }
    return 0;
}

/*
 * A list's or tuple's keys, as ht_lookup_bulk's key source.  Each key is
 * checked (bytes of key_len) as the lookup reaches it, in the same pass
 * that hashes it and fetches its bucket: the key objects lie anywhere in
 * the heap, and a pass of their own would wait for their cache misses
 * apart from the table's.  A bad key stops the lookup (the caller then
 * takes the slow path, which says which key).
 */
struct seq_src {
    const TableBase *t;
    PyObject *const *items;
    fh_hash_fn fn;          /* the table's function, or fh_hash_crc32c */
    uint32_t klen, init;
};

static inline const unsigned char *seq_key(void *c, uint32_t i)
{
    const struct seq_src *s = c;
    return (const unsigned char *)key_bytes(s->t, s->items[i]);
}

static inline void seq_fetch(void *c, uint32_t i)
{
    prefetch_bytes(((const struct seq_src *)c)->items[i]);
}

#if defined(__x86_64__)
static int has_sse42;

static inline uint32_t seq_crc(void *c, uint32_t i, const unsigned char *k)
{
    const struct seq_src *s = c;
    return ht_crc32c_hw(k, s->klen, s->init);
}
#endif

static inline uint32_t seq_fn(void *c, uint32_t i, const unsigned char *k)
{
    const struct seq_src *s = c;
    return s->fn(k, s->klen, s->init);
}

/* The one-key lookup for what the bulk path leaves (a writer met, a key
 * past its home bucket): the library's. */
static int32_t seq_slow(const struct fh_hash *h, const void *k, uint32_t hash,
                        uint64_t *d)
{
    return fh_hash_lookup_with_hash_data(h, k, hash, d);
}

/* The keys' positions and data: the number found, or < 0 for the slow
 * path (a bad key, a table destroyed or a list's length changed since
 * keys_get, or an error the library reported).  Python code may have run
 * since keys_get (an exporter's getbuffer, a garbage collection while the
 * results were allocated) and destroyed the table or changed the list:
 * the table is checked here, and so is the list's length (the results
 * were sized by it); its items are taken now, whatever they became, and
 * each is checked as it is hashed.  Nothing from here to the end of the
 * lookup runs Python code. */
static int keys_lookup(const TableBase *t, const struct keys *ks,
                       int32_t *pos, uint64_t *data)
{
    const struct fh_hash *h = t->h;
    struct seq_src s;

    if (!live(t))
        return -1;
    if (!ks->seq)
        return fh_hash_lookup_bulk_data(h, ks->packed, (uint32_t)ks->n, pos, data);
    if (PySequence_Fast_GET_SIZE(ks->seq) != ks->n)
        return -1;
    s = (struct seq_src){ t, PySequence_Fast_ITEMS(ks->seq), fh_hash_crc32c,
                          h->key_len, h->init_val };
    if (h->fn_kind == HT_FN_BUILTIN) {
#if defined(__x86_64__)
        if (has_sse42)
            return ht_lookup_bulk(h, &s, (uint32_t)ks->n, seq_key, seq_fetch,
                                  seq_crc, seq_slow, pos, data);
#endif
    } else {
        /* Once per call: may this process call the table's function? */
        if (fh_hash_check(h) < 0)
            return -1;
        s.fn = (fh_hash_fn)(uintptr_t)h->fn_addr;
    }
    return ht_lookup_bulk(h, &s, (uint32_t)ks->n, seq_key, seq_fetch, seq_fn,
                          seq_slow, pos, data);
}

/* A writable contiguous buffer of at least n elements of size, or 0. */
static int out_buffer(PyObject *o, Py_buffer *v, Py_ssize_t n, Py_ssize_t size)
{
    if (PyObject_GetBuffer(o, v, PyBUF_WRITABLE) < 0) {
        PyErr_Clear();
        return 0;
    }
    if (v->len / size < n) {
        PyBuffer_Release(v);
        return 0;
    }
    return 1;
}

/* keys_lookup for a list or tuple into the caller's buffers, through
 * scratch arrays: a bad key met midway leaves the buffers as they were,
 * as the slow path does, which checks every key first. */
static int seq_lookup_into(const TableBase *t, const struct keys *ks,
                           int32_t *pos, uint64_t *data)
{
    int32_t pos_stack[STACK_KEYS], *p = pos_stack;
    uint64_t data_stack[STACK_KEYS], *d = data ? data_stack : NULL;
    int rc = -1;

    if (ks->n == 0)
        return keys_lookup(t, ks, pos, data);
    if (ks->n > STACK_KEYS) {
        p = PyMem_Malloc((size_t)ks->n * sizeof *p);
        d = data ? PyMem_Malloc((size_t)ks->n * sizeof *d) : NULL;
    }
    if (p && (d || !data) && (rc = keys_lookup(t, ks, p, d)) >= 0) {
        memcpy(pos, p, (size_t)ks->n * sizeof *p);
        if (data)
            memcpy(data, d, (size_t)ks->n * sizeof *d);
    }
    if (p != pos_stack) {
        PyMem_Free(p);
        PyMem_Free(d);
    }
    return rc;
}

static PyObject *tb_lookup_bulk_into(PyObject *self, PyObject *const *args,
                                     Py_ssize_t nargs, PyObject *kwnames)
{
    TableBase *t = (TableBase *)self;
    Py_buffer pv, dv;
    struct keys ks;
    int rc, has_data;

    if (kwnames != NULL || nargs < 2 || nargs > 4
        || (nargs == 4 && args[3] != Py_None))
        return slow(self, s_bulk_into, args, nargs, kwnames);
    if (!keys_get(t, args[0], &ks))
        return slow(self, s_bulk_into, args, nargs, kwnames);
    has_data = nargs >= 3 && args[2] != Py_None;
    if (!out_buffer(args[1], &pv, ks.n, sizeof(int32_t))) {
        keys_release(&ks);
        return slow(self, s_bulk_into, args, nargs, kwnames);
    }
    if (has_data && !out_buffer(args[2], &dv, ks.n, sizeof(uint64_t))) {
        PyBuffer_Release(&pv);
        keys_release(&ks);
        return slow(self, s_bulk_into, args, nargs, kwnames);
    }
    rc = ks.seq ? seq_lookup_into(t, &ks, pv.buf, has_data ? dv.buf : NULL)
                : keys_lookup(t, &ks, pv.buf, has_data ? dv.buf : NULL);
    if (has_data)
        PyBuffer_Release(&dv);
    PyBuffer_Release(&pv);
    keys_release(&ks);
    if (rc < 0)
        return slow(self, s_bulk_into, args, nargs, kwnames);
    return PyLong_FromLong(rc);
}

/* array(typecode, bytes(n * itemsize)), as the Python code makes it. */
static PyObject *zeros(PyObject *one, Py_ssize_t n)
{
    return PySequence_Repeat(one, n);
}

static void *array_data(PyObject *a)
{
    Py_buffer v;
    void *p;

    /* An array's buffer stays put while nobody resizes it, and nobody else
     * has it yet. */
    if (PyObject_GetBuffer(a, &v, PyBUF_SIMPLE) < 0)
        return NULL;
    p = v.buf;
    PyBuffer_Release(&v);
    return p;
}

static PyObject *tb_lookup_bulk(PyObject *self, PyObject *const *args,
                                Py_ssize_t nargs, PyObject *kwnames)
{
    TableBase *t = (TableBase *)self;
    PyObject *pos = NULL, *data = NULL, *r;
    int32_t *pp = NULL;
    uint64_t *dp = NULL;
    struct keys ks;
    int rc;

    if (kwnames != NULL || nargs < 1 || nargs > 2
        || (nargs == 2 && args[1] != Py_None))
        return slow(self, s_bulk, args, nargs, kwnames);
    if (!keys_get(t, args[0], &ks))
        return slow(self, s_bulk, args, nargs, kwnames);
    pos = zeros(zero_i, ks.n);
    data = pos ? zeros(zero_q, ks.n) : NULL;
    if (data == NULL || (ks.n && (!(pp = array_data(pos)) || !(dp = array_data(data)))))
        goto fail;
    rc = keys_lookup(t, &ks, pp, dp);
    keys_release(&ks);
    if (rc < 0) {
        Py_DECREF(pos);
        Py_DECREF(data);
        return slow(self, s_bulk, args, nargs, kwnames);
    }
    r = PyTuple_Pack(2, pos, data);
    Py_DECREF(pos);
    Py_DECREF(data);
    return r;
fail:
    keys_release(&ks);
    Py_XDECREF(pos);
    Py_XDECREF(data);
    return NULL;
}

static PyObject *tb_get_bulk(PyObject *self, PyObject *const *args,
                             Py_ssize_t nargs, PyObject *kwnames)
{
    TableBase *t = (TableBase *)self;
    int32_t pos_stack[STACK_KEYS], *pos = pos_stack;
    uint64_t data_stack[STACK_KEYS], *data = data_stack;
    PyObject *dflt, *list = NULL;
    struct keys ks;
    int rc;

    if (kwnames != NULL || nargs < 1 || nargs > 2)
        return slow(self, s_get_bulk, args, nargs, kwnames);
    dflt = nargs == 2 ? args[1] : Py_None;
    if (!keys_get(t, args[0], &ks))
        return slow(self, s_get_bulk, args, nargs, kwnames);
    if (ks.n > STACK_KEYS) {
        pos = PyMem_Malloc((size_t)ks.n * sizeof *pos);
        data = PyMem_Malloc((size_t)ks.n * sizeof *data);
    }
    /* No memory: the slow path, which also says which key is bad, if one
     * is (it checks them before it needs memory). */
    rc = pos && data ? keys_lookup(t, &ks, pos, data) : -1;
    if (rc < 0) {
        keys_release(&ks);
        if (pos != pos_stack) {
            PyMem_Free(pos);
            PyMem_Free(data);
        }
        return slow(self, s_get_bulk, args, nargs, kwnames);
    }
    list = PyList_New(ks.n);
    for (Py_ssize_t i = 0; list && i < ks.n; i++) {
        PyObject *v;
        if (pos[i] >= 0) {
            v = PyLong_FromUnsignedLongLong(data[i]);
            if (v == NULL) {
                Py_CLEAR(list);
                break;
            }
        } else {
            v = dflt;
            Py_INCREF(v);
        }
        PyList_SET_ITEM(list, i, v);
    }
    keys_release(&ks);
    if (pos != pos_stack) {
        PyMem_Free(pos);
        PyMem_Free(data);
    }
    return list;
}

static PyObject *tb_bind(PyObject *self, PyObject *args)
{
    TableBase *t = (TableBase *)self;
    PyObject *addr, *mzaddr;
    unsigned long gen;
    struct fh_memzone *mz;
    void *p;

    if (!PyArg_ParseTuple(args, "OOk:_bind", &addr, &mzaddr, &gen))
        return NULL;
    p = PyLong_AsVoidPtr(addr);
    mz = p ? PyLong_AsVoidPtr(mzaddr) : NULL;
    if (p == NULL || mz == NULL || gen > UINT32_MAX) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "_bind: NULL table or memzone, "
                            "or gen not a uint32");
        return NULL;
    }
    /* The cast fh_memzone_gen makes: the word is written atomically. */
    t->genp = (_Atomic uint32_t *)&mz->gen;
    t->gen = (uint32_t)gen;
    t->key_len = (Py_ssize_t)fh_hash_key_len(p);
    t->h = p;
    Py_RETURN_NONE;
}

static PyMethodDef tb_methods[] = {
    {"_bind", tb_bind, METH_VARARGS,
     "_bind(address, memzone, gen): the struct fh_hash * this object stands\n"
     "for, its memzone's slot and that slot's generation."},
    {"get", (PyCFunction)(void (*)(void))tb_get, METH_FASTCALL | METH_KEYWORDS,
     "get(key, default=None): the data of key, or default."},
    {"position", tb_position, METH_O,
     "position(key): the position of key; KeyError if absent."},
    {"lookup_bulk", (PyCFunction)(void (*)(void))tb_lookup_bulk,
     METH_FASTCALL | METH_KEYWORDS,
     "lookup_bulk(keys, sigs=None): look up many keys in one call: a list of\n"
     "keys or one buffer of n * key_len bytes; sigs (optional) their\n"
     "precomputed hashes.  Returns (positions array('i'), data array('Q')):\n"
     "a missing key has a negative position and data 0."},
    {"lookup_bulk_into", (PyCFunction)(void (*)(void))tb_lookup_bulk_into,
     METH_FASTCALL | METH_KEYWORDS,
     "lookup_bulk_into(keys, positions, data=None, sigs=None): like\n"
     "lookup_bulk into caller-owned writable buffers (int32 and uint64, at\n"
     "least as many as keys); returns the number found."},
    {"get_bulk", (PyCFunction)(void (*)(void))tb_get_bulk,
     METH_FASTCALL | METH_KEYWORDS,
     "get_bulk(keys, default=None): the data of each key, default for\n"
     "missing ones (a list)."},
    {NULL, NULL, 0, NULL}
};

static PyMappingMethods tb_as_mapping = {
    .mp_subscript = tb_subscript,
};

static PySequenceMethods tb_as_sequence = {
    .sq_contains = tb_contains,
};

static PyTypeObject TableBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "forkhost._native._hashfast.TableBase",
    .tp_basicsize = sizeof(TableBase),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "The C lookups of forkhost.shm.HashTable (its base type).",
    .tp_new = PyType_GenericNew,
    .tp_methods = tb_methods,
    .tp_as_mapping = &tb_as_mapping,
    .tp_as_sequence = &tb_as_sequence,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "forkhost._native._hashfast",
    "The hot lookups of forkhost.shm.HashTable in C.", -1, NULL,
    NULL, NULL, NULL, NULL
};

static PyObject *intern(const char *s)
{
    return PyUnicode_InternFromString(s);
}

PyMODINIT_FUNC PyInit__hashfast(void);

PyMODINIT_FUNC PyInit__hashfast(void)
{
    PyObject *m, *arr;

    if (PyType_Ready(&TableBaseType) < 0)
        return NULL;
#if defined(__x86_64__)
    /* As libforkhost decides for its own lookups (cpuid, SSE4.2). */
    __builtin_cpu_init();
    has_sse42 = __builtin_cpu_supports("sse4.2");
#endif
    if (!(s_getitem = intern("_getitem_slow")) || !(s_contains = intern("_contains_slow"))
        || !(s_get = intern("_get_slow")) || !(s_position = intern("_position_slow"))
        || !(s_bulk_into = intern("_lookup_bulk_into_slow"))
        || !(s_bulk = intern("_lookup_bulk_slow"))
        || !(s_get_bulk = intern("_get_bulk_slow")))
        return NULL;
    arr = PyImport_ImportModule("array");
    if (arr == NULL)
        return NULL;
    array_type = PyObject_GetAttrString(arr, "array");
    Py_DECREF(arr);
    if (array_type == NULL)
        return NULL;
    zero_i = PyObject_CallFunction(array_type, "s(i)", "i", 0);
    zero_q = zero_i ? PyObject_CallFunction(array_type, "s(i)", "Q", 0) : NULL;
    if (zero_q == NULL)
        return NULL;
    m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&TableBaseType);
    if (PyModule_AddObject(m, "TableBase", (PyObject *)&TableBaseType) < 0) {
        Py_DECREF(&TableBaseType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
