/* wanvideo_vae._C: the Python boundary. Arrays come in through __array_interface__ or
 * __cuda_array_interface__ (versions 2 and 3); status codes become exceptions here and only here;
 * the GIL is released while weights convert and while the decoder runs. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

#include <float.h>
#include <math.h>
#include <string.h>

#include "wv_backend.h"
#include "wv_env_gil.h"
#include "wv_internal.h"

static PyObject *WvError;       /* wanvideo_vae.WanVAEError (ValueError) */
static PyObject *WvInterrupted; /* subclass of WvError */
static PyObject *WvDeviceMemory; /* wanvideo_vae.DeviceMemoryError (MemoryError) */

static PyObject *raise_status(const wv_error *err)
{
    PyObject *type = err->code == WV_ERR_NOMEM          ? PyExc_MemoryError
                     : err->code == WV_ERR_NOMEM_DEVICE ? WvDeviceMemory
                     : err->code == WV_ERR_INTERRUPTED  ? WvInterrupted
                                                        : WvError;
    /* %s decodes with "replace": a message cut at its buffer's end may end inside a UTF-8 character */
    PyErr_Format(type, "%s", err->msg[0] ? err->msg : "wanvideo_vae: unknown error");
    return NULL;
}

/* ---- array interface parsing ------------------------------------------------------------- */

/* A parsed array plus the object that owns its memory. */
typedef struct {
    wv_view view;
    PyObject *owner;
    long long stream; /* CAI v3 stream handle, 0 when absent */
} py_array;

static int parse_typestr(PyObject *typestr, const char *what, wv_dtype *dt)
{
    const char *s = PyUnicode_Check(typestr) ? PyUnicode_AsUTF8(typestr) : NULL;
    if (!s) {
        PyErr_Format(WvError, "%s: typestr is not a string", what);
        return -1;
    }
    if (!wv_dtype_from_typestr(s, dt)) {
        PyErr_Format(WvError, "%s: unsupported dtype (typestr '%s'); expected float32, float16 or bfloat16",
                     what, s);
        return -1;
    }
    return 0;
}

/* Whether the nonzero extents multiply past 2**56: then neither the element count nor the bytes of a
 * default stride (8-byte elements at most; an empty array's too) would fit in 64 bits. */
static int extents_too_large(const wv_view *v)
{
    const int64_t most = (int64_t)1 << 56;
    int64_t n = 1;
    for (int d = 0; d < v->ndim; d++) {
        if (v->shape[d] == 0) continue;
        if (n > most / v->shape[d]) return 1;
        n *= v->shape[d];
    }
    return 0;
}

/* Whether the last element lies past 2**56 bytes from the first: strides that large (a malformed
 * interface; no array is that big) would overflow the offsets computed from them. */
static int span_too_large(const wv_view *v)
{
    const int64_t most = (int64_t)1 << 56;
    int64_t span = 0;
    if (wv_view_numel(v) == 0) return 0;
    for (int d = 0; d < v->ndim; d++) {
        int64_t n = v->shape[d] - 1;
        if (n > 0 && v->strides[d] > (most - span) / n) return 1;
        span += n * v->strides[d];
    }
    return 0;
}

/* An int of the array interface; anything else (a float, a 65-bit int) is the interface's fault. */
static int interface_int(PyObject *o, const char *what, const char *field, long long *out)
{
    *out = PyLong_AsLongLong(o);
    if (*out != -1 || !PyErr_Occurred()) return 0;
    if (!PyErr_ExceptionMatches(PyExc_TypeError) && !PyErr_ExceptionMatches(PyExc_OverflowError)) return -1;
    PyErr_Clear();
    PyErr_Format(WvError, "%s: array interface '%s' holds %R, not a 64-bit int", what, field, o);
    return -1;
}

/* iface[key], a reference of ours (a lookup runs the keys' __eq__, and a shape item's __index__ runs too:
 * Python code that may drop the dict's own); NULL when absent, or with the lookup's exception set. */
static PyObject *interface_item(PyObject *iface, const char *key)
{
    PyObject *name = PyUnicode_FromString(key), *item;
    if (!name) return NULL;
    item = PyDict_GetItemWithError(iface, name);
    Py_DECREF(name);
    Py_XINCREF(item);
    return item;
}

static int parse_shape(PyObject *iface, const char *what, wv_view *v)
{
    PyObject *shape = interface_item(iface, "shape");
    int rc = -1;
    if (!shape || !PyTuple_Check(shape)) {
        if (!PyErr_Occurred()) PyErr_Format(WvError, "%s: array interface has no 'shape' tuple", what);
        goto done;
    }
    if (PyTuple_GET_SIZE(shape) > WV_MAX_DIMS) {
        PyErr_Format(WvError, "%s: %zd dimensions is too many", what, PyTuple_GET_SIZE(shape));
        goto done;
    }
    v->ndim = (int)PyTuple_GET_SIZE(shape);
    for (int d = 0; d < v->ndim; d++) {
        long long e;
        if (interface_int(PyTuple_GET_ITEM(shape, d), what, "shape", &e)) goto done;
        if (e < 0) {
            PyErr_Format(WvError, "%s: negative extent %lld on axis %d", what, e, d);
            goto done;
        }
        v->shape[d] = e;
    }
    if (extents_too_large(v)) {
        PyErr_Format(WvError, "%s: extents multiply past 2**56 (a shape of %d dimensions)", what, v->ndim);
        goto done;
    }
    rc = 0;
done:
    Py_XDECREF(shape);
    return rc;
}

static int parse_strides(PyObject *iface, const char *what, wv_view *v)
{
    PyObject *strides = interface_item(iface, "strides");
    int64_t step = (int64_t)wv_dtype_size(v->dtype);
    int rc = -1;
    if (!strides && PyErr_Occurred()) return -1;
    if (!strides || strides == Py_None) {
        for (int d = v->ndim - 1; d >= 0; d--) {
            v->strides[d] = step;
            step *= v->shape[d];
        }
        rc = 0;
        goto done;
    }
    if (!PyTuple_Check(strides) || PyTuple_GET_SIZE(strides) != v->ndim) {
        PyErr_Format(WvError, "%s: 'strides' must be None or a tuple of %d ints", what, v->ndim);
        goto done;
    }
    for (int d = 0; d < v->ndim; d++) {
        long long s;
        if (interface_int(PyTuple_GET_ITEM(strides, d), what, "strides", &s)) goto done;
        if (s < 0) {
            PyErr_Format(WvError, "%s: negative stride %lld on axis %d is not supported", what, s, d);
            goto done;
        }
        if (s % (long long)wv_dtype_size(v->dtype)) {
            PyErr_Format(WvError, "%s: stride %lld on axis %d is not a multiple of the element size", what, s, d);
            goto done;
        }
        v->strides[d] = s;
    }
    if (span_too_large(v)) {
        PyErr_Format(WvError, "%s: strides put the last element past 2**56 bytes from the first", what);
        goto done;
    }
    rc = 0;
done:
    Py_XDECREF(strides);
    return rc;
}

