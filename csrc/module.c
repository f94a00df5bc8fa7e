/*
 * module.c -- the only file of the core that talks to Python.
 *
 * Every entry point follows the same pattern: check kinds and shapes at the
 * door (TypeError / ValueError naming the argument and what it got), convert
 * the inputs to dense native arrays (a copy only when needed), allocate the
 * NumPy-owned outputs, release the GIL around the kernel, and turn its status
 * into an exception.  Each function has one cleanup label.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

#include <math.h>
#include <stdarg.h>
#include <string.h>
#include <unistd.h>

#include "primaps.h"

/* ======================================================================== */
/* Helpers shared by the bindings                                           */
/* ======================================================================== */

/* Writes "(3, 40, 40)" into buf. */
static const char *shape_str(PyArrayObject *a, char *buf, size_t len)
{
    int nd = PyArray_NDIM(a);
    size_t pos = 0;
    pos += (size_t)snprintf(buf + pos, len - pos, "(");
    for (int i = 0; i < nd && pos < len; i++)
        pos += (size_t)snprintf(buf + pos, len - pos, "%s%ld", i ? ", " : "",
                                (long)PyArray_DIM(a, i));
    if (nd == 1 && pos < len) pos += (size_t)snprintf(buf + pos, len - pos, ",");
    if (pos < len) snprintf(buf + pos, len - pos, ")");
    return buf;
}

/* Raises the exception that matches a kernel status. */
static void raise_status(int status, const char *what)
{
    switch (status) {
    case PM_ERR_NOMEM:
        PyErr_Format(PyExc_MemoryError, "%s: out of memory", what);
        break;
    case PM_ERR_NONFINITE:
        PyErr_Format(PyExc_ValueError, "%s contains NaN or inf", what);
        break;
    case PM_ERR_ARG:
        PyErr_Format(PyExc_ValueError, "%s: invalid argument", what);
        break;
    default:
        PyErr_Format(PyExc_RuntimeError, "%s: %s (status %d)", what,
                     pm_status_str(status), status);
    }
}

/* True for the dtype kinds the core computes with: signed and unsigned
 * integers and floats.  Booleans, complex numbers, strings, objects and
 * dates are refused. */
static int numeric_kind(PyArray_Descr *d)
{
    return d->kind == 'i' || d->kind == 'u' || d->kind == 'f';
}

/* obj as an ndarray of any dtype (a new reference), or NULL with a
 * TypeError "<name> must be <expect>, got ..." for None, strings and what
 * NumPy cannot convert.  A non-array input is converted by NumPy (a list of
 * numbers, a torch tensor via __array__). */
static PyArrayObject *any_array(PyObject *obj, const char *name,
                                const char *expect)
{
    if (PyArray_Check(obj)) {
        Py_INCREF(obj);
        return (PyArrayObject *)obj;
    }
    if (obj == Py_None || PyUnicode_Check(obj) || PyBytes_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be %s, got %s", name, expect,
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyArrayObject *src =
        (PyArrayObject *)PyArray_FromAny(obj, NULL, 0, 0, 0, NULL);
    if (!src) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError,
                     "%s must be %s, got %s that NumPy cannot convert to one",
                     name, expect, Py_TYPE(obj)->tp_name);
    }
    return src;
}

/* obj as a NumPy array of a numeric dtype (a new reference), with no change
 * of dtype or layout; anything else is a TypeError naming the argument. */
static PyArrayObject *numeric_array(PyObject *obj, const char *name)
{
    PyArrayObject *src = any_array(obj, name, "a numeric array");
    if (!src) return NULL;
    if (!numeric_kind(PyArray_DESCR(src))) {
        PyObject *d = PyObject_Str((PyObject *)PyArray_DESCR(src));
        PyErr_Format(PyExc_TypeError,
                     "%s must be a numeric array, got dtype %s", name,
                     d ? PyUnicode_AsUTF8(d) : "?");
        Py_XDECREF(d);
        Py_DECREF(src);
        return NULL;
    }
    return src;
}

/*
 * Turns obj into a dense, aligned, native-endian array of typenum (see
 * numeric_array for what obj may be).  Strided, negative-stride, byte-swapped
 * and other numeric dtypes are converted (a copy), never rejected.
 */
