/* wanvideo_vae._cuda: the CUDA backend's Python module. It exposes the backend tables to
 * wanvideo_vae._C in a capsule, and a few device queries for the Python layer. Importing it fails
 * (ImportError) where the CUDA libraries cannot be loaded; the CPU backend never depends on it. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "wv_cuda.h"
#include "wv_env_gil.h"

static PyObject *device_count(PyObject *mod, PyObject *noargs)
{
    char why[256] = "";
    int n;
    (void)mod;
    (void)noargs;
    Py_BEGIN_ALLOW_THREADS
    n = wv_cuda_device_count(why, sizeof why);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("(is)", n, why);
}

static PyObject *current_device(PyObject *mod, PyObject *noargs)
{
    (void)mod;
    (void)noargs;
    return PyLong_FromLong(wv_cuda_current_device());
}

static PyObject *mem_get_info(PyObject *mod, PyObject *args)
{
    int device = -1, rc;
    size_t free_b = 0, total_b = 0;
    char why[256] = "";
    (void)mod;
    if (!PyArg_ParseTuple(args, "|i:mem_get_info", &device)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    rc = wv_cuda_mem_info(device, &free_b, &total_b, why, sizeof why);
    Py_END_ALLOW_THREADS
    if (rc) {
        if (device < 0)
            PyErr_Format(PyExc_RuntimeError, "cannot read the free memory of the current CUDA device: %s", why);
        else
            PyErr_Format(PyExc_RuntimeError, "cannot read the free memory of CUDA device %d: %s", device, why);
        return NULL;
    }
    return Py_BuildValue("(nn)", (Py_ssize_t)free_b, (Py_ssize_t)total_b);
}

static PyObject *versions(PyObject *mod, PyObject *noargs)
{
    int runtime, driver, cublas;
    size_t cudnn;
    (void)mod;
    (void)noargs;
    wv_cuda_versions(&runtime, &driver, &cudnn, &cublas);
    return Py_BuildValue("{s:i,s:i,s:n,s:i}", "cuda_runtime", runtime, "cuda_driver", driver, "cudnn",
                         (Py_ssize_t)cudnn, "cublas", cublas);
}

static PyObject *device_info(PyObject *mod, PyObject *args)
{
    int device, rc;
    wv_cuda_device_info d;
    char why[512] = "";
    (void)mod;
    if (!PyArg_ParseTuple(args, "i:device_info", &device)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    rc = wv_cuda_device_info_get(device, &d, why, sizeof why);
    Py_END_ALLOW_THREADS
    if (rc) return PyErr_Format(PyExc_RuntimeError, "cannot read the properties of CUDA device %d: %s", device, why);
    return Py_BuildValue("{s:s,s:(ii),s:i,s:n,s:O,s:s}", "name", d.name, "capability", d.major, d.minor,
                         "multiprocessors", d.multiprocessors, "total_memory", (Py_ssize_t)d.total_memory, "has_code",
                         d.has_code ? Py_True : Py_False, "code_missing", d.code_missing);
}

static PyObject *built_archs(PyObject *mod, PyObject *noargs)
{
    char archs[256];
    (void)mod;
    (void)noargs;
    wv_cuda_built_archs(archs, sizeof archs);
    return PyUnicode_FromString(archs);
}

static PyMethodDef methods[] = {
    {"device_count", device_count, METH_NOARGS, "device_count() -> (n, reason when 0)"},
    {"current_device", current_device, METH_NOARGS, "current_device() -> the calling thread's CUDA device"},
    {"mem_get_info", mem_get_info, METH_VARARGS, "mem_get_info(device=-1) -> (free bytes, total bytes)"},
    {"versions", versions, METH_NOARGS, "Versions of the CUDA runtime, driver, cuDNN and cuBLAS in use."},
    {"device_info", device_info, METH_VARARGS,
     "device_info(device) -> {name, capability, multiprocessors, total_memory, has_code, code_missing}: has_code, "
     "whether this build runs there (asking makes the device's context)"},
    {"built_archs", built_archs, METH_NOARGS, "built_archs() -> the compute capabilities this build has code for"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_cuda", "wanvideo_vae CUDA backend", -1, methods,
                                        NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__cuda(void)
{
    PyObject *m, *cap;
    char why[1024] = "";
    if (wv_cuda_cudnn_loadable(why, sizeof why)) { /* before any cuDNN call: a broken cuDNN aborts */
        PyObject *text = PyUnicode_DecodeFSDefault(why); /* paths in it: the file system's encoding */
        if (text) PyErr_SetObject(PyExc_ImportError, text);
        Py_XDECREF(text);
        return NULL;
    }
    m = PyModule_Create(&module_def);
    if (!m) return NULL;
    wv_set_env_guard(&WV_ENV_GIL); /* before wv_cuda_backends reads its setting */
    cap = PyCapsule_New((void *)wv_cuda_backends(), WV_BACKEND_CAPSULE, NULL);
    if (!cap || PyModule_AddObject(m, "_backends", cap)) {
        Py_XDECREF(cap);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