static int parse_data(PyObject *iface, const char *what, py_array *a)
{
    PyObject *data = interface_item(iface, "data");
    PyObject *ptr;
    unsigned long long addr;
    int rc = -1;
    if (!data || !PyTuple_Check(data) || PyTuple_GET_SIZE(data) != 2) {
        if (!PyErr_Occurred())
            PyErr_Format(WvError, "%s: array interface 'data' must be a (pointer, read_only) tuple", what);
        goto done;
    }
    ptr = PyTuple_GET_ITEM(data, 0);
    if (!PyLong_Check(ptr)) {
        PyErr_Format(WvError, "%s: array interface data pointer must be an int, not %.80s", what, Py_TYPE(ptr)->tp_name);
        goto done;
    }
    addr = PyLong_AsUnsignedLongLong(ptr); /* PyLong_AsVoidPtr would take -1 as the top of memory */
    if ((addr == (unsigned long long)-1 && PyErr_Occurred()) || addr > UINTPTR_MAX) {
        PyErr_Clear();
        PyErr_Format(WvError, "%s: data pointer %R is not an address (negative, or past this platform's pointers)",
                     what, ptr);
        goto done;
    }
    a->view.data = (void *)(uintptr_t)addr;
    if (!a->view.data && wv_view_numel(&a->view) > 0) {
        PyErr_Format(WvError, "%s: null data pointer for a non-empty array", what);
        goto done;
    }
    if (a->view.on_device && (uintptr_t)a->view.data % wv_dtype_size(a->view.dtype)) { /* a fault on the GPU */
        char hex[32]; /* %p pads with zeros on Windows */
        snprintf(hex, sizeof hex, "0x%llx", (unsigned long long)(uintptr_t)a->view.data);
        PyErr_Format(WvError, "%s: data pointer %s is not aligned to its %d-byte elements", what, hex,
                     (int)wv_dtype_size(a->view.dtype));
        goto done;
    }
    rc = 0;
done:
    Py_XDECREF(data);
    return rc;
}

static int parse_stream(PyObject *iface, const char *what, py_array *a)
{
    PyObject *stream = interface_item(iface, "stream");
    int rc = -1;
    a->stream = 0;
    if (!stream || stream == Py_None) { /* none given: the decode waits for the legacy default stream */
        rc = stream || !PyErr_Occurred() ? 0 : -1;
        goto done;
    }
    if (interface_int(stream, what, "stream", &a->stream)) goto done;
    if (a->stream == 0)
        PyErr_Format(WvError, "%s: CUDA array interface stream 0 is disallowed by the protocol", what);
    else if (a->stream < 0)
        PyErr_Format(WvError, "%s: CUDA array interface stream %lld is not a stream (1: legacy default, 2: per-thread "
                              "default, else a cudaStream_t)", what, a->stream);
    else
        rc = 0;
done:
    Py_XDECREF(stream);
    return rc;
}

/* "V2" is bfloat16 as raw 2-byte items only: a structured dtype of two bytes (named fields) is not. */
static int check_unstructured(PyObject *iface, const char *what)
{
    PyObject *descr = interface_item(iface, "descr");
    int rc = descr || !PyErr_Occurred() ? 0 : -1;
    for (Py_ssize_t i = 0; descr && PyList_Check(descr) && i < PyList_GET_SIZE(descr) && !rc; i++) {
        PyObject *field = PyList_GET_ITEM(descr, i);
        PyObject *name = PyTuple_Check(field) && PyTuple_GET_SIZE(field) > 0 ? PyTuple_GET_ITEM(field, 0) : NULL;
        if (name && PyUnicode_Check(name) && PyUnicode_GET_LENGTH(name) > 0) {
            PyErr_Format(WvError, "%s: a structured dtype (fields) is not bfloat16; expected float32, float16 or "
                                  "bfloat16", what);
            rc = -1;
        }
    }
    Py_XDECREF(descr);
    return rc;
}

/* Fills `a` from obj.__cuda_array_interface__ or obj.__array_interface__; a->owner keeps obj alive. */
static int parse_array(PyObject *obj, const char *what, py_array *a)
{
    PyObject *iface = NULL, *typestr = NULL, *mask = NULL;
    int on_device = 1, rc = -1;
    memset(a, 0, sizeof *a);
    iface = PyObject_GetAttrString(obj, "__cuda_array_interface__");
    if (!iface) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) return -1; /* e.g. torch: "requires grad" */
        PyErr_Clear();
        on_device = 0;
        iface = PyObject_GetAttrString(obj, "__array_interface__");
    }
    if (!iface) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) return -1; /* KeyboardInterrupt, MemoryError */
        PyErr_Clear();
        PyErr_Format(WvError, "%s: expected an array (NumPy array or an object with __array_interface__ or "
                              "__cuda_array_interface__), got %.80s",
                     what, Py_TYPE(obj)->tp_name);
        return -1;
    }
    if (!PyDict_Check(iface)) {
        PyErr_Format(WvError, "%s: array interface is not a dict", what);
        goto finally;
    }
    if (!(typestr = interface_item(iface, "typestr"))) {
        if (!PyErr_Occurred()) PyErr_Format(WvError, "%s: array interface has no 'typestr'", what);
        goto finally;
    }
    if (!(mask = interface_item(iface, "mask")) && PyErr_Occurred()) goto finally;
    if (mask && mask != Py_None) {
        PyErr_Format(WvError, "%s: masked arrays are not supported", what);
        goto finally;
    }
    a->view.on_device = on_device;
    if (parse_typestr(typestr, what, &a->view.dtype) ||
        (a->view.dtype == WV_BF16 && check_unstructured(iface, what)) || parse_shape(iface, what, &a->view) ||
        parse_strides(iface, what, &a->view) || parse_data(iface, what, a) ||
        (on_device && parse_stream(iface, what, a)))
        goto finally;
    Py_INCREF(obj);
    a->owner = obj;
    rc = 0;
finally:
    Py_XDECREF(mask);
    Py_XDECREF(typestr);
    Py_XDECREF(iface);
    return rc;
}

static void py_array_release(py_array *a)
{
    Py_CLEAR(a->owner);
}

static int parse_floats(PyObject *seq, const char *what, int n, float *out)
{
    PyObject *fast = PySequence_Tuple(seq); /* a snapshot: __float__ may change a list */
    if (!fast) {
        if (!PyErr_ExceptionMatches(PyExc_TypeError)) return -1; /* the iterable's own error, or Ctrl-C */
        PyErr_Clear();
        PyErr_Format(WvError, "%s must be a sequence of %d floats", what, n);
        return -1;
    }
    if (PySequence_Fast_GET_SIZE(fast) != n) {
        PyErr_Format(WvError, "%s has %zd values; the weights have z_dim=%d", what, PySequence_Fast_GET_SIZE(fast), n);
        Py_DECREF(fast);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(fast, i);
        double v = PyFloat_AsDouble(item);
        if (v == -1.0 && PyErr_Occurred()) {
            Py_DECREF(fast);
            return -1;
        }
        if (!(fabs(v) <= FLT_MAX)) { /* NaN too; beyond FLT_MAX the cast to float is undefined */
            PyErr_Format(WvError, "%s[%d] = %R is not a finite float32 value", what, i, item);
            Py_DECREF(fast);
            return -1;
        }
        out[i] = (float)v;
    }
    Py_DECREF(fast);
    return 0;
}

/* ---- Model ------------------------------------------------------------------------------- */

/* Forks this process has been through (each child counts its parent's and its own); see _after_fork. */
static long g_forks;

typedef struct {
    PyObject_HEAD
    wv_model model;
    int built;    /* built once: a Model never changes after __init__ */
    int building; /* __init__ is building it (with the GIL released) */
    int closed;   /* close() freed the backend's weights and context; the description stays readable */
    PyThread_type_lock lock; /* one decode at a time: the backend context lives with the model */
    unsigned long owner;     /* the thread decoding (holding lock), valid while decoding is set */
    long taken_in;           /* g_forks when the lock was taken: a decode of the parent process when older */
    long lock_forks;         /* g_forks when lock was made: a parent's when older, which a thread of the
                                parent may have held (taking or letting go of it) as it forked */
    int decoding;
} ModelObject;

static int parse_precision(const char *s, wv_dtype *dt)
{
    if (wv_dtype_from_name(s, dt)) return 0;
    PyErr_Format(WvError, "precision '%s' is not one of 'fp32', 'fp16', 'bf16'", s);
    return -1;
}

/* The CUDA backend lives in its own extension, wanvideo_vae._cuda, so that this module loads
 * where the CUDA libraries do not. It hands over its tables in a capsule. */