static PyArrayObject *as_array(PyObject *obj, const char *name, int typenum)
{
    PyArrayObject *src = numeric_array(obj, name);
    if (!src) return NULL;
    PyArrayObject *out = (PyArrayObject *)PyArray_FROM_OTF(
        (PyObject *)src, typenum, NPY_ARRAY_IN_ARRAY | NPY_ARRAY_FORCECAST);
    Py_DECREF(src);
    return out;
}

/* Checks 3 <= ndim <= 4 style ranges with a message naming the argument. */
static int check_ndim(PyArrayObject *a, const char *name, int lo, int hi,
                      const char *expect)
{
    int nd = PyArray_NDIM(a);
    if (nd < lo || nd > hi) {
        char buf[160];
        PyErr_Format(PyExc_ValueError, "%s must have shape %s, got %s", name,
                     expect, shape_str(a, buf, sizeof buf));
        return -1;
    }
    return 0;
}

/* Refuses an output of count elements of itemsize bytes that overflows or
 * cannot fit in this machine's physical memory. */
static int check_output_size(const char *name, double count, size_t itemsize)
{
    double bytes = count * (double)itemsize;
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
    double limit = (pages > 0 && page > 0) ? (double)pages * (double)page
                                           : 9.0e18;
    if (bytes > limit || count > (double)NPY_MAX_INTP) {
        PyErr_Format(PyExc_ValueError,
                     "%s asks for an output of %.3g GiB, more than this "
                     "machine's %.3g GiB of memory",
                     name, bytes / 1073741824.0, limit / 1073741824.0);
        return -1;
    }
    return 0;
}

/* Parses a positive integer (not a bool, not a float). */
static int parse_positive(PyObject *o, const char *name, npy_intp *out)
{
    if (PyBool_Check(o) || PyFloat_Check(o) || !PyIndex_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be a positive integer, got %s",
                     name, Py_TYPE(o)->tp_name);
        return -1;
    }
    PyObject *idx = PyNumber_Index(o);
    if (!idx) return -1;
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(idx, &overflow);
    Py_DECREF(idx);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (overflow || v < 1 || v > (long long)NPY_MAX_INTP) {
        PyObject *r = PyObject_Repr(o);
        PyErr_Format(PyExc_ValueError, "%s must be a positive integer, got %s",
                     name, r ? PyUnicode_AsUTF8(r) : "?");
        Py_XDECREF(r);
        return -1;
    }
    *out = (npy_intp)v;
    return 0;
}

/* Parses a spatial size: an int n (meaning (n, n)) or a pair (H, W). */
static int parse_size2(PyObject *o, const char *name, npy_intp out[2])
{
    if (PyIndex_Check(o) && !PyBool_Check(o)) {
        if (parse_positive(o, name, &out[0]) < 0) return -1;
        out[1] = out[0];
        return 0;
    }
    if (!PySequence_Check(o) || PyUnicode_Check(o) || PyBytes_Check(o)) {
        PyErr_Format(PyExc_TypeError,
                     "%s must be an int or a pair (H, W) of ints, got %s", name,
                     Py_TYPE(o)->tp_name);
        return -1;
    }
    Py_ssize_t n = PySequence_Size(o);
    if (n < 0) return -1;
    if (n != 2) {
        PyErr_Format(PyExc_ValueError,
                     "%s must be a pair (H, W), got a sequence of length %zd",
                     name, n);
        return -1;
    }
    for (int i = 0; i < 2; i++) {
        PyObject *item = PySequence_GetItem(o, i);
        if (!item) return -1;
        int r = parse_positive(item, name, &out[i]);
        Py_DECREF(item);
        if (r < 0) return -1;
    }
    return 0;
}

