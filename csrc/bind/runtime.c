/*
 * runtime.c -- bindings of runtime.c, normalize.c and resample.c: the thread
 * pool, build_info, l2_normalize and the bilinear resampling with its
 * adjoint.
 */
#include "common.h"

static PyObject *py_set_num_threads(PyObject *self, PyObject *arg)
{
    (void)self;
    npy_intp n;
    if (parse_positive(arg, "n", &n) < 0) return NULL;
    if (n > 1024) {
        PyErr_Format(PyExc_ValueError, "n must be at most 1024, got %ld",
                     (long)n);
        return NULL;
    }
    pm_set_num_threads((int)n);
    Py_RETURN_NONE;
}

static PyObject *py_get_num_threads(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
    return PyLong_FromLong(pm_get_num_threads());
}

static PyObject *py_build_info(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
    pm_build_info bi;
    pm_get_build_info(&bi);
    return Py_BuildValue(
        "{s:(iii),s:s,s:s,s:s,s:s,s:s,s:i,s:i,s:i,s:i,s:I}", "onednn_version",
        bi.onednn_major, bi.onednn_minor, bi.onednn_patch, "onednn_hash",
        bi.onednn_hash, "onednn_runtime", bi.onednn_runtime, "onednn_isa",
        bi.onednn_isa, "openblas_config", bi.openblas_config,
        "openblas_corename", bi.openblas_corename, "openblas_threads",
        bi.openblas_threads, "openmp_max_threads", bi.openmp_max_threads,
        "openmp_version", bi.openmp_version, "threads", pm_get_num_threads(),
        "numpy_abi_version", (unsigned)NPY_ABI_VERSION);
}

/* ======================================================================== */
/* Feature normalisation and resampling                                      */
/* ======================================================================== */

static PyObject *py_l2_normalize(PyObject *self, PyObject *args,
                                 PyObject *kwargs)
{
    (void)self;
    static char *kwlist[] = {"features", NULL};
    PyObject *obj;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O:l2_normalize", kwlist,
                                     &obj))
        return NULL;
    PyArrayObject *x = NULL, *out = NULL;
    char buf[160];
    npy_intp B, C, h, w;
    x = as_features(obj, "features", &B, &C, &h, &w);
    if (!x) goto fail;
    if (h == 0 || w == 0) {
        PyErr_Format(PyExc_ValueError,
                     "features must have at least one pixel, got shape %s",
                     shape_str(x, buf, sizeof buf));
        goto fail;
    }
    out = (PyArrayObject *)PyArray_EMPTY(PyArray_NDIM(x), PyArray_DIMS(x), NPY_FLOAT32, 0);
    if (!out) goto fail;
    int st;
    RUN_NOGIL(st, "features",
              pm_l2_normalize((const float *)PyArray_DATA(x),
                              (float *)PyArray_DATA(out), B, C, h * w));
    Py_DECREF(x);
    return (PyObject *)out;
fail:
    Py_XDECREF(x);
    Py_XDECREF(out);
    return NULL;
}

/* Shared by upsample_bilinear and its adjoint: (..., h, w) -> (..., H, W). */
static PyObject *resample(PyObject *obj, const char *name, PyObject *size_obj,
                          const char *size_name, int adjoint)
{
    PyArrayObject *x = NULL, *out = NULL;
    char buf[160];
    npy_intp size[2];
    x = as_array(obj, name, NPY_FLOAT32);
    if (!x) goto fail;
    if (check_ndim(x, name, 2, 4, "(B, C, h, w), (C, h, w) or (h, w)") < 0)
        goto fail;
    if (parse_size2(size_obj, size_name, size) < 0) goto fail;
    int nd = PyArray_NDIM(x);
    npy_intp dims[4];
    memcpy(dims, PyArray_DIMS(x), (size_t)nd * sizeof(npy_intp));
    npy_intp rows = dims[nd - 2], cols = dims[nd - 1];
    if (rows == 0 || cols == 0) {
        PyErr_Format(PyExc_ValueError,
                     "%s must have at least one pixel, got shape %s", name,
                     shape_str(x, buf, sizeof buf));
        goto fail;
    }
    double planes = 1.0;
    for (int i = 0; i < nd - 2; i++) planes *= (double)dims[i];
    if (check_output_size(size_name,
                          planes * (double)size[0] * (double)size[1],
                          sizeof(float)) < 0)
        goto fail;
    dims[nd - 2] = size[0];
    dims[nd - 1] = size[1];
    out = (PyArrayObject *)PyArray_EMPTY(nd, dims, NPY_FLOAT32, 0);
    if (!out) goto fail;
    npy_intp P = (npy_intp)planes;
    const float *src = (const float *)PyArray_DATA(x);
    float *dst = (float *)PyArray_DATA(out);
    int st;
    /* adjoint: x is at output resolution (rows, cols); out at size */
    RUN_NOGIL(st, name,
              adjoint ? pm_upsample_bilinear_adjoint(src, dst, P, size[0], size[1], rows, cols)
                      : pm_upsample_bilinear(src, dst, P, rows, cols, size[0], size[1]));
    Py_DECREF(x);
    return (PyObject *)out;
fail:
    Py_XDECREF(x);
    Py_XDECREF(out);
    return NULL;
}