static const wv_backend_set *cuda_set(void)
{
    PyObject *mod = PyImport_ImportModule("wanvideo_vae._cuda"); /* PyCapsule_Import imports no submodule */
    const wv_backend_set *set = mod ? (const wv_backend_set *)PyCapsule_Import(WV_BACKEND_CAPSULE, 0) : NULL;
    PyObject *type, *value, *tb, *text;
    Py_XDECREF(mod); /* sys.modules keeps it */
    if (set && set->abi == WV_BACKEND_ABI) return set;
    if (set) {
        PyErr_Format(WvError, "backend 'cuda' was built for another version of wanvideo_vae (ABI %d, expected %d); "
                              "reinstall the package", set->abi, WV_BACKEND_ABI);
        return NULL;
    }
    PyErr_Fetch(&type, &value, &tb);
    text = value ? PyObject_Str(value) : NULL;
    if (text) /* %S: the loader's message may hold lone surrogates (a path that is not UTF-8) */
        PyErr_Format(WvError, "backend 'cuda' is not available: %S (see wanvideo_vae.backends())", text);
    else
        PyErr_SetString(WvError, "backend 'cuda' is not available: wanvideo_vae._cuda could not be loaded "
                                 "(see wanvideo_vae.backends())");
    Py_XDECREF(text);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    return NULL;
}

static const wv_backend *cuda_backend(wv_dtype dt)
{
    const wv_backend_set *set = cuda_set();
    if (!set) return NULL;
    if (!set->by_dtype[dt])
        PyErr_Format(WvError, "backend 'cuda' does not compute in %s", wv_dtype_precision(dt));
    return set->by_dtype[dt];
}

/* The precisions of the tables a backend has, in wv_dtype order. */
static PyObject *precision_list(const wv_backend *const *by_dtype)
{
    PyObject *list = PyList_New(0);
    for (int dt = 0; list && dt < WV_DTYPE_COUNT; dt++) {
        PyObject *name;
        if (!by_dtype[dt]) continue;
        name = PyUnicode_FromString(wv_dtype_precision((wv_dtype)dt));
        if (!name || PyList_Append(list, name)) Py_CLEAR(list);
        Py_XDECREF(name);
    }
    return list;
}

/* name + precision (NULL: the backend's default, fp32 on the CPU and bf16 on CUDA) -> table. */
static const wv_backend *backend_by_name(const char *name, const char *precision)
{
    wv_dtype dt = WV_F32;
    if (!strcmp(name, "cpu")) {
        if (precision && (parse_precision(precision, &dt) || dt != WV_F32)) {
            if (!PyErr_Occurred())
                PyErr_Format(WvError, "the CPU backend computes in fp32 only (precision '%s' asked)", precision);
            return NULL;
        }
        return wv_backend_cpu();
    }
    if (!strcmp(name, "cuda")) {
        dt = WV_BF16;
        if (precision && parse_precision(precision, &dt)) return NULL;
        return cuda_backend(dt);
    }
    PyErr_Format(WvError, "backend '%s' is not one of 'cpu', 'cuda' (see wanvideo_vae.backends())", name);
    return NULL;
}

/* The weights as views, from a snapshot of the dict (*items, which keeps the keys' text alive while
 * the build runs without the GIL, whatever happens to the dict meanwhile). */
static int collect_weights(PyObject *weights, PyObject **items, wv_named_view **views, py_array **arrays,
                           Py_ssize_t *count)
{
    Py_ssize_t n;
    *count = 0;
    if (!PyDict_Check(weights)) {
        PyErr_SetString(WvError, "weights must be a dict mapping checkpoint keys to arrays");
        return -1;
    }
    if (!(*items = PyDict_Items(weights))) return -1;
    n = PyList_GET_SIZE(*items);
    *views = (wv_named_view *)PyMem_Calloc((size_t)(n ? n : 1), sizeof(wv_named_view));
    *arrays = (py_array *)PyMem_Calloc((size_t)(n ? n : 1), sizeof(py_array));
    if (!*views || !*arrays) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *key = PyTuple_GET_ITEM(PyList_GET_ITEM(*items, i), 0);
        PyObject *value = PyTuple_GET_ITEM(PyList_GET_ITEM(*items, i), 1);
        const char *k;
        Py_ssize_t k_bytes;
        char what[160];
        if (!PyUnicode_Check(key)) {
            PyErr_Format(WvError, "weights: every key must be a str, got %.80s", Py_TYPE(key)->tp_name);
            return -1;
        }
        if (!(k = PyUnicode_AsUTF8AndSize(key, &k_bytes))) {
            PyErr_Clear();
            PyErr_Format(WvError, "weights: key %R is not valid Unicode text (it cannot be encoded as UTF-8)", key);
            return -1;
        }
        if ((Py_ssize_t)strlen(k) != k_bytes) { /* the core reads keys as C strings: it would stop at the NUL */
            PyErr_Format(WvError, "weights: key %R holds a NUL character (no decoder key does: a damaged checkpoint?)",
                         key);
            return -1;
        }
        snprintf(what, sizeof what, "weight '%s'", k);
        if (parse_array(value, what, &(*arrays)[i])) return -1;
        (*views)[i].key = k;
        (*views)[i].view = (*arrays)[i].view;
        *count = i + 1;
    }
    return 0;
}

static int Model_init(ModelObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"weights", "backend", "precision", "device", NULL};
    PyObject *weights, *items = NULL;
    const char *backend_name = "cpu", *precision = NULL;
    int device = -1;
    const wv_backend *be;
    wv_named_view *views = NULL;
    py_array *arrays = NULL;
    Py_ssize_t count = 0;
    wv_error err = {WV_OK, ""};
    wv_status st;
    int rc = -1;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|szi:Model", kwlist, &weights, &backend_name, &precision, &device))
        return -1;
    if (!self->lock) {
        if (!(self->lock = PyThread_allocate_lock())) {
            PyErr_NoMemory();
            return -1;
        }
        self->lock_forks = g_forks;
    }
    if (self->built || self->building) { /* readers use the model without the lock: it never changes */
        PyErr_SetString(WvError, "a Model is built once; create a new Model for other weights");
        return -1;
    }
    self->building = 1; /* finding a backend (an import) and reading a weight run Python code, which may call
                           __init__ again, from this thread or another */
    Py_INCREF(weights);  /* borrowed from a keyword dict the caller may empty meanwhile (a C caller's own) */
    if (!(be = backend_by_name(backend_name, precision)) || collect_weights(weights, &items, &views, &arrays, &count))
        goto finally;
    Py_BEGIN_ALLOW_THREADS
    st = wv_model_build(&self->model, be, device, views, (int)count, &err);
    Py_END_ALLOW_THREADS
    if (st) {
        raise_status(&err);
        goto finally;
    }
    self->built = 1;
    rc = 0;
finally:
    self->building = 0;
    for (Py_ssize_t i = 0; arrays && i < count; i++) py_array_release(&arrays[i]);
    PyMem_Free(arrays);
    PyMem_Free(views);
    Py_XDECREF(items);
    Py_DECREF(weights);
    return rc;
}

/* Freeing device memory waits for the device to be idle: other threads run meanwhile, as in close().
 * A model a parent's thread held when this process forked from it may be half freed (a close) or in
 * use: it is left as it is, and so is the lock that thread held. */