/* ======================================================================== */
/* Runtime                                                                  */
/* ======================================================================== */

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
    x = as_array(obj, "features", NPY_FLOAT32);
    if (!x) goto fail;
    if (check_ndim(x, "features", 3, 4, "(B, C, h, w) or (C, h, w)") < 0)
        goto fail;
    int nd = PyArray_NDIM(x);
    npy_intp *d = PyArray_DIMS(x);
    npy_intp B = nd == 4 ? d[0] : 1, C = d[nd - 3], h = d[nd - 2],
             w = d[nd - 1];
    if (h == 0 || w == 0) {
        PyErr_Format(PyExc_ValueError,
                     "features must have at least one pixel, got shape %s",
                     shape_str(x, buf, sizeof buf));
        goto fail;
    }
    out = (PyArrayObject *)PyArray_EMPTY(nd, d, NPY_FLOAT32, 0);
    if (!out) goto fail;
    int st;
    Py_BEGIN_ALLOW_THREADS
    st = pm_l2_normalize((const float *)PyArray_DATA(x),
                         (float *)PyArray_DATA(out), B, C, h * w);
    Py_END_ALLOW_THREADS
    if (st != PM_OK) {
        raise_status(st, "features");
        goto fail;
    }
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
    Py_BEGIN_ALLOW_THREADS
    if (adjoint)
        /* x is at output resolution (rows, cols); out at size. */
        st = pm_upsample_bilinear_adjoint(src, dst, P, size[0], size[1], rows,
                                          cols);
    else
        st = pm_upsample_bilinear(src, dst, P, rows, cols, size[0], size[1]);
    Py_END_ALLOW_THREADS
    if (st != PM_OK) {
        raise_status(st, name);
        goto fail;
    }
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

/* ======================================================================== */
/* Mask proposals (masks.c)                                                 */
/* ======================================================================== */

static PyMethodDef masks_methods[] = {{NULL, NULL, 0, NULL}};

/* ======================================================================== */
/* PriMaPs-EM and the linear probe (em.c)                                   */
/* ======================================================================== */

static PyMethodDef em_methods[] = {{NULL, NULL, 0, NULL}};

/* ======================================================================== */
/* Evaluation (metrics.c)                                                   */
/* ======================================================================== */

/* Parses a non-negative integer (not a bool, not a float). */
static int parse_nonnegative(PyObject *o, const char *name, npy_intp *out)
{
    if (PyBool_Check(o) || PyFloat_Check(o) || !PyIndex_Check(o)) {
        PyErr_Format(PyExc_TypeError,
                     "%s must be a non-negative integer, got %s", name,
                     Py_TYPE(o)->tp_name);
        return -1;
    }
    Py_ssize_t v = PyNumber_AsSsize_t(o, NULL);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (v < 0 || v == PY_SSIZE_T_MAX) {
        PyObject *r = PyObject_Repr(o);
        PyErr_Format(PyExc_ValueError,
                     "%s must be a non-negative integer, got %s", name,
                     r ? PyUnicode_AsUTF8(r) : "?");
        Py_XDECREF(r);
        return -1;
    }
    *out = (npy_intp)v;
    return 0;
}

/*
 * An array of labels (class or cluster ids): integer dtypes only.  uint8,
 * uint16, int32 and int64 are read as they are; int8 and int16 become int32,
 * uint32 and uint64 int64.  Floats, booleans and the rest are a TypeError.
 */
static PyArrayObject *as_labels(PyObject *obj, const char *name,
                                pm_label_type *type)
{
    PyArrayObject *src = numeric_array(obj, name);
    if (!src) return NULL;
    PyArray_Descr *d = PyArray_DESCR(src);
    const char kind = d->kind;
    const npy_intp size = PyArray_ITEMSIZE(src);
    if (kind != 'i' && kind != 'u') {
        PyObject *s = PyObject_Str((PyObject *)d);
        PyErr_Format(PyExc_TypeError,
                     "%s must be an integer array of labels, got dtype %s "
                     "(round or cast it first, e.g. x.astype(np.int64))",
                     name, s ? PyUnicode_AsUTF8(s) : "?");
        Py_XDECREF(s);
        Py_DECREF(src);
        return NULL;
    }
    int typenum;
    if (kind == 'u' && size == 1) {
        *type = PM_LABEL_U8;
        typenum = NPY_UINT8;
    } else if (kind == 'u' && size == 2) {
        *type = PM_LABEL_U16;
        typenum = NPY_UINT16;
    } else if (size <= 4 && !(kind == 'u' && size == 4)) {
        *type = PM_LABEL_I32;
        typenum = NPY_INT32;
    } else {
        *type = PM_LABEL_I64;
        typenum = NPY_INT64;
    }
    PyArrayObject *out = (PyArrayObject *)PyArray_FROM_OTF(
        (PyObject *)src, typenum, NPY_ARRAY_IN_ARRAY | NPY_ARRAY_FORCECAST);
    Py_DECREF(src);
    return out;
}