static PyObject *py_upsample_bilinear(PyObject *self, PyObject *args,
                                      PyObject *kwargs)
{
    (void)self;
    static char *kwlist[] = {"x", "size", NULL};
    PyObject *x, *size;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO:upsample_bilinear",
                                     kwlist, &x, &size))
        return NULL;
    return resample(x, "x", size, "size", 0);
}

static PyObject *py_upsample_bilinear_adjoint(PyObject *self, PyObject *args,
                                              PyObject *kwargs)
{
    (void)self;
    static char *kwlist[] = {"y", "in_size", NULL};
    PyObject *y, *size;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs,
                                     "OO:upsample_bilinear_adjoint", kwlist,
                                     &y, &size))
        return NULL;
    return resample(y, "y", size, "in_size", 1);
}


PyDoc_STRVAR(set_num_threads_doc,
"set_num_threads($module, n, /)\n--\n\n"
"Size the package's thread pool (our kernels and oneDNN); OpenBLAS, called\n"
"only from inside that pool, stays at one thread.");

PyDoc_STRVAR(get_num_threads_doc,
"get_num_threads($module, /)\n--\n\n"
"The size of the package's thread pool.");

PyDoc_STRVAR(build_info_doc,
"build_info($module, /)\n--\n\n"
"Versions and configuration of the native libraries in use (a dict).");

PyDoc_STRVAR(l2_normalize_doc,
"l2_normalize($module, /, features)\n--\n\n"
"Per-pixel L2 normalisation over channels of (B, C, h, w) or (C, h, w)\n"
"features; returns float32 of the same shape.  A zero vector stays zero.\n"
"NaN or inf in the input raise ValueError.");

PyDoc_STRVAR(upsample_bilinear_doc,
"upsample_bilinear($module, /, x, size)\n--\n\n"
"Bilinear resampling of the last two axes of x to size=(H, W), the numbers\n"
"of torch's interpolate(mode='bilinear', align_corners=False).");

PyDoc_STRVAR(upsample_bilinear_adjoint_doc,
"upsample_bilinear_adjoint($module, /, y, in_size)\n--\n\n"
"The exact transpose of upsample_bilinear: y at (H, W) -> in_size=(h, w).");

PyMethodDef runtime_methods[] = {
    {"set_num_threads", (PyCFunction)py_set_num_threads, METH_O,
     set_num_threads_doc},
    {"get_num_threads", (PyCFunction)py_get_num_threads, METH_NOARGS,
     get_num_threads_doc},
    {"build_info", (PyCFunction)py_build_info, METH_NOARGS, build_info_doc},
    {"l2_normalize", (PyCFunction)(void (*)(void))py_l2_normalize,
     METH_VARARGS | METH_KEYWORDS, l2_normalize_doc},
    {"upsample_bilinear", (PyCFunction)(void (*)(void))py_upsample_bilinear,
     METH_VARARGS | METH_KEYWORDS, upsample_bilinear_doc},
    {"upsample_bilinear_adjoint",
     (PyCFunction)(void (*)(void))py_upsample_bilinear_adjoint,
     METH_VARARGS | METH_KEYWORDS, upsample_bilinear_adjoint_doc},
    {NULL, NULL, 0, NULL}};