static void Model_dealloc(ModelObject *self)
{
    int parents = self->decoding && self->taken_in != g_forks;
    if (self->built && !parents) {
        Py_BEGIN_ALLOW_THREADS
        wv_model_free(&self->model);
        Py_END_ALLOW_THREADS
    }
    if (self->lock && !parents) PyThread_free_lock(self->lock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

#define MAX_LATENT_EXTENT 100000 /* T, h, w: larger ones are mistakes, and would overflow frame counts */

static int require_built(ModelObject *self)
{
    if (self->built) return 0;
    PyErr_SetString(WvError, "Model is not initialised");
    return -1;
}

static PyObject *rect_tuple(const wv_rect *r)
{
    return Py_BuildValue("(iiii)", r->y.lo, r->y.hi, r->x.lo, r->x.hi);
}

static int dict_set(PyObject *d, const char *key, PyObject *value)
{
    int rc = value ? PyDict_SetItemString(d, key, value) : -1;
    Py_XDECREF(value);
    return rc;
}

static PyObject *segment_item(const wv_plan *p, const wv_model *m, int s)
{
    const wv_segment *sg = &p->seg[s];
    return Py_BuildValue("{s:s,s:i,s:i,s:i}", "first_block", m->blocks[sg->first_block].prefix, "scale", sg->scale,
                         "halo", sg->halo, "frames_per_chunk", sg->frames_per_chunk);
}

static PyObject *buffer_item(const wv_plan *p, const wv_model *m, int i)
{
    char name[192];
    return Py_BuildValue("(sn)", wv_plan_buffer_name(p, m, i, name, sizeof name), (Py_ssize_t)p->buffers[i].bytes);
}

static PyObject *tile_core_item(const wv_plan *p, const wv_model *m, int t)
{
    (void)m;
    return rect_tuple(&p->tiles[t].core);
}

/* [item(p, m, i) for i < n] */
static PyObject *plan_list(const wv_plan *p, const wv_model *m, int n,
                           PyObject *(*item)(const wv_plan *, const wv_model *, int))
{
    PyObject *list = PyList_New(n);
    for (int i = 0; list && i < n; i++) {
        PyObject *it = item(p, m, i);
        if (!it) Py_CLEAR(list);
        else PyList_SET_ITEM(list, i, it);
    }
    return list;
}

/* What plan() reports, key and value, in this order. */
#define PLAN_FIELDS(X)                                                                                       \
    X("frames", PyLong_FromLong(p->frames_out))                                                              \
    X("height", PyLong_FromLong(p->H))                                                                       \
    X("width", PyLong_FromLong(p->W))                                                                        \
    X("tiles_x", PyLong_FromLong(p->tiles_x))                                                                \
    X("tiles_y", PyLong_FromLong(p->tiles_y))                                                                \
    X("n_tiles", PyLong_FromLong(p->n_tiles))                                                                \
    X("core_x", PyLong_FromLong(p->core_x))                                                                  \
    X("core_y", PyLong_FromLong(p->core_y))                                                                  \
    X("out_halo", PyLong_FromLong(p->out_halo))                                                              \
    X("stream_trunk", PyBool_FromLong(p->stream_trunk))                                                      \
    X("attention_rows", PyLong_FromLong(p->attn_rows))                                                       \
    X("shrunk_to_fit", PyBool_FromLong(p->shrunk_to_fit))                                                    \
    X("planned_bytes", PyLong_FromSize_t(p->arena_bytes))                                                    \
    X("trunk_out_bytes", PyLong_FromSize_t(p->trunk_out_bytes))                                              \
    X("trunk_host_bytes", PyLong_FromSize_t(p->trunk_host_bytes))                                            \
    X("weight_bytes", PyLong_FromSize_t(m->weight_bytes))                                                    \
    X("conv_flops", PyLong_FromDouble(p->conv_flops))                                                        \
    X("conv_operand_elems", Py_BuildValue("{s:L,s:L,s:L}", "trunk", (long long)p->trunk_operand, "tile",     \
                                          (long long)p->tile_operand, "backend_max",                         \
                                          (long long)m->backend->max_conv_elems))                            \
    X("backend", PyUnicode_FromString(m->backend->name))                                                     \
    X("precision", PyUnicode_FromString(wv_dtype_precision(m->backend->act_dtype)))                          \
    X("dtype", PyUnicode_FromString(p->output == WV_OUT_U8 ? "uint8" : "float32"))                           \
    X("segments", plan_list(p, m, p->n_segments, segment_item))                                              \
    X("buffers", plan_list(p, m, p->n_buffers, buffer_item))                                                 \
    X("tile_cores", plan_list(p, m, p->n_tiles, tile_core_item))

static PyObject *plan_to_dict(const wv_plan *p, const wv_model *m)
{
    PyObject *d = PyDict_New();
    if (!d) return NULL;
#define PLAN_SET(key, value)       \
    if (dict_set(d, key, value)) { \
        Py_DECREF(d);              \
        return NULL;               \
    }
    PLAN_FIELDS(PLAN_SET)
#undef PLAN_SET
    return d;
}

static int parse_options(int tile_x, int tile_y, int end_frame, int raw, int uint8, long long max_bytes,
                         wv_options *o)
{
    memset(o, 0, sizeof *o);
    if (raw && uint8) {
        PyErr_SetString(WvError, "raw output is float32 only: uint8 frames are the clamped image, 0 to 255");
        return -1;
    }
    if (max_bytes < 0) {
        PyErr_Format(WvError, "max_memory must be >= 0 bytes (0 = no limit), got %lld", max_bytes);
        return -1;
    }
    o->max_bytes = (size_t)max_bytes;
    if (tile_x < 0 || tile_y < 0) {
        PyErr_Format(WvError, "tile sizes must be >= 0 (0 = whole frame), got tile_x=%d, tile_y=%d", tile_x, tile_y);
        return -1;
    }
    o->tile_x = tile_x;
    o->tile_y = tile_y;
    o->end_frame = end_frame;
    o->output = raw ? WV_OUT_RAW : uint8 ? WV_OUT_U8 : WV_OUT_UNIT;
    return 0;
}

/* wv_plan_make with the GIL released: a plan may take a while (a budget too small plans several tile
 * grids of a large frame). It reads only the built model, which never changes (close frees only its
 * weights and backend context), so it needs no lock. */
static wv_status make_plan(ModelObject *self, wv_plan *plan, int T, int h, int w, const wv_options *o, wv_error *err)
{
    wv_status st;
    Py_BEGIN_ALLOW_THREADS
    st = wv_plan_make(plan, &self->model, T, h, w, o, err);
    Py_END_ALLOW_THREADS
    return st;
}

static PyObject *Model_plan(ModelObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"T", "h", "w", "tile_x", "tile_y", "end_frame", "max_memory", "uint8", NULL};
    int T, h, w, tile_x = 0, tile_y = 0, end_frame = 0, uint8 = 0;
    long long max_bytes = 0;
    wv_options o;
    wv_plan plan;
    wv_error err = {WV_OK, ""};
    PyObject *result;
    if (require_built(self)) return NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iii|iipLp:plan", kwlist, &T, &h, &w, &tile_x, &tile_y, &end_frame,
                                     &max_bytes, &uint8))
        return NULL;
    if (T > MAX_LATENT_EXTENT || h > MAX_LATENT_EXTENT || w > MAX_LATENT_EXTENT) {
        PyErr_Format(WvError, "T, h, w must be at most %d; got T=%d, h=%d, w=%d", MAX_LATENT_EXTENT, T, h, w);
        return NULL;
    }
    if (parse_options(tile_x, tile_y, end_frame, 0, uint8, max_bytes, &o)) return NULL;
    if (make_plan(self, &plan, T, h, w, &o, &err)) {
        wv_plan_free(&plan);
        return raise_status(&err);
    }
    result = plan_to_dict(&plan, &self->model);
    wv_plan_free(&plan);
    return result;
}

/* The threads inside a progress callback now, an entry per level (read and changed under the GIL). A
 * thread in one holds that callback's Decoder, so it must not wait for another Decoder, whose own
 * callback may be waiting for the first. Past MAX_CALLBACK_LEVELS a callback goes unrecorded. */
#define MAX_CALLBACK_LEVELS 64
static unsigned long g_in_callback[MAX_CALLBACK_LEVELS];
static int g_n_in_callback;