/* Writes the coordinates of flat index i of a's shape, e.g. "(0, 4, 7)". */
static const char *index_str(PyArrayObject *a, npy_intp i, char *buf,
                             size_t len)
{
    int nd = PyArray_NDIM(a);
    npy_intp coord[NPY_MAXDIMS];
    for (int k = nd - 1; k >= 0; k--) {
        npy_intp dk = PyArray_DIM(a, k);
        coord[k] = i % dk;
        i /= dk;
    }
    size_t pos = (size_t)snprintf(buf, len, "(");
    for (int k = 0; k < nd && pos < len; k++)
        pos += (size_t)snprintf(buf + pos, len - pos, "%s%ld", k ? ", " : "",
                                (long)coord[k]);
    if (nd == 1 && pos < len) pos += (size_t)snprintf(buf + pos, len - pos, ",");
    if (pos < len) snprintf(buf + pos, len - pos, ")");
    return buf;
}

/* Element i of a label array converted by as_labels. */
static long long label_value(PyArrayObject *a, pm_label_type t, npy_intp i)
{
    const void *p = PyArray_DATA(a);
    switch (t) {
    case PM_LABEL_U8: return ((const npy_uint8 *)p)[i];
    case PM_LABEL_U16: return ((const npy_uint16 *)p)[i];
    case PM_LABEL_I32: return ((const npy_int32 *)p)[i];
    default: return ((const npy_int64 *)p)[i];
    }
}

static PyObject *py_confusion_matrix(PyObject *self, PyObject *args,
                                     PyObject *kwargs)
{
    (void)self;
    static char *kwlist[] = {"pred", "gt", "n_classes", "extra_clusters",
                             NULL};
    PyObject *pred_obj, *gt_obj, *k_obj, *e_obj = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO|O:confusion_matrix",
                                     kwlist, &pred_obj, &gt_obj, &k_obj,
                                     &e_obj))
        return NULL;
    PyArrayObject *pred = NULL, *gt = NULL, *conf = NULL;
    char buf[160], buf2[160];
    npy_intp K, E = 0;
    pm_label_type pt, gtt;
    if (parse_positive(k_obj, "n_classes", &K) < 0) goto fail;
    if (e_obj && parse_nonnegative(e_obj, "extra_clusters", &E) < 0)
        goto fail;
    if ((double)(K + E) * (double)K > (double)INT32_MAX) {
        PyErr_Format(PyExc_ValueError,
                     "n_classes * (n_classes + extra_clusters) must be below "
                     "2^31, got n_classes=%ld and extra_clusters=%ld",
                     (long)K, (long)E);
        goto fail;
    }
    const npy_intp R = K + E;
    pred = as_labels(pred_obj, "pred", &pt);
    if (!pred) goto fail;
    gt = as_labels(gt_obj, "gt", &gtt);
    if (!gt) goto fail;
    if (PyArray_NDIM(pred) == 0) {
        PyErr_SetString(PyExc_ValueError,
                        "pred must have shape (H, W) or (B, H, W), got a "
                        "scalar");
        goto fail;
    }
    if (!PyArray_SAMESHAPE(pred, gt)) {
        PyErr_Format(PyExc_ValueError,
                     "pred and gt must have the same shape, got pred %s and "
                     "gt %s",
                     shape_str(pred, buf, sizeof buf),
                     shape_str(gt, buf2, sizeof buf2));
        goto fail;
    }
    npy_intp dims[2] = {R, K};
    conf = (PyArrayObject *)PyArray_ZEROS(2, dims, NPY_INT64, 0);
    if (!conf) goto fail;
    const void *pd = PyArray_DATA(pred), *gd = PyArray_DATA(gt);
    const npy_intp n = PyArray_SIZE(pred);
    int64_t *cd = (int64_t *)PyArray_DATA(conf);
    int64_t skipped = 0, bad = -1;
    int st;
    Py_BEGIN_ALLOW_THREADS
    st = pm_confusion_accumulate(pd, pt, gd, gtt, n, R, K, cd, &skipped, &bad);
    Py_END_ALLOW_THREADS
    if (st == PM_ERR_ARG && bad >= 0) {
        long long v = label_value(pred, pt, (npy_intp)bad);
        index_str(pred, (npy_intp)bad, buf, sizeof buf);
        if (v < 0)
            PyErr_Format(PyExc_ValueError,
                         "pred must not be negative, got %lld at index %s",
                         v, buf);
        else
            PyErr_Format(PyExc_ValueError,
                         "pred must be below n_classes + extra_clusters = %ld, "
                         "got %lld at index %s",
                         (long)R, v, buf);
        goto fail;
    }
    if (st != PM_OK) {
        raise_status(st, "confusion_matrix");
        goto fail;
    }
    Py_DECREF(pred);
    Py_DECREF(gt);
    return Py_BuildValue("(NL)", conf, (long long)skipped);
fail:
    Py_XDECREF(pred);
    Py_XDECREF(gt);
    Py_XDECREF(conf);
    return NULL;
}

PyDoc_STRVAR(confusion_matrix_doc,
"confusion_matrix($module, /, pred, gt, n_classes, extra_clusters=0)\n--\n\n"
"Confusion counts of integer label arrays of the same shape.  Returns\n"
"(conf, n_skipped): conf[p, g] (int64, shape (n_classes + extra_clusters,\n"
"n_classes)) counts the pixels predicted p with ground truth g; pixels whose\n"
"ground truth lies outside [0, n_classes) are skipped and counted in\n"
"n_skipped.  A prediction outside [0, n_classes + extra_clusters) raises\n"
"ValueError naming its value and index.");

static PyMethodDef metrics_methods[] = {
    {"confusion_matrix", (PyCFunction)(void (*)(void))py_confusion_matrix,
     METH_VARARGS | METH_KEYWORDS, confusion_matrix_doc},
    {NULL, NULL, 0, NULL}};

/* ======================================================================== */
/* Dense CRF (crf.c)                                                        */
/* ======================================================================== */

/* A uint8 image array: any other dtype is a TypeError naming the argument
 * (colour scales are defined on 0..255 intensities); strided, negative-
 * stride or non-array (e.g. a torch tensor) input is converted. */
static PyArrayObject *as_uint8_image(PyObject *obj, const char *name)
{
    PyArrayObject *src = any_array(obj, name, "a uint8 array");
    if (!src) return NULL;
    if (PyArray_TYPE(src) != NPY_UINT8) {
        PyObject *d = PyObject_Str((PyObject *)PyArray_DESCR(src));
        PyErr_Format(PyExc_TypeError,
                     "%s must be a uint8 array (RGB intensities 0..255), got "
                     "dtype %s",
                     name, d ? PyUnicode_AsUTF8(d) : "?");
        Py_XDECREF(d);
        Py_DECREF(src);
        return NULL;
    }
    PyArrayObject *out = (PyArrayObject *)PyArray_FROM_OTF(
        (PyObject *)src, NPY_UINT8, NPY_ARRAY_IN_ARRAY);
    Py_DECREF(src);
    return out;
}

/* A finite float >= 0 (weights) or > 0 (thetas). */
static int check_crf_number(double v, const char *name, int strict)
{
    if (!isfinite(v) || v < 0.0 || (strict && v == 0.0)) {
        PyObject *o = PyFloat_FromDouble(v);
        if (o)
            PyErr_Format(PyExc_ValueError, "%s must be a %s number, got %R",
                         name,
                         strict ? "positive finite" : "finite non-negative",
                         o);
        Py_XDECREF(o);
        return -1;
    }
    return 0;
}