static int in_callback(unsigned long thread)
{
    for (int i = 0; i < g_n_in_callback; i++)
        if (g_in_callback[i] == thread) return 1;
    return 0;
}

static int enter_callback(unsigned long thread)
{
    if (g_n_in_callback == MAX_CALLBACK_LEVELS) return 0;
    g_in_callback[g_n_in_callback++] = thread;
    return 1;
}

static void leave_callback(unsigned long thread)
{
    for (int i = g_n_in_callback - 1; i >= 0; i--)
        if (g_in_callback[i] == thread) {
            g_in_callback[i] = g_in_callback[--g_n_in_callback];
            return;
        }
}

static PyObject *raise_closed(void)
{
    PyErr_SetString(WvError, "this Decoder is closed (close() freed its weights and memory); make a new Decoder");
    return NULL;
}

/* In a forked child, only the forking thread is left: the other threads' callbacks never end there,
 * and a thread made later may get one of their idents (the C library reuses their descriptors). */
static void forget_other_threads_callbacks(void)
{
    unsigned long me = PyThread_get_thread_ident();
    int kept = 0;
    for (int i = 0; i < g_n_in_callback; i++)
        if (g_in_callback[i] == me) g_in_callback[kept++] = me;
    g_n_in_callback = kept;
}

static PyObject *after_fork(PyObject *mod, PyObject *noargs)
{
    (void)mod;
    (void)noargs;
    g_forks++;
    forget_other_threads_callbacks();
    Py_RETURN_NONE;
}

/* In a forked child, a lock of the parent's that no decode holds (decoding is 0): a thread of the
 * parent may still have held it, between taking it and marking the decode or between unmarking and
 * letting go, and no thread here would let it go. The model is whole in either case, so it takes a
 * new lock; the old one, perhaps held for good, is left (not freed). */
static int replace_parents_lock(ModelObject *self)
{
    PyThread_type_lock fresh = PyThread_allocate_lock();
    if (!fresh) {
        PyErr_NoMemory();
        return -1;
    }
    self->lock = fresh;
    self->lock_forks = g_forks;
    return 0;
}

/* Waits for the model's lock (another thread's decode) in slices, so Ctrl-C still works; a decode
 * asked for by the thread already decoding (from its progress callback) would wait for itself, and
 * one that was running when the process forked never ends in the child (its thread is not there). */
static int take_model(ModelObject *self, const char *action)
{
    unsigned long me = PyThread_get_thread_ident();
    int may_wait = !in_callback(me); /* in a callback, this thread holds a Decoder some other may wait for */
    PyLockStatus got;
    if (self->decoding && self->taken_in != g_forks) {
        PyErr_Format(WvError, "this Decoder was decoding in another thread when this process was forked from it; "
                              "that decode never ends here, so this copy cannot %s it: make a new Decoder in this "
                              "process", action);
        return -1;
    }
    if (self->lock_forks != g_forks && replace_parents_lock(self)) return -1;
    if (self->decoding && self->owner == me) {
        PyErr_Format(WvError, "this Decoder is already decoding in this thread: a progress callback cannot %s the "
                              "Decoder it reports on", action);
        return -1;
    }
    if (!may_wait && !PyThread_acquire_lock(self->lock, NOWAIT_LOCK)) {
        PyErr_Format(WvError, "this Decoder is busy in another thread, and a progress callback cannot wait to %s it "
                              "(its own callback could be waiting for this thread's Decoder)", action);
        return -1;
    }
    while (may_wait) {
        Py_BEGIN_ALLOW_THREADS
        got = PyThread_acquire_lock_timed(self->lock, 100000, 0); /* 0.1 s */
        Py_END_ALLOW_THREADS
        if (got == PY_LOCK_ACQUIRED) break;
        if (PyErr_CheckSignals() < 0) return -1;
    }
    self->owner = me;
    self->taken_in = g_forks;
    self->decoding = 1;
    return 0;
}

/* Progress bridge: runs with the GIL released around it, so it takes the GIL to call Python. */
typedef struct {
    PyObject *callback;
    PyObject *exc_type, *exc_value, *exc_tb;
} progress_bridge;

static int progress_trampoline(void *user, int64_t done, int64_t total)
{
    progress_bridge *b = (progress_bridge *)user;
    PyGILState_STATE g = PyGILState_Ensure();
    int stop = 0;
    if (PyErr_CheckSignals() < 0) {
        stop = 1;
    } else if (b->callback) {
        unsigned long me = PyThread_get_thread_ident();
        int recorded = enter_callback(me);
        PyObject *r = PyObject_CallFunction(b->callback, "LL", (long long)done, (long long)total);
        if (recorded) leave_callback(me);
        if (!r) stop = 1;
        else if (r == Py_False || (PyArray_IsScalar(r, Bool) && !PyObject_IsTrue(r))) stop = 2; /* np.False_ too */
        Py_XDECREF(r);
    }
    if (stop == 1) PyErr_Fetch(&b->exc_type, &b->exc_value, &b->exc_tb);
    PyGILState_Release(g);
    return stop;
}

/* Host latents are read whole for a NaN or Inf (device ones: the backend's output check). Done once
 * the output is allocated, so that latents too large to decode (a broadcast view, whose elements cost
 * nothing to make) fail at once rather than after a long scan. */
static int check_latents_finite(const py_array *lat)
{
    int64_t at[WV_MAX_DIMS];
    int bad;
    if (lat->view.on_device) return 0;
    Py_BEGIN_ALLOW_THREADS
    bad = wv_view_find_nonfinite(&lat->view, at);
    Py_END_ALLOW_THREADS
    if (!bad) return 0;
    PyErr_Format(WvError, "latents contain NaN or Inf (first at [%lld, %lld, %lld, %lld]); the sampler that produced "
                          "them failed", (long long)at[0], (long long)at[1], (long long)at[2], (long long)at[3]);
    return -1;
}

static int check_latents_shape(const wv_model *m, const py_array *lat, int *T, int *h, int *w)
{
    const wv_view *v = &lat->view;
    if (v->ndim != 4) {
        PyErr_Format(WvError, "latents must be [z_dim, T, h, w] (4-d); got %d dimensions", v->ndim);
        return -1;
    }
    if (v->shape[0] != m->z_dim) {
        PyErr_Format(WvError, "latents have %lld channels; the weights have z_dim=%d%s", (long long)v->shape[0],
                     m->z_dim,
                     v->shape[0] == 48 && m->z_dim == 16
                         ? " (48 channels: latents of Wan 2.2's TI2V-5B model, which need its own VAE, the Wan 2.2 "
                           "VAE; this decoder is Wan 2.1's, which Wan 2.2's 14B models use too)"
                         : "");
        return -1;
    }
    if (v->shape[1] < 1 || v->shape[2] < 1 || v->shape[3] < 1) {
        PyErr_Format(WvError, "latents must have T, h, w >= 1; got shape [%lld, %lld, %lld, %lld]",
                     (long long)v->shape[0], (long long)v->shape[1], (long long)v->shape[2], (long long)v->shape[3]);
        return -1;
    }
    if (v->shape[1] > MAX_LATENT_EXTENT || v->shape[2] > MAX_LATENT_EXTENT || v->shape[3] > MAX_LATENT_EXTENT) {
        PyErr_Format(WvError, "latents of shape [%lld, %lld, %lld, %lld]: T, h and w must be at most %d",
                     (long long)v->shape[0], (long long)v->shape[1], (long long)v->shape[2], (long long)v->shape[3],
                     MAX_LATENT_EXTENT);
        return -1;
    }
    *T = (int)v->shape[1];
    *h = (int)v->shape[2];
    *w = (int)v->shape[3];
    return 0;
}