/* Parses iterations: an int >= 0 (not a bool, not a float). */
static int parse_iterations(PyObject *o, int *out)
{
    if (PyBool_Check(o) || PyFloat_Check(o) || !PyIndex_Check(o)) {
        PyErr_Format(PyExc_TypeError,
                     "iterations must be a non-negative integer, got %s",
                     Py_TYPE(o)->tp_name);
        return -1;
    }
    PyObject *idx = PyNumber_Index(o);
    if (!idx) return -1;
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(idx, &overflow);
    Py_DECREF(idx);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (overflow || v < 0 || v > 1000000) {
        PyObject *r = PyObject_Repr(o);
        PyErr_Format(PyExc_ValueError,
                     "iterations must be an integer in [0, 1000000], got %s",
                     r ? PyUnicode_AsUTF8(r) : "?");
        Py_XDECREF(r);
        return -1;
    }
    *out = (int)v;
    return 0;
}

#define PM_CRF_CAPSULE "primaps._core.crf_context"

static void crf_context_destroy(PyObject *capsule)
{
    pm_crf_ctx_free(
        (pm_crf_ctx *)PyCapsule_GetPointer(capsule, PM_CRF_CAPSULE));
}

static PyObject *py_crf_context(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
    pm_crf_ctx *ctx = pm_crf_ctx_new();
    if (!ctx) return PyErr_NoMemory();
    PyObject *cap = PyCapsule_New(ctx, PM_CRF_CAPSULE, crf_context_destroy);
    if (!cap) pm_crf_ctx_free(ctx);
    return cap;
}