/* {op name: [seconds, calls, host seconds]} for the ops a profiled decode ran. */
static PyObject *op_profile(const wv_stats *s)
{
    PyObject *d = PyDict_New();
    for (int i = 0; d && i < wv_backend_op_count(); i++) {
        if (!s->op_calls[i]) continue;
        if (dict_set(d, wv_backend_op_name(i),
                     Py_BuildValue("[dLd]", s->op_seconds[i], (long long)s->op_calls[i], s->op_host_seconds[i])))
            Py_CLEAR(d);
    }
    return d;
}

/* {checkpoint name of a conv: [seconds, calls, flops]} for the convolutions a profiled decode ran. */
static PyObject *conv_profile(const wv_model *m, const wv_stats *s)
{
    PyObject *d = PyDict_New();
    char name[96];
    for (int id = 0; d && id < WV_MAX_BLOCKS * WV_BLOCK_MAX_CONVS; id++) {
        if (!s->conv_calls[id] || !wv_model_conv_name(m, id, name, sizeof name)) continue;
        if (dict_set(d, name, Py_BuildValue("[dLL]", s->conv_seconds[id], (long long)s->conv_calls[id],
                                            (long long)s->conv_flops[id])))
            Py_CLEAR(d);
    }
    return d;
}

static PyObject *stats_dict(const wv_plan *p, const wv_model *m, const wv_stats *s, int profiled)
{
    PyObject *d = plan_to_dict(p, m);
    if (!d) return NULL;
    if (profiled && (dict_set(d, "op_seconds", op_profile(s)) || dict_set(d, "conv_seconds", conv_profile(m, s)))) {
        Py_DECREF(d);
        return NULL;
    }
    if (dict_set(d, "arena_high_water", PyLong_FromSize_t(s->arena_high_water)) ||
        dict_set(d, "seconds_trunk", PyFloat_FromDouble(s->seconds_trunk)) ||
        dict_set(d, "seconds_tiles", PyFloat_FromDouble(s->seconds_tiles)) ||
        dict_set(d, "seconds_total", PyFloat_FromDouble(s->seconds_total)) ||
        dict_set(d, "steps", PyLong_FromLongLong(s->steps))) {
        Py_DECREF(d);
        return NULL;
    }
    return d;
}

/* The latent statistics, z_dim floats each, in memory the caller frees (PyMem_Free); -1 with the
 * error set. */
static int read_stats(const ModelObject *self, PyObject *mean_obj, PyObject *std_obj, float **mean, float **stdv)
{
    int z = self->model.z_dim;
    *mean = (float *)PyMem_Malloc(sizeof(float) * (size_t)z);
    *stdv = (float *)PyMem_Malloc(sizeof(float) * (size_t)z);
    if (!*mean || !*stdv) {
        PyErr_NoMemory();
        return -1;
    }
    return parse_floats(mean_obj, "mean", z, *mean) || parse_floats(std_obj, "std", z, *stdv) ? -1 : 0;
}

/* Runs the decode into out with the model's lock held and the GIL released; -1 with the error set
 * (the progress callback's own exception where that stopped it). */
static int decode_locked(ModelObject *self, const wv_plan *plan, const py_array *lat, long long stream,
                         const float *mean, const float *stdv, const wv_options *o, PyArrayObject *out,
                         progress_bridge *bridge, wv_stats *stats)
{
    wv_error err = {WV_OK, ""};
    wv_status st;
    if (take_model(self, "decode with")) return -1;
    if (self->closed) {
        self->decoding = 0;
        PyThread_release_lock(self->lock);
        raise_closed();
        return -1;
    }
    Py_BEGIN_ALLOW_THREADS
    st = wv_decode(&self->model, plan, &lat->view, (uintptr_t)stream, mean, stdv, o, PyArray_DATA(out),
                   progress_trampoline, bridge, stats, &err);
    Py_END_ALLOW_THREADS
    self->decoding = 0; /* under the GIL, as every other access to it */
    PyThread_release_lock(self->lock);
    if (!st) return 0;
    if (bridge->exc_type) /* the callback's own exception stopped the decode (a step may have failed too) */
        PyErr_Restore(bridge->exc_type, bridge->exc_value, bridge->exc_tb);
    else
        raise_status(&err);
    return -1;
}

/* decode()'s arguments but the latents and statistics, which are read against the model. */
typedef struct {
    PyObject *latents, *mean, *std, *progress;
    long long stream;
    wv_options o;
} decode_call;

static int parse_decode_call(PyObject *args, PyObject *kwds, decode_call *c)
{
    static char *kwlist[] = {"latents", "mean", "std", "tile_x", "tile_y", "end_frame", "raw", "progress", "max_memory",
                             "stream", "profile", "uint8", NULL};
    int tile_x = 0, tile_y = 0, end_frame = 0, raw = 0, profile = 0, uint8 = 0;
    long long max_bytes = 0;
    c->progress = Py_None;
    c->stream = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO|iippOLLpp:decode", kwlist, &c->latents, &c->mean, &c->std,
                                     &tile_x, &tile_y, &end_frame, &raw, &c->progress, &max_bytes, &c->stream, &profile,
                                     &uint8))
        return -1;
    if (c->stream < 0) {
        PyErr_Format(WvError, "stream must be a CUDA stream handle (>= 0), got %lld", c->stream);
        return -1;
    }
    if (c->progress != Py_None && !PyCallable_Check(c->progress)) {
        PyErr_SetString(WvError, "progress must be callable or None");
        return -1;
    }
    if (parse_options(tile_x, tile_y, end_frame, raw, uint8, max_bytes, &c->o)) return -1;
    c->o.profile = profile;
    /* owned for the call: they may be borrowed from a keyword dict (a C caller's own) that Python code
       run meanwhile (an array interface, a float(), the progress callback itself) empties */
    Py_INCREF(c->latents);
    Py_INCREF(c->mean);
    Py_INCREF(c->std);
    Py_INCREF(c->progress);
    return 0;
}

static void release_decode_call(decode_call *c)
{
    Py_DECREF(c->latents);
    Py_DECREF(c->mean);
    Py_DECREF(c->std);
    Py_DECREF(c->progress);
}

/* The frames a plan decodes: [F, H, W, 3] float32, or uint8. */
static PyArrayObject *new_frames_array(const wv_plan *p)
{
    npy_intp dims[4] = {p->frames_out, p->H, p->W, WV_RGB};
    return (PyArrayObject *)PyArray_SimpleNew(4, dims, p->output == WV_OUT_U8 ? NPY_UINT8 : NPY_FLOAT32);
}

static PyObject *Model_decode(ModelObject *self, PyObject *args, PyObject *kwds)
{
    decode_call c;
    int T, h, w, have_plan = 0;
    float *mean = NULL, *stdv = NULL;
    py_array lat;
    wv_plan plan;
    wv_stats stats;
    wv_error err = {WV_OK, ""};
    progress_bridge bridge = {NULL, NULL, NULL, NULL};
    PyArrayObject *out = NULL;
    PyObject *result = NULL, *sd;

    memset(&lat, 0, sizeof lat);
    if (require_built(self) || parse_decode_call(args, kwds, &c)) return NULL;
    bridge.callback = c.progress == Py_None ? NULL : c.progress;
    if (self->closed) { /* before the output is made; checked again once it is ours */
        raise_closed();
        goto finally;
    }
    if (parse_array(c.latents, "latents", &lat)) goto finally;
    if (lat.stream) c.stream = lat.stream; /* CAI v3: the producer says which stream the data is ready on */
    if (check_latents_shape(&self->model, &lat, &T, &h, &w) || read_stats(self, c.mean, c.std, &mean, &stdv))
        goto finally;
    if (make_plan(self, &plan, T, h, w, &c.o, &err)) {
        wv_plan_free(&plan);
        raise_status(&err);
        goto finally;
    }
    have_plan = 1;
    if (!(out = new_frames_array(&plan)) || check_latents_finite(&lat) ||
        decode_locked(self, &plan, &lat, c.stream, mean, stdv, &c.o, out, &bridge, &stats))
        goto finally;
    sd = stats_dict(&plan, &self->model, &stats, c.o.profile);
    if (sd) result = Py_BuildValue("(ON)", (PyObject *)out, sd);
finally:
    if (have_plan) wv_plan_free(&plan);
    Py_XDECREF(out);
    PyMem_Free(mean);
    PyMem_Free(stdv);
    py_array_release(&lat);
    release_decode_call(&c);
    return result;
}