static PyObject *py_dense_crf(PyObject *self, PyObject *args, PyObject *kwargs)
{
    (void)self;
    static char *kwlist[] = {"image", "logits", "iterations",
                             "appearance_weight", "appearance_theta_xy",
                             "appearance_theta_rgb", "smoothness_weight",
                             "smoothness_theta_xy", "min_prob", "context",
                             NULL};
    PyObject *img_obj, *lg_obj, *it_obj = NULL, *ctx_obj = Py_None;
    pm_crf_params p;
    pm_crf_params_default(&p);
    double aw = p.appearance_weight, axy = p.appearance_theta_xy,
           argb = p.appearance_theta_rgb, sw = p.smoothness_weight,
           sxy = p.smoothness_theta_xy, mp = p.min_prob;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO|O$ddddddO:dense_crf",
                                     kwlist, &img_obj, &lg_obj, &it_obj, &aw,
                                     &axy, &argb, &sw, &sxy, &mp, &ctx_obj))
        return NULL;
    pm_crf_ctx *ctx = NULL;
    if (ctx_obj != Py_None) {
        if (!PyCapsule_IsValid(ctx_obj, PM_CRF_CAPSULE)) {
            PyErr_Format(PyExc_TypeError,
                         "context must be None or a crf_context(), got %s",
                         Py_TYPE(ctx_obj)->tp_name);
            return NULL;
        }
        ctx = (pm_crf_ctx *)PyCapsule_GetPointer(ctx_obj, PM_CRF_CAPSULE);
    }
    PyArrayObject *img = NULL, *lg = NULL, *out = NULL;
    char b1[160], b2[160];
    if (it_obj && parse_iterations(it_obj, &p.iterations) < 0) return NULL;
    if (check_crf_number(aw, "appearance_weight", 0) < 0 ||
        check_crf_number(axy, "appearance_theta_xy", 1) < 0 ||
        check_crf_number(argb, "appearance_theta_rgb", 1) < 0 ||
        check_crf_number(sw, "smoothness_weight", 0) < 0 ||
        check_crf_number(sxy, "smoothness_theta_xy", 1) < 0)
        return NULL;
    p.appearance_weight = (float)aw;
    p.appearance_theta_xy = (float)axy;
    p.appearance_theta_rgb = (float)argb;
    p.smoothness_weight = (float)sw;
    p.smoothness_theta_xy = (float)sxy;
    if (!(mp >= 0.0 && mp < 1.0)) {
        PyObject *o = PyFloat_FromDouble(mp);
        if (o)
            PyErr_Format(PyExc_ValueError,
                         "min_prob must be a number in [0, 1), got %R", o);
        Py_XDECREF(o);
        return NULL;
    }
    p.min_prob = (float)mp;

    img = as_uint8_image(img_obj, "image");
    if (!img) goto fail;
    if (check_ndim(img, "image", 3, 4, "(H, W, 3) or (B, H, W, 3)") < 0)
        goto fail;
    const int nd = PyArray_NDIM(img);
    const npy_intp *di = PyArray_DIMS(img);
    if (di[nd - 1] != 3) {
        PyErr_Format(PyExc_ValueError,
                     "image must have shape (H, W, 3) or (B, H, W, 3) (RGB), "
                     "got %s",
                     shape_str(img, b1, sizeof b1));
        goto fail;
    }
    const npy_intp B = nd == 4 ? di[0] : 1, H = di[nd - 3], W = di[nd - 2];
    if (H == 0 || W == 0) {
        PyErr_Format(PyExc_ValueError,
                     "image must have at least one pixel, got shape %s",
                     shape_str(img, b1, sizeof b1));
        goto fail;
    }
    if ((double)H * (double)W > 300000000.0) {
        PyErr_Format(PyExc_ValueError,
                     "image must have at most 3e8 pixels, got shape %s",
                     shape_str(img, b1, sizeof b1));
        goto fail;
    }
    lg = as_array(lg_obj, "logits", NPY_FLOAT32);
    if (!lg) goto fail;
    if (PyArray_NDIM(lg) != nd) {
        PyErr_Format(PyExc_ValueError,
                     "logits must have shape %s for an image of shape %s, "
                     "got %s",
                     nd == 4 ? "(B, L, H, W)" : "(L, H, W)",
                     shape_str(img, b1, sizeof b1),
                     shape_str(lg, b2, sizeof b2));
        goto fail;
    }
    const npy_intp *dl = PyArray_DIMS(lg);
    const npy_intp L = dl[nd - 3];
    if (nd == 4 && dl[0] != B) {
        PyErr_Format(PyExc_ValueError,
                     "image and logits must hold the same number of images, "
                     "got image %s and logits %s",
                     shape_str(img, b1, sizeof b1),
                     shape_str(lg, b2, sizeof b2));
        goto fail;
    }
    if (dl[nd - 2] != H || dl[nd - 1] != W) {
        PyErr_Format(PyExc_ValueError,
                     "image and logits must have the same size (H, W), got "
                     "image %s and logits %s",
                     shape_str(img, b1, sizeof b1),
                     shape_str(lg, b2, sizeof b2));
        goto fail;
    }
    if (L < 1) {
        PyErr_Format(PyExc_ValueError,
                     "logits must have at least one label, got shape %s",
                     shape_str(lg, b2, sizeof b2));
        goto fail;
    }
    out = (PyArrayObject *)PyArray_EMPTY(nd, dl, NPY_FLOAT32, 0);
    if (!out) goto fail;
    int st;
    Py_BEGIN_ALLOW_THREADS
    st = pm_dense_crf(ctx, (const uint8_t *)PyArray_DATA(img),
                      (const float *)PyArray_DATA(lg),
                      (float *)PyArray_DATA(out), B, L, H, W, &p);
    Py_END_ALLOW_THREADS
    if (st == PM_ERR_ARG) {
        PyErr_Format(PyExc_ValueError,
                     "dense_crf: a theta is too small for an image of shape "
                     "%s (lattice coordinates x / theta out of range)",
                     shape_str(img, b1, sizeof b1));
        goto fail;
    }
    if (st != PM_OK) {
        raise_status(st, "logits");
        goto fail;
    }
    Py_DECREF(img);
    Py_DECREF(lg);
    return (PyObject *)out;
fail:
    Py_XDECREF(img);
    Py_XDECREF(lg);
    Py_XDECREF(out);
    return NULL;
}