/* Frees the weights and the backend context (device memory, pinned host memory, library handles)
 * now, after a decode running in another thread ends; the description (plan, properties) stays. */
static PyObject *Model_close(ModelObject *self, PyObject *noargs)
{
    (void)noargs;
    if (!self->built) Py_RETURN_NONE;
    if (take_model(self, "close")) return NULL;
    if (!self->closed) {
        self->closed = 1;
        Py_BEGIN_ALLOW_THREADS
        wv_model_free(&self->model);
        Py_END_ALLOW_THREADS
    }
    self->decoding = 0;
    PyThread_release_lock(self->lock);
    Py_RETURN_NONE;
}

static PyObject *Model_halos(ModelObject *self, PyObject *noargs)
{
    int halo[WV_MAX_BLOCKS];
    PyObject *d;
    (void)noargs;
    if (require_built(self)) return NULL;
    wv_model_halos(&self->model, halo);
    if (!(d = PyDict_New())) return NULL;
    for (int b = self->model.trunk_end; b < self->model.n_blocks; b++) {
        if (dict_set(d, self->model.blocks[b].prefix, PyLong_FromLong(halo[b]))) {
            Py_DECREF(d);
            return NULL;
        }
    }
    return d;
}

/* The Model's read-only properties: X(name, docstring, its value as a new reference from self). */
#define MODEL_PROPERTIES(X)                                                                                 \
    X(dim, "base width (96 for Wan 2.1)", PyLong_FromLong(self->model.dim))                                 \
    X(z_dim, "latent channels", PyLong_FromLong(self->model.z_dim))                                         \
    X(n_params, "decoder parameters", PyLong_FromLongLong(self->model.n_params))                            \
    X(weight_bytes, "bytes of converted weights", PyLong_FromSize_t(self->model.weight_bytes))              \
    X(cache_slots, "causal convolutions (one cache each)", PyLong_FromLong(self->model.n_cache_slots))      \
    X(backend, "backend name", PyUnicode_FromString(self->model.backend->name))                             \
    X(precision, "activation and weight precision: fp32, fp16 or bf16",                                     \
      PyUnicode_FromString(wv_dtype_precision(self->model.backend->act_dtype)))                             \
    X(closed, "whether close() freed the weights", PyBool_FromLong(self->closed))

#define MODEL_GETTER(name, doc, value)                                                                      \
    static PyObject *Model_get_##name(ModelObject *self, void *unused)                                      \
    {                                                                                                       \
        (void)unused;                                                                                       \
        if (require_built(self)) return NULL;                                                               \
        return value;                                                                                       \
    }
MODEL_PROPERTIES(MODEL_GETTER)
#undef MODEL_GETTER