static PyObject *py_permutohedral_filter(PyObject *self, PyObject *args,
                                         PyObject *kwargs)
{
    (void)self;
    static char *kwlist[] = {"features", "values", NULL};
    PyObject *fo, *vo;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO:permutohedral_filter",
                                     kwlist, &fo, &vo))
        return NULL;
    PyArrayObject *f = NULL, *v = NULL, *out = NULL;
    char b1[160], b2[160];
    f = as_array(fo, "features", NPY_FLOAT32);
    if (!f) goto fail;
    v = as_array(vo, "values", NPY_FLOAT32);
    if (!v) goto fail;
    if (check_ndim(f, "features", 2, 2, "(N, d)") < 0 ||
        check_ndim(v, "values", 2, 2, "(N, V)") < 0)
        goto fail;
    const npy_intp N = PyArray_DIM(f, 0), d = PyArray_DIM(f, 1),
                   V = PyArray_DIM(v, 1);
    if (N < 1 || d < 1 || d > 6 || N > 100000000) {
        PyErr_Format(PyExc_ValueError,
                     "features must have shape (N, d) with N >= 1 and "
                     "1 <= d <= 6, got %s",
                     shape_str(f, b1, sizeof b1));
        goto fail;
    }
    if (PyArray_DIM(v, 0) != N || V < 1) {
        PyErr_Format(PyExc_ValueError,
                     "values must have shape (N, V) with V >= 1 for features "
                     "of shape %s, got %s",
                     shape_str(f, b1, sizeof b1), shape_str(v, b2, sizeof b2));
        goto fail;
    }
    out = (PyArrayObject *)PyArray_EMPTY(2, PyArray_DIMS(v), NPY_FLOAT32, 0);
    if (!out) goto fail;
    int st;
    Py_BEGIN_ALLOW_THREADS
    st = pm_permutohedral_filter((const float *)PyArray_DATA(f),
                                 (const float *)PyArray_DATA(v),
                                 (float *)PyArray_DATA(out), N, (int)d, V);
    Py_END_ALLOW_THREADS
    if (st != PM_OK) {
        raise_status(st, "features");
        goto fail;
    }
    Py_DECREF(f);
    Py_DECREF(v);
    return (PyObject *)out;
fail:
    Py_XDECREF(f);
    Py_XDECREF(v);
    Py_XDECREF(out);
    return NULL;
}

PyDoc_STRVAR(dense_crf_doc,
"dense_crf($module, /, image, logits, iterations=10, *,\n"
"          appearance_weight=4.0, appearance_theta_xy=67.0,\n"
"          appearance_theta_rgb=3.0, smoothness_weight=3.0,\n"
"          smoothness_theta_xy=1.0, min_prob=0.0, context=None)\n--\n\n"
"Mean-field marginals of the fully connected CRF (see primaps.dense_crf):\n"
"image (H, W, 3) uint8 with logits (L, H, W), or (B, H, W, 3) with\n"
"(B, L, H, W); returns float32 marginals shaped like logits.");

PyDoc_STRVAR(crf_context_doc,
"crf_context($module, /)\n--\n\n"
"A reusable dense_crf context (workspaces and the smoothness lattice of the\n"
"last image size), as an opaque capsule for dense_crf(..., context=).");

PyDoc_STRVAR(permutohedral_filter_doc,
"permutohedral_filter($module, /, features, values)\n--\n\n"
"The unnormalised permutohedral-lattice Gaussian filter that dense_crf\n"
"uses: features (N, d), d <= 6, already divided by the kernel widths;\n"
"values (N, V) -> (N, V), about c * sum_j exp(-|f_i - f_j|^2 / 2) v_j.");

static PyMethodDef crf_methods[] = {
    {"dense_crf", (PyCFunction)(void (*)(void))py_dense_crf,
     METH_VARARGS | METH_KEYWORDS, dense_crf_doc},
    {"crf_context", (PyCFunction)py_crf_context, METH_NOARGS,
     crf_context_doc},
    {"permutohedral_filter",
     (PyCFunction)(void (*)(void))py_permutohedral_filter,
     METH_VARARGS | METH_KEYWORDS, permutohedral_filter_doc},
    {NULL, NULL, 0, NULL}};

/* ======================================================================== */
/* Module                                                                   */
/* ======================================================================== */

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

static PyMethodDef core_methods[] = {
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

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "_core",
    "The compiled core of primaps (C kernels on OpenBLAS and oneDNN).", -1,
    core_methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__core(void); /* the prototype -Wmissing-prototypes asks for */

PyMODINIT_FUNC PyInit__core(void)
{
    import_array();
    pm_pin_blas();
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    /* One method table per kernel family, each next to its bindings. */
    PyMethodDef *families[] = {masks_methods, em_methods, metrics_methods,
                               crf_methods};
    for (size_t i = 0; i < sizeof families / sizeof families[0]; i++) {
        if (PyModule_AddFunctions(m, families[i]) < 0) {
            Py_DECREF(m);
            return NULL;
        }
    }
    return m;
}