static PyGetSetDef Model_getset[] = {
#define MODEL_GETSET(name, doc, value) {#name, (getter)Model_get_##name, NULL, doc, NULL},
    MODEL_PROPERTIES(MODEL_GETSET)
#undef MODEL_GETSET
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef Model_methods[] = {
    {"plan", (PyCFunction)(void (*)(void))Model_plan, METH_VARARGS | METH_KEYWORDS,
     "plan(T, h, w, tile_x=0, tile_y=0, end_frame=False, max_memory=0, uint8=False) -> dict: the tile grid and\n"
     "memory plan."},
    {"decode", (PyCFunction)(void (*)(void))Model_decode, METH_VARARGS | METH_KEYWORDS,
     "decode(latents, mean, std, tile_x=0, tile_y=0, end_frame=False, raw=False, progress=None, max_memory=0,\n"
     "       stream=0, profile=False, uint8=False)\n"
     "-> (frames [F, H, W, 3] float32 (uint8: the clamped image, 0 to 255), stats dict)."},
    {"halos", (PyCFunction)Model_halos, METH_NOARGS, "Halo at the input of every tile-part block."},
    {"close", (PyCFunction)Model_close, METH_NOARGS,
     "close(): frees the weights and the backend's memory now (after a decode in another thread ends)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ModelType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "wanvideo_vae._C.Model",
    .tp_basicsize = sizeof(ModelObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Model(weights: dict, backend='cpu', precision=None, device=-1): a Wan 2.1 decoder with converted weights.\n"
              "One decode runs at a time per Model; concurrent calls wait their turn.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Model_init,
    .tp_dealloc = (destructor)Model_dealloc,
    .tp_methods = Model_methods,
    .tp_getset = Model_getset,
};

/* ---- module functions -------------------------------------------------------------------- */

/* decode_tiled(weights, latents, mean, std, **options): a one-shot Model; backend, precision and
 * device go to the Model, everything else to its decode. */
static PyObject *decode_tiled(PyObject *mod, PyObject *args, PyObject *kwds)
{
    static const char *const model_keys[] = {"backend", "precision", "device"};
    PyObject *model_kw = NULL, *decode_kw = NULL, *margs = NULL, *model = NULL, *rest = NULL, *decode = NULL;
    PyObject *result = NULL;
    (void)mod;
    if (PyTuple_GET_SIZE(args) < 1) {
        PyErr_SetString(PyExc_TypeError, "decode_tiled(weights, latents, mean, std, **options)");
        return NULL;
    }
    if (!(model_kw = PyDict_New()) || !(decode_kw = kwds ? PyDict_Copy(kwds) : PyDict_New())) goto finally;
    for (size_t i = 0; i < sizeof model_keys / sizeof model_keys[0]; i++) {
        PyObject *v = PyDict_GetItemString(decode_kw, model_keys[i]);
        if (!v) continue;
        if (PyDict_SetItemString(model_kw, model_keys[i], v) || PyDict_DelItemString(decode_kw, model_keys[i]))
            goto finally;
    }
    if (!(margs = PyTuple_GetSlice(args, 0, 1))) goto finally;
    if (!(model = PyObject_Call((PyObject *)&ModelType, margs, model_kw))) goto finally;
    if (!(rest = PyTuple_GetSlice(args, 1, PyTuple_GET_SIZE(args)))) goto finally;
    if (!(decode = PyObject_GetAttrString(model, "decode"))) goto finally;
    result = PyObject_Call(decode, rest, decode_kw);
finally:
    Py_XDECREF(decode);
    Py_XDECREF(rest);
    Py_XDECREF(model);
    Py_XDECREF(margs);
    Py_XDECREF(decode_kw);
    Py_XDECREF(model_kw);
    return result;
}

static PyObject *op_list(const wv_backend *be)
{
    PyObject *ops = PyList_New(0);
    for (int k = 0; ops && k < wv_backend_op_count(); k++) {
        PyObject *name;
        if (!wv_backend_supports(be, k)) continue;
        name = PyUnicode_FromString(wv_backend_op_name(k));
        if (!name || PyList_Append(ops, name)) Py_CLEAR(ops);
        Py_XDECREF(name);
    }
    return ops;
}

/* {"cpu": {...}, "cuda": {...}}: which tables load and the ops each implements. Whether a device
 * is present is for wanvideo_vae.backends() to add. */
static PyObject *backend_features(PyObject *mod, PyObject *noargs)
{
    const wv_backend *cpu[WV_DTYPE_COUNT] = {NULL}, *cuda = NULL;
    const wv_backend_set *set;
    PyObject *d = PyDict_New(), *reason = NULL;
    wv_error err = {WV_OK, ""};
    int threads = 0;
    (void)mod;
    (void)noargs;
    if (!d) return NULL;
    cpu[wv_backend_cpu()->act_dtype] = wv_backend_cpu();
    if (wv_cpu_threads(&threads, &err) != WV_OK) threads = 0; /* err.msg says why */
    if (dict_set(d, "cpu", Py_BuildValue("{s:O,s:N,s:i,s:N,s:i,s:N}", "loaded", Py_True, "ops",
                                         op_list(wv_backend_cpu()), "op_count", wv_backend_op_count(), "precisions",
                                         precision_list(cpu), "threads", threads, "reason",
                                         PyUnicode_DecodeUTF8(err.msg, (Py_ssize_t)strlen(err.msg), "replace"))))
        goto fail;
    set = cuda_set();
    for (int dt = 0; set && !cuda && dt < WV_DTYPE_COUNT; dt++) cuda = set->by_dtype[dt]; /* same ops in each */
    if (!cuda) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        reason = value ? PyObject_Str(value) : PyUnicode_FromString("not built");
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        if (!reason) goto fail;
    }
    if (dict_set(d, "cuda", cuda ? Py_BuildValue("{s:O,s:N,s:i,s:N}", "loaded", Py_True, "ops", op_list(cuda),
                                                 "op_count", wv_backend_op_count(), "precisions",
                                                 precision_list(set->by_dtype))
                                 : Py_BuildValue("{s:O,s:O,s:[],s:i}", "loaded", Py_False, "reason", reason, "ops",
                                                 "op_count", wv_backend_op_count())))
        goto fail;
    Py_XDECREF(reason);
    return d;
fail:
    Py_XDECREF(reason);
    Py_DECREF(d);
    return NULL;
}

typedef struct {
    PyObject *list;
    int failed;
} key_collector;

/* A tuple of n ints, or NULL with the error set. */
static PyObject *int_tuple(const int64_t *v, int n)
{
    PyObject *t = PyTuple_New(n);
    for (int i = 0; t && i < n; i++) {
        PyObject *item = PyLong_FromLongLong(v[i]);
        if (!item) Py_CLEAR(t);
        else PyTuple_SET_ITEM(t, i, item);
    }
    return t;
}

static void collect_key(void *user, const char *key, int ndim, const int64_t *shape)
{
    key_collector *kc = (key_collector *)user;
    PyObject *shape_t, *item;
    if (kc->failed) return;
    if (!(shape_t = int_tuple(shape, ndim))) {
        kc->failed = 1;
        return;
    }
    item = Py_BuildValue("(sN)", key, shape_t); /* N: taken even on failure */
    if (!item || PyList_Append(kc->list, item)) kc->failed = 1;
    Py_XDECREF(item);
}

static PyObject *expected_keys(PyObject *mod, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"dim", "z_dim", NULL};
    int dim = 96, z = 16;
    key_collector kc = {NULL, 0};
    (void)mod;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|ii:expected_keys", kwlist, &dim, &z)) return NULL;
    if (dim < 1 || z < 1 || dim > WV_MAX_WIDTH / 4 || z > WV_MAX_WIDTH) { /* what wv_model_build takes */
        PyErr_Format(WvError, "dim must be in 1..%d and z_dim in 1..%d", WV_MAX_WIDTH / 4, WV_MAX_WIDTH);
        return NULL;
    }
    if (!(kc.list = PyList_New(0))) return NULL;
    if (wv_model_expected_keys(dim, z, collect_key, &kc) < 0 || kc.failed) {
        Py_DECREF(kc.list);
        return PyErr_Occurred() ? NULL : PyErr_NoMemory();
    }
    return kc.list;
}

/* Test and fuzz hook: what the array-interface parser makes of obj (it never reads the data). */
static PyObject *parse_array_for_tests(PyObject *mod, PyObject *obj)
{
    py_array a;
    PyObject *shape, *strides, *result = NULL;
    (void)mod;
    if (parse_array(obj, "array", &a)) return NULL;
    shape = int_tuple(a.view.shape, a.view.ndim);
    strides = int_tuple(a.view.strides, a.view.ndim);
    if (shape && strides) { /* N takes both references, even on failure */
        result = Py_BuildValue("{s:N,s:N,s:s,s:O,s:L}", "shape", shape, "strides", strides, "dtype",
                               wv_dtype_name(a.view.dtype), "on_device", a.view.on_device ? Py_True : Py_False,
                               "stream", a.stream);
    } else {
        Py_XDECREF(shape);
        Py_XDECREF(strides);
    }
    py_array_release(&a);
    return result;
}

static PyObject *fail_nth_alloc(PyObject *mod, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"n", "backend", NULL};
    int n;
    const char *name = "cpu";
    const wv_backend *be;
    (void)mod;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "i|s:_fail_nth_alloc", kwlist, &n, &name)) return NULL;
    if (!(be = backend_by_name(name, NULL))) return NULL;
    be->fail_nth_alloc(n);
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"decode_tiled", (PyCFunction)(void (*)(void))decode_tiled, METH_VARARGS | METH_KEYWORDS,
     "decode_tiled(weights, latents, mean, std, *, backend='cpu', precision=None, device=-1, tile_x=0, tile_y=0,\n"
     "             end_frame=False, raw=False, progress=None, max_memory=0, stream=0, profile=False, uint8=False)\n"
     "-> (frames, stats)"},
    {"backend_features", backend_features, METH_NOARGS, "Compiled backends and the ops each implements."},
    {"expected_keys", (PyCFunction)(void (*)(void))expected_keys, METH_VARARGS | METH_KEYWORDS,
     "expected_keys(dim=96, z_dim=16) -> [(key, shape)]: the decoder's weight table."},
    {"_fail_nth_alloc", (PyCFunction)(void (*)(void))fail_nth_alloc, METH_VARARGS | METH_KEYWORDS,
     "_fail_nth_alloc(n, backend='cpu'): test hook, the backend's n-th allocation from now fails (0: never)."},
    {"_parse_array", parse_array_for_tests, METH_O, "Test hook: the array-interface parser's view of an object."},
    {"_after_fork", after_fork, METH_NOARGS,
     "Called in a forked child (os.register_at_fork): a Decoder busy in the parent stays busy here for good."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "wanvideo_vae native core", -1,
                                        module_methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__C(void)
{
    PyObject *m;
    import_array();
    wv_set_env_guard(&WV_ENV_GIL);
    if (PyType_Ready(&ModelType) < 0) return NULL;
    m = PyModule_Create(&module_def);
    if (!m) return NULL;
    WvError = PyErr_NewExceptionWithDoc("wanvideo_vae.WanVAEError",
                                        "Invalid input or a failure inside the native decoder.", PyExc_ValueError,
                                        NULL);
    WvInterrupted = WvError ? PyErr_NewExceptionWithDoc("wanvideo_vae.DecodeInterrupted",
                                                        "The progress callback stopped the decode.", WvError, NULL)
                            : NULL;
    WvDeviceMemory = WvInterrupted ? PyErr_NewExceptionWithDoc(
                                         "wanvideo_vae.DeviceMemoryError",
                                         "The GPU ran out of memory, or a budget of its memory is too small for any "
                                         "tiling (a MemoryError; the host's is a plain MemoryError).",
                                         PyExc_MemoryError, NULL)
                                   : NULL;
    if (!WvDeviceMemory || PyModule_AddObjectRef(m, "WanVAEError", WvError) ||
        PyModule_AddObjectRef(m, "DecodeInterrupted", WvInterrupted) ||
        PyModule_AddObjectRef(m, "DeviceMemoryError", WvDeviceMemory) ||
        PyModule_AddObjectRef(m, "Model", (PyObject *)&ModelType) ||
        PyModule_AddIntConstant(m, "MAX_LATENT_EXTENT", MAX_LATENT_EXTENT)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
