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
#include <signal.h>
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

/* Ctrl-C during a long kernel.  interrupt_begin (GIL held, before the GIL
 * is released) installs, on the main thread only, a SIGINT handler that
 * asks the kernels to stop (pm_interrupt_request) and then calls the
 * handler it replaced (Python's, which records the signal for
 * PyErr_CheckSignals); interrupt_end restores that handler and turns
 * PM_ERR_INTERRUPTED into the KeyboardInterrupt (or whatever the Python
 * handler raises).  A SIGINT that is ignored or left to the default action
 * is left alone. */
static unsigned long main_thread_ident;
static struct sigaction saved_sigint;

static void on_sigint(int sig)
{
    pm_interrupt_request();
    if (saved_sigint.sa_handler != SIG_DFL &&
        saved_sigint.sa_handler != SIG_IGN)
        saved_sigint.sa_handler(sig);
}

static int interrupt_begin(void)
{
    if (PyThread_get_thread_ident() != main_thread_ident) return 0;
    struct sigaction cur, mine;
    if (sigaction(SIGINT, NULL, &cur) != 0) return 0;
    if ((cur.sa_flags & SA_SIGINFO) || cur.sa_handler == SIG_DFL ||
        cur.sa_handler == SIG_IGN || cur.sa_handler == on_sigint)
        return 0;
    saved_sigint = cur;
    pm_interrupt_clear();
    memset(&mine, 0, sizeof mine);
    mine.sa_handler = on_sigint;
    mine.sa_flags = cur.sa_flags;
    sigemptyset(&mine.sa_mask);
    if (sigaction(SIGINT, &mine, NULL) != 0) return 0;
    return 1;
}

/* Returns -1 with the exception set when the kernel was interrupted. */
static int interrupt_end(int active, int status)
{
    if (active) {
        sigaction(SIGINT, &saved_sigint, NULL);
        pm_interrupt_clear();
    }
    if (status != PM_ERR_INTERRUPTED) return 0;
    if (PyErr_CheckSignals() == 0) PyErr_SetNone(PyExc_KeyboardInterrupt);
    return -1;
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
        /* PyErr_Format has no %g: the numbers are formatted here */
        char buf[64];
        snprintf(buf, sizeof buf, "%.3g GiB, more than this machine's %.3g",
                 bytes / 1073741824.0, limit / 1073741824.0);
        PyErr_Format(PyExc_ValueError,
                     "%s asks for an output of %s GiB of memory", name, buf);
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

/* A size of at most PM_MAX_SIDE per axis (the resampling tables' limit). */
static int check_side(const char *name, const npy_intp size[2])
{
    if (size[0] <= PM_MAX_SIDE && size[1] <= PM_MAX_SIDE) return 0;
    PyErr_Format(PyExc_ValueError,
                 "%s must be at most %lld per axis, got (%lld, %lld)", name,
                 (long long)PM_MAX_SIDE, (long long)size[0],
                 (long long)size[1]);
    return -1;
}

/* Parses a spatial size: an int n (meaning (n, n)) or a pair (H, W) (a
 * tuple, a list or a NumPy array of two integers). */
static int parse_size2(PyObject *o, const char *name, npy_intp out[2])
{
    /* an array of one or more axes has __index__ too, but means a pair */
    const int array = PyArray_Check(o) && PyArray_NDIM((PyArrayObject *)o) > 0;
    if (PyIndex_Check(o) && !PyBool_Check(o) && !array) {
        if (parse_positive(o, name, &out[0]) < 0) return -1;
        out[1] = out[0];
        return check_side(name, out);
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
    return check_side(name, out);
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

/* Parses a real number (an int or a float, not a bool), not NaN. */
static int parse_real(PyObject *o, const char *name, double *out)
{
    if (PyBool_Check(o) || !(PyFloat_Check(o) || PyIndex_Check(o) ||
                             PyNumber_Check(o)) ||
        PyComplex_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be a real number, got %s",
                     name, Py_TYPE(o)->tp_name);
        return -1;
    }
    double v = PyFloat_AsDouble(o);
    if (v == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s must be a real number, got %s",
                     name, Py_TYPE(o)->tp_name);
        return -1;
    }
    if (isnan(v)) {
        PyErr_Format(PyExc_ValueError, "%s must be a number, got nan", name);
        return -1;
    }
    *out = v;
    return 0;
}

/* Checks the scalar arguments of masks() with messages naming them. */
static int parse_masks_params(PyObject *thr, PyObject *stop, PyObject *gain,
                              PyObject *med, PyObject *maxm,
                              pm_masks_params *p)
{
    pm_masks_params_default(p);
    if (thr && parse_real(thr, "threshold", &p->threshold) < 0) return -1;
    if (!(p->threshold > 0.0 && p->threshold < 1.0)) {
        PyErr_Format(PyExc_ValueError,
                     "threshold must lie in (0, 1), got %R", thr);
        return -1;
    }
    if (stop && parse_real(stop, "stop_fraction", &p->stop_fraction) < 0)
        return -1;
    if (!(p->stop_fraction > 0.0 && p->stop_fraction <= 1.0)) {
        PyErr_Format(PyExc_ValueError,
                     "stop_fraction must lie in (0, 1], got %R", stop);
        return -1;
    }
    if (gain && parse_real(gain, "gain", &p->gain) < 0) return -1;
    if (!(p->gain > 0.0) || !isfinite(p->gain)) {
        PyErr_Format(PyExc_ValueError,
                     "gain must be a positive finite number, got %R", gain);
        return -1;
    }
    if (med) {
        npy_intp k;
        if (parse_positive(med, "median_size", &k) < 0) return -1;
        if (k % 2 == 0 || k > 63) {
            PyErr_Format(PyExc_ValueError,
                         "median_size must be an odd integer from 1 to 63 "
                         "(1 disables the filter), got %R", med);
            return -1;
        }
        p->median_size = (int)k;
    }
    if (maxm && maxm != Py_None) {
        npy_intp k;
        if (parse_positive(maxm, "max_masks", &k) < 0) {
            if (PyErr_ExceptionMatches(PyExc_TypeError)) {
                PyErr_Clear();
                PyErr_Format(PyExc_TypeError,
                             "max_masks must be None or a positive integer, "
                             "got %s", Py_TYPE(maxm)->tp_name);
            }
            return -1;
        }
        p->max_masks = (int64_t)k;
    }
    return 0;
}

/* The soft logits of every image, [b, M_1..M_n] as (n + 1, h, w) arrays. */
static PyObject *soft_list(PyArrayObject *owner, PyArrayObject *value,
                           const float *level, const int64_t *n_prop,
                           npy_intp B, npy_intp h, npy_intp w)
{
    PyObject *list = PyList_New(B);
    if (!list) return NULL;
    for (npy_intp b = 0; b < B; b++) {
        if (check_output_size("the soft logits",
                              (double)(n_prop[b] + 1) * (double)(h * w),
                              sizeof(float)) < 0)
            goto fail;
        npy_intp dims[3] = {(npy_intp)n_prop[b] + 1, h, w};
        PyArrayObject *s =
            (PyArrayObject *)PyArray_EMPTY(3, dims, NPY_FLOAT32, 0);
        if (!s) goto fail;
        PyList_SET_ITEM(list, b, (PyObject *)s);
        int st;
        const int32_t *own = (const int32_t *)PyArray_DATA(owner) + b * h * w;
        const float *val = (const float *)PyArray_DATA(value) + b * h * w;
        Py_BEGIN_ALLOW_THREADS
        st = pm_masks_soft(own, val, level[b], n_prop[b], h * w,
                           (float *)PyArray_DATA(s));
        Py_END_ALLOW_THREADS
        if (st != PM_OK) {
            raise_status(st, "masks");
            goto fail;
        }
    }
    return list;
fail:
    Py_DECREF(list);
    return NULL;
}

static PyObject *py_masks(PyObject *self, PyObject *args, PyObject *kwargs)
{
    (void)self;
    static char *kwlist[] = {"features",  "threshold", "stop_fraction",
                             "gain",      "median_size", "max_masks",
                             "out_size",  "return_soft", NULL};
    PyObject *obj, *thr = NULL, *stop = NULL, *gain = NULL, *med = NULL,
                   *maxm = Py_None, *size_obj = Py_None;
    int want_soft = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|OOOOOOp:masks", kwlist,
                                     &obj, &thr, &stop, &gain, &med, &maxm,
                                     &size_obj, &want_soft))
        return NULL;
    PyArrayObject *x = NULL, *maps = NULL, *owner = NULL, *value = NULL,
                  *nprop = NULL, *nmask = NULL;
    PyObject *soft = NULL;
    float *level = NULL;
    char buf[160];
    pm_masks_params p;
    if (parse_masks_params(thr, stop, gain, med, maxm, &p) < 0) goto fail;
    x = as_array(obj, "features", NPY_FLOAT32);
    if (!x) goto fail;
    if (check_ndim(x, "features", 3, 4, "(B, C, h, w) or (C, h, w)") < 0)
        goto fail;
    int nd = PyArray_NDIM(x);
    npy_intp *d = PyArray_DIMS(x);
    npy_intp B = nd == 4 ? d[0] : 1, C = d[nd - 3], h = d[nd - 2],
             w = d[nd - 1];
    if (C == 0 || h == 0 || w == 0) {
        PyErr_Format(PyExc_ValueError,
                     "features must have at least one channel and one pixel "
                     "(h * w > 0), got shape %s",
                     shape_str(x, buf, sizeof buf));
        goto fail;
    }
    if (h > NPY_MAX_INT32 / w || C > NPY_MAX_INT32) {
        PyErr_Format(PyExc_ValueError,
                     "features has too many pixels or channels for one "
                     "image, got shape %s", shape_str(x, buf, sizeof buf));
        goto fail;
    }
    npy_intp size[2] = {h, w};
    if (size_obj != Py_None && parse_size2(size_obj, "out_size", size) < 0)
        goto fail;
    if (check_output_size("out_size", (double)B * size[0] * size[1],
                          sizeof(int32_t)) < 0)
        goto fail;
    npy_intp mdims[3] = {B, size[0], size[1]}, bdim[1] = {B};
    npy_intp fdims[3] = {B, h, w};
    maps = (PyArrayObject *)PyArray_EMPTY(3, mdims, NPY_INT32, 0);
    nprop = (PyArrayObject *)PyArray_EMPTY(1, bdim, NPY_INT64, 0);
    nmask = (PyArrayObject *)PyArray_EMPTY(1, bdim, NPY_INT64, 0);
    if (!maps || !nprop || !nmask) goto fail;
    if (want_soft) {
        owner = (PyArrayObject *)PyArray_EMPTY(3, fdims, NPY_INT32, 0);
        value = (PyArrayObject *)PyArray_EMPTY(3, fdims, NPY_FLOAT32, 0);
        level = malloc((size_t)(B ? B : 1) * sizeof(float));
        if (!owner || !value) goto fail;
        if (!level) {
            PyErr_NoMemory();
            goto fail;
        }
    }
    int st;
    const int guard = interrupt_begin();
    Py_BEGIN_ALLOW_THREADS
    st = pm_masks((const float *)PyArray_DATA(x), B, C, h, w, &p, size[0],
                  size[1], (int32_t *)PyArray_DATA(maps),
                  owner ? (int32_t *)PyArray_DATA(owner) : NULL,
                  value ? (float *)PyArray_DATA(value) : NULL, level,
                  (int64_t *)PyArray_DATA(nprop),
                  (int64_t *)PyArray_DATA(nmask));
    Py_END_ALLOW_THREADS
    if (interrupt_end(guard, st) < 0) goto fail;
    if (st != PM_OK) {
        raise_status(st, "features");
        goto fail;
    }
    if (want_soft) {
        soft = soft_list(owner, value, level,
                         (const int64_t *)PyArray_DATA(nprop), B, h, w);
        if (!soft) goto fail;
    } else {
        soft = Py_None;
        Py_INCREF(soft);
    }
    PyObject *res = Py_BuildValue("(NNNN)", maps, soft, nprop, nmask);
    maps = NULL;
    nprop = nmask = NULL;
    soft = NULL;
    Py_DECREF(x);
    Py_XDECREF(owner);
    Py_XDECREF(value);
    free(level);
    return res;
fail:
    Py_XDECREF(x);
    Py_XDECREF(maps);
    Py_XDECREF(owner);
    Py_XDECREF(value);
    Py_XDECREF(nprop);
    Py_XDECREF(nmask);
    Py_XDECREF(soft);
    free(level);
    return NULL;
}

PyDoc_STRVAR(masks_doc,
"masks($module, /, features, threshold=0.4, stop_fraction=0.95, gain=10.0,\n"
"      median_size=3, max_masks=None, out_size=None, return_soft=False)\n"
"--\n\n"
"PriMaPs mask maps of (B, C, h, w) or (C, h, w) features (see\n"
"primaps.masks).  Returns (maps (B, H, W) int32, soft, iterations (B,)\n"
"int64, n_masks (B,) int64); soft is None, or a list of B float32 arrays\n"
"(n_b + 1, h, w): the logits [b, M_1..M_n] at feature resolution.");

static PyMethodDef masks_methods[] = {
    {"masks", (PyCFunction)(void (*)(void))py_masks,
     METH_VARARGS | METH_KEYWORDS, masks_doc},
    {NULL, NULL, 0, NULL}};

/* ======================================================================== */
/* PriMaPs-EM and the linear probe (em.c)                                   */
/* ======================================================================== */

/*
 * Every function takes a workspace (em_workspace(): a capsule owning the
 * oneDNN primitives and buffers, reused from call to call) and a batch:
 * features (n, C, h, w), optional student features of the same shape, mask
 * maps or labels (n, H, W), an optional index (B,) of the images forming
 * the batch (so that a shuffled batch of an in-memory data set needs no
 * copy) and optional flips (B,).  The workspace's lock is held, with the GIL
 * released, around each kernel.
 */

#define EM_WS_NAME "primaps._core.EMWorkspace"

static void em_ws_destructor(PyObject *capsule)
{
    pm_em_ws_free((pm_em_ws *)PyCapsule_GetPointer(capsule, EM_WS_NAME));
}

static PyObject *py_em_workspace(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
    pm_em_ws *ws = NULL;
    int st = pm_em_ws_create(&ws);
    if (st != PM_OK) {
        raise_status(st, "em_workspace");
        return NULL;
    }
    PyObject *cap = PyCapsule_New(ws, EM_WS_NAME, em_ws_destructor);
    if (!cap) pm_em_ws_free(ws);
    return cap;
}

static pm_em_ws *get_ws(PyObject *obj)
{
    if (!PyCapsule_IsValid(obj, EM_WS_NAME)) {
        PyErr_Format(PyExc_TypeError,
                     "ws must be a workspace from em_workspace(), got %s",
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    return (pm_em_ws *)PyCapsule_GetPointer(obj, EM_WS_NAME);
}

static PyObject *py_em_workspace_bytes(PyObject *self, PyObject *arg)
{
    (void)self;
    pm_em_ws *ws = get_ws(arg);
    if (!ws) return NULL;
    size_t n;
    Py_BEGIN_ALLOW_THREADS
    pm_em_ws_lock(ws);
    n = pm_em_ws_bytes(ws);
    pm_em_ws_unlock(ws);
    Py_END_ALLOW_THREADS
    return PyLong_FromSize_t(n);
}

/* Runs one kernel call with the GIL released and the workspace locked. */
#define EM_CALL(ws, st, call)                                               \
    do {                                                                    \
        Py_BEGIN_ALLOW_THREADS                                              \
        pm_em_ws_lock(ws);                                                  \
        st = (call);                                                        \
        pm_em_ws_unlock(ws);                                                \
        Py_END_ALLOW_THREADS                                                \
    } while (0)

/* py_<op>_fwd and py_<op>_bwd: op(args, kwargs, grad) without and with the
 * gradient. */
#define EM_FWD_BWD(op)                                                      \
    static PyObject *py_##op##_fwd(PyObject *self, PyObject *args,          \
                                   PyObject *kwargs)                        \
    {                                                                       \
        (void)self;                                                         \
        return op(args, kwargs, 0);                                         \
    }                                                                       \
    static PyObject *py_##op##_bwd(PyObject *self, PyObject *args,          \
                                   PyObject *kwargs)                        \
    {                                                                       \
        (void)self;                                                         \
        return op(args, kwargs, 1);                                         \
    }

/* The first value of a dense integer map (rows `index`, NULL: all) that
 * lies outside [lo, hi] and is not `also` (NO_ALSO: none); 1 if there is one. */
/* "no extra value": not -1, which is itself a value a map may hold */
#define NO_ALSO LONG_MIN

static int find_bad_id(PyArrayObject *m, long lo, long hi, long also,
                       const int64_t *index, npy_intp nidx, long *bad)
{
    const int type = PyArray_TYPE(m);
    const npy_intp rows = PyArray_NDIM(m) > 0 ? PyArray_DIM(m, 0) : 1;
    const npy_intp per = rows > 0 ? PyArray_SIZE(m) / rows : 0;
    const npy_intp nr = index ? nidx : rows;
    const void *data = PyArray_DATA(m);
    int found = 0;
    Py_BEGIN_ALLOW_THREADS
    for (npy_intp r = 0; r < nr && !found; r++) {
        const npy_intp row = index ? (npy_intp)index[r] : r;
        for (npy_intp i = row * per; i < (row + 1) * per; i++) {
            const long v = type == NPY_UINT8   ? (long)((const uint8_t *)data)[i]
                           : type == NPY_INT32 ? (long)((const int32_t *)data)[i]
                                               : (long)((const int64_t *)data)[i];
            if ((v < lo || v > hi) && v != also) {
                *bad = v;
                found = 1;
                break;
            }
        }
    }
    Py_END_ALLOW_THREADS
    return found;
}

static void raise_bad_id(const char *name, long lo, long hi, long also,
                         long bad)
{
    if (also != NO_ALSO)
        PyErr_Format(PyExc_ValueError,
                     "%s must hold values in [%ld, %ld] or %ld (ignore), got %ld",
                     name, lo, hi, also, bad);
    else
        PyErr_Format(PyExc_ValueError,
                     "%s must hold values in [%ld, %ld], got %ld", name, lo, hi,
                     bad);
}

/* An integer map (labels or mask ids) as a dense array of typenum
 * (NPY_UINT8 or NPY_INT32) whose values lie in [lo, hi] or equal `also`
 * (NO_ALSO: none).  Any other integer dtype is checked and then cast; a map
 * already of typenum is checked only if `check` is set (the kernels check
 * their maps too: a batch's map is scanned here only to explain a refusal).
 * Floats, booleans and other kinds are refused. */
static PyArrayObject *as_id_map(PyObject *obj, const char *name, int typenum,
                                long lo, long hi, long also, int check)
{
    PyArrayObject *a = as_array(obj, name, NPY_NOTYPE);
    if (!a) return NULL;
    char kind = PyArray_DESCR(a)->kind;
    if (kind != 'i' && kind != 'u') {
        PyObject *d = PyObject_Str((PyObject *)PyArray_DESCR(a));
        PyErr_Format(PyExc_TypeError, "%s must be an integer array, got dtype %s",
                     name, d ? PyUnicode_AsUTF8(d) : "?");
        Py_XDECREF(d);
        Py_DECREF(a);
        return NULL;
    }
    int same = PyArray_TYPE(a) == typenum;
    PyArrayObject *wide = (PyArrayObject *)PyArray_FROM_OTF(
        (PyObject *)a, same ? typenum : NPY_INT64,
        NPY_ARRAY_IN_ARRAY | NPY_ARRAY_FORCECAST);
    Py_DECREF(a);
    if (!wide) return NULL;
    long bad;
    if ((check || !same) && find_bad_id(wide, lo, hi, also, NULL, 0, &bad)) {
        raise_bad_id(name, lo, hi, also, bad);
        Py_DECREF(wide);
        return NULL;
    }
    if (same) return wide;
    PyArrayObject *out = (PyArrayObject *)PyArray_FROM_OTF(
        (PyObject *)wide, typenum, NPY_ARRAY_IN_ARRAY | NPY_ARRAY_FORCECAST);
    Py_DECREF(wide);
    return out;
}

/* The arrays of one batch, converted and checked against each other. */
typedef struct {
    PyArrayObject *features, *student, *masks, *labels, *index, *flip;
    long n_classes;
    pm_batch bt;
} em_batch;

static void em_batch_clear(em_batch *a)
{
    Py_XDECREF(a->features);
    Py_XDECREF(a->student);
    Py_XDECREF(a->masks);
    Py_XDECREF(a->labels);
    Py_XDECREF(a->index);
    Py_XDECREF(a->flip);
    memset(a, 0, sizeof *a);
}

/* A required map argument may not be None (em_batch_parse reads None as
 * "absent", which only the optional arguments may be). */
static int require_map(PyObject *obj, const char *name)
{
    if (obj != Py_None) return 0;
    PyErr_Format(PyExc_TypeError,
                 "%s must be an integer array of shape (n, H, W), got None",
                 name);
    return -1;
}

/* A map (n, H, W) that matches the features' n. */
static int check_map_shape(PyArrayObject *m, const char *name, npy_intp n)
{
    char buf[160];
    if (PyArray_NDIM(m) != 3 || PyArray_DIM(m, 0) != n ||
        PyArray_DIM(m, 1) < 1 || PyArray_DIM(m, 2) < 1) {
        PyErr_Format(PyExc_ValueError,
                     "%s must have shape (n, H, W) with n = %ld images as in "
                     "features, got %s",
                     name, (long)n, shape_str(m, buf, sizeof buf));
        return -1;
    }
    return 0;
}

/* Converts and checks the batch arguments; None means absent.  n_classes
 * is needed when labels are given. */
static int em_batch_parse(em_batch *a, PyObject *features, PyObject *student,
                          PyObject *masks, PyObject *labels, PyObject *index,
                          PyObject *flip, long n_classes)
{
    char buf[160], buf2[160];
    memset(a, 0, sizeof *a);
    a->features = as_array(features, "features", NPY_FLOAT32);
    if (!a->features) return -1;
    if (check_ndim(a->features, "features", 4, 4, "(n, C, h, w)") < 0)
        return -1;
    npy_intp *d = PyArray_DIMS(a->features);
    if (d[0] < 1 || d[1] < 1 || d[2] < 1 || d[3] < 1) {
        PyErr_Format(PyExc_ValueError,
                     "features must have at least one image, channel and "
                     "pixel, got shape %s",
                     shape_str(a->features, buf, sizeof buf));
        return -1;
    }
    pm_batch *bt = &a->bt;
    bt->n = d[0];
    bt->C = d[1];
    bt->h = d[2];
    bt->w = d[3];
    bt->B = d[0];
    bt->features = PyArray_DATA(a->features);
    if (student && student != Py_None) {
        a->student = as_array(student, "student_features", NPY_FLOAT32);
        if (!a->student) return -1;
        if (!PyArray_SAMESHAPE(a->student, a->features)) {
            PyErr_Format(PyExc_ValueError,
                         "student_features must have the shape of features "
                         "%s, got %s",
                         shape_str(a->features, buf, sizeof buf),
                         shape_str(a->student, buf2, sizeof buf2));
            return -1;
        }
        bt->student = PyArray_DATA(a->student);
    }
    if (index && index != Py_None) {
        /* image numbers: integers only (a float index would be truncated) */
        a->index = as_array(index, "index", NPY_NOTYPE);
        if (!a->index) return -1;
        const char kind = PyArray_DESCR(a->index)->kind;
        if (kind != 'i' && kind != 'u') {
            PyObject *s = PyObject_Str((PyObject *)PyArray_DESCR(a->index));
            PyErr_Format(PyExc_TypeError,
                         "index must be an integer array of image numbers, got "
                         "dtype %s",
                         s ? PyUnicode_AsUTF8(s) : "?");
            Py_XDECREF(s);
            return -1;
        }
        PyArrayObject *ix64 = (PyArrayObject *)PyArray_FROM_OTF(
            (PyObject *)a->index, NPY_INT64,
            NPY_ARRAY_IN_ARRAY | NPY_ARRAY_FORCECAST);
        Py_SETREF(a->index, ix64);
        if (!a->index) return -1;
        if (check_ndim(a->index, "index", 1, 1, "(B,)") < 0) return -1;
        if (PyArray_DIM(a->index, 0) < 1) {
            PyErr_SetString(PyExc_ValueError,
                            "index must select at least one image");
            return -1;
        }
        const int64_t *ix = PyArray_DATA(a->index);
        for (npy_intp i = 0; i < PyArray_DIM(a->index, 0); i++)
            if (ix[i] < 0 || ix[i] >= bt->n) {
                PyErr_Format(PyExc_ValueError,
                             "index must hold image numbers in [0, %ld), got "
                             "%lld",
                             (long)bt->n, (long long)ix[i]);
                return -1;
            }
        bt->index = ix;
        bt->B = PyArray_DIM(a->index, 0);
    }
    if (flip && flip != Py_None) {
        /* any array of truth values (bool or numbers): nonzero means
         * mirrored; strings, objects and the like are refused */
        PyArrayObject *fl = any_array(flip, "flip", "an array of flags");
        if (!fl) return -1;
        const char kind = PyArray_DESCR(fl)->kind;
        if (kind != 'b' && !numeric_kind(PyArray_DESCR(fl))) {
            PyObject *s = PyObject_Str((PyObject *)PyArray_DESCR(fl));
            PyErr_Format(PyExc_TypeError,
                         "flip must be an array of flags (bool or numbers), got "
                         "dtype %s",
                         s ? PyUnicode_AsUTF8(s) : "?");
            Py_XDECREF(s);
            Py_DECREF(fl);
            return -1;
        }
        a->flip = (PyArrayObject *)PyArray_FROM_OTF(
            (PyObject *)fl, NPY_BOOL, NPY_ARRAY_IN_ARRAY | NPY_ARRAY_FORCECAST);
        Py_DECREF(fl);
        if (!a->flip) return -1;
        if (PyArray_NDIM(a->flip) != 1 || PyArray_DIM(a->flip, 0) != bt->B) {
            PyErr_Format(PyExc_ValueError,
                         "flip must have shape (%ld,), one flag per image of "
                         "the batch, got %s",
                         (long)bt->B, shape_str(a->flip, buf, sizeof buf));
            return -1;
        }
        bt->flip = PyArray_DATA(a->flip); /* NPY_BOOL is one byte, 0 or 1 */
    }
    if (masks && masks != Py_None) {
        a->masks = as_id_map(masks, "masks", NPY_INT32, 0, PM_MAX_MASK_ID, NO_ALSO,
                             0);
        if (!a->masks || check_map_shape(a->masks, "masks", bt->n) < 0)
            return -1;
        bt->masks = PyArray_DATA(a->masks);
        bt->H = PyArray_DIM(a->masks, 1);
        bt->W = PyArray_DIM(a->masks, 2);
    }
    if (labels && labels != Py_None) {
        a->labels = as_id_map(labels, "labels", NPY_UINT8, 0, n_classes - 1,
                              PM_IGNORE, 0);
        a->n_classes = n_classes;
        if (!a->labels || check_map_shape(a->labels, "labels", bt->n) < 0)
            return -1;
        bt->labels = PyArray_DATA(a->labels);
        bt->H = PyArray_DIM(a->labels, 1);
        bt->W = PyArray_DIM(a->labels, 2);
    }
    return 0;
}

/* A float32 array of shape (K, C) (C = -1: any) with 1 <= K <= 255 and no
 * NaN or inf. */
static PyArrayObject *as_matrix(PyObject *obj, const char *name, npy_intp C)
{
    char buf[160];
    PyArrayObject *a = as_array(obj, name, NPY_FLOAT32);
    if (!a) return NULL;
    if (PyArray_NDIM(a) != 2 || PyArray_DIM(a, 0) < 1 ||
        PyArray_DIM(a, 0) > 255 || PyArray_DIM(a, 1) < 1 ||
        (C >= 0 && PyArray_DIM(a, 1) != C)) {
        if (C >= 0)
            PyErr_Format(PyExc_ValueError,
                         "%s must have shape (K, %ld) with 1 <= K <= 255 "
                         "classes and the features' %ld channels, got %s",
                         name, (long)C, (long)C, shape_str(a, buf, sizeof buf));
        else
            PyErr_Format(PyExc_ValueError,
                         "%s must have shape (K, C) with 1 <= K <= 255, got %s",
                         name, shape_str(a, buf, sizeof buf));
        Py_DECREF(a);
        return NULL;
    }
    const float *p = PyArray_DATA(a);
    for (npy_intp i = 0; i < PyArray_SIZE(a); i++)
        if (!isfinite(p[i])) {
            PyErr_Format(PyExc_ValueError, "%s contains NaN or inf", name);
            Py_DECREF(a);
            return NULL;
        }
    return a;
}

/* A float32 vector of shape (K,) without NaN or inf. */
static PyArrayObject *as_vector(PyObject *obj, const char *name, npy_intp K)
{
    char buf[160];
    PyArrayObject *a = as_array(obj, name, NPY_FLOAT32);
    if (!a) return NULL;
    if (PyArray_NDIM(a) != 1 || PyArray_DIM(a, 0) != K) {
        PyErr_Format(PyExc_ValueError, "%s must have shape (%ld,), got %s",
                     name, (long)K, shape_str(a, buf, sizeof buf));
        Py_DECREF(a);
        return NULL;
    }
    const float *p = PyArray_DATA(a);
    for (npy_intp i = 0; i < K; i++)
        if (!isfinite(p[i])) {
            PyErr_Format(PyExc_ValueError, "%s contains NaN or inf", name);
            Py_DECREF(a);
            return NULL;
        }
    return a;
}

static PyArrayObject *new_f32(int nd, npy_intp d0, npy_intp d1)
{
    npy_intp dims[2] = {d0, d1};
    return (PyArrayObject *)PyArray_EMPTY(nd, dims, NPY_FLOAT32, 0);
}

/* ------------------------------------------------------------ pieces */

static PyObject *py_weightnorm_fwd(PyObject *self, PyObject *args,
                                   PyObject *kwargs)
{
    (void)self;
    static char *kwlist[] = {"v", "g", NULL};
    PyObject *vo, *go;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO:weightnorm_fwd", kwlist,
                                     &vo, &go))
        return NULL;
    PyArrayObject *v = NULL, *g = NULL, *out = NULL;
    v = as_matrix(vo, "v", -1);
    if (!v) goto fail;
    g = as_vector(go, "g", PyArray_DIM(v, 0));
    if (!g) goto fail;
    out = new_f32(2, PyArray_DIM(v, 0), PyArray_DIM(v, 1));
    if (!out) goto fail;
    pm_weightnorm_fwd(PyArray_DATA(v), PyArray_DATA(g), PyArray_DIM(v, 0),
                      PyArray_DIM(v, 1), PyArray_DATA(out));
    Py_DECREF(v);
    Py_DECREF(g);
    return (PyObject *)out;
fail:
    Py_XDECREF(v);
    Py_XDECREF(g);
    Py_XDECREF(out);
    return NULL;
}

static PyObject *py_weightnorm_bwd(PyObject *self, PyObject *args,
                                   PyObject *kwargs)
{
    (void)self;
    static char *kwlist[] = {"v", "g", "dtheta", NULL};
    PyObject *vo, *go, *dto;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO:weightnorm_bwd",
                                     kwlist, &vo, &go, &dto))
        return NULL;
    PyArrayObject *v = NULL, *g = NULL, *dt = NULL, *dv = NULL, *dg = NULL;
    v = as_matrix(vo, "v", -1);
    if (!v) goto fail;
    npy_intp K = PyArray_DIM(v, 0), C = PyArray_DIM(v, 1);
    g = as_vector(go, "g", K);
    if (!g) goto fail;
    dt = as_matrix(dto, "dtheta", C);
    if (!dt) goto fail;
    if (PyArray_DIM(dt, 0) != K) {
        PyErr_Format(PyExc_ValueError, "dtheta must have shape (%ld, %ld)",
                     (long)K, (long)C);
        goto fail;
    }
    dv = new_f32(2, K, C);
    dg = new_f32(1, K, 0);
    if (!dv || !dg) goto fail;
    pm_weightnorm_bwd(PyArray_DATA(v), PyArray_DATA(g), PyArray_DATA(dt), K, C,
                      PyArray_DATA(dv), PyArray_DATA(dg));
    Py_DECREF(v);
    Py_DECREF(g);
    Py_DECREF(dt);
    return Py_BuildValue("(NN)", dv, dg);
fail:
    Py_XDECREF(v);
    Py_XDECREF(g);
    Py_XDECREF(dt);
    Py_XDECREF(dv);
    Py_XDECREF(dg);
    return NULL;
}

/* Low-resolution logits (B, K, h, w) for the label-resolution kernels. */
static PyArrayObject *as_logits(PyObject *obj)
{
    char buf[160];
    PyArrayObject *z = as_array(obj, "logits", NPY_FLOAT32);
    if (!z) return NULL;
    if (PyArray_NDIM(z) != 4 || PyArray_DIM(z, 0) < 1 ||
        PyArray_DIM(z, 1) < 1 || PyArray_DIM(z, 1) > 255 ||
        PyArray_DIM(z, 2) < 1 || PyArray_DIM(z, 3) < 1) {
        PyErr_Format(PyExc_ValueError,
                     "logits must have shape (B, K, h, w) with 1 <= K <= 255, "
                     "got %s",
                     shape_str(z, buf, sizeof buf));
        Py_DECREF(z);
        return NULL;
    }
    const float *p = PyArray_DATA(z);
    for (npy_intp i = 0; i < PyArray_SIZE(z); i++)
        if (!isfinite(p[i])) {
            PyErr_SetString(PyExc_ValueError, "logits contains NaN or inf");
            Py_DECREF(z);
            return NULL;
        }
    return z;
}

static PyObject *py_label_softmax_mean(PyObject *self, PyObject *args,
                                       PyObject *kwargs)
{
    (void)self;
    static char *kwlist[] = {"ws", "logits", "size", NULL};
    PyObject *wso, *zo, *so;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO:label_softmax_mean",
                                     kwlist, &wso, &zo, &so))
        return NULL;
    pm_em_ws *ws = get_ws(wso);
    if (!ws) return NULL;
    npy_intp size[2];
    if (parse_size2(so, "size", size) < 0) return NULL;
    PyArrayObject *z = as_logits(zo), *chi = NULL;
    if (!z) return NULL;
    npy_intp *d = PyArray_DIMS(z);
    chi = (PyArrayObject *)PyArray_EMPTY(1, &d[1], NPY_FLOAT64, 0);
    if (!chi) goto fail;
    int st;
    EM_CALL(ws, st,
            pm_label_softmax_mean(ws, PyArray_DATA(z), d[0], d[1], d[2], d[3],
                                  size[0], size[1], PyArray_DATA(chi)));
    if (st != PM_OK) {
        raise_status(st, "label_softmax_mean");
        goto fail;
    }
    Py_DECREF(z);
    return (PyObject *)chi;
fail:
    Py_XDECREF(z);
    Py_XDECREF(chi);
    return NULL;
}

/* label_ce_fwd / label_ce_bwd */
static PyObject *label_ce(PyObject *args, PyObject *kwargs, int grad)
{
    static char *kwlist[] = {"ws", "logits", "labels", "weights", "scale",
                             NULL};
    PyObject *wso, *zo, *lo, *wo;
    double scale;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOd:label_ce", kwlist,
                                     &wso, &zo, &lo, &wo, &scale))
        return NULL;
    pm_em_ws *ws = get_ws(wso);
    if (!ws) return NULL;
    PyArrayObject *z = NULL, *lab = NULL, *wt = NULL, *dz = NULL;
    z = as_logits(zo);
    if (!z) goto fail;
    npy_intp *d = PyArray_DIMS(z);
    lab = as_id_map(lo, "labels", NPY_UINT8, 0, d[1] - 1, PM_IGNORE, 1);
    if (!lab || check_map_shape(lab, "labels", d[0]) < 0) goto fail;
    wt = as_vector(wo, "weights", d[1]);
    if (!wt) goto fail;
    if (grad) {
        dz = (PyArrayObject *)PyArray_EMPTY(4, d, NPY_FLOAT32, 0);
        if (!dz) goto fail;
    }
    double loss = 0.0;
    int st;
    EM_CALL(ws, st,
            grad ? pm_label_ce_bwd(ws, PyArray_DATA(z), PyArray_DATA(lab), NULL,
                                   NULL, d[0], PyArray_DATA(wt), scale, d[0],
                                   d[1], d[2], d[3], PyArray_DIM(lab, 1),
                                   PyArray_DIM(lab, 2), &loss, PyArray_DATA(dz))
                 : pm_label_ce_fwd(ws, PyArray_DATA(z), PyArray_DATA(lab), NULL,
                                   NULL, d[0], PyArray_DATA(wt), scale, d[0],
                                   d[1], d[2], d[3], PyArray_DIM(lab, 1),
                                   PyArray_DIM(lab, 2), &loss));
    if (st != PM_OK) {
        raise_status(st, "label_ce");
        goto fail;
    }
    Py_DECREF(z);
    Py_DECREF(lab);
    Py_DECREF(wt);
    if (grad) return Py_BuildValue("(dN)", loss, dz);
    return PyFloat_FromDouble(loss);
fail:
    Py_XDECREF(z);
    Py_XDECREF(lab);
    Py_XDECREF(wt);
    Py_XDECREF(dz);
    return NULL;
}

EM_FWD_BWD(label_ce)

static PyObject *py_label_argmax(PyObject *self, PyObject *args,
                                 PyObject *kwargs)
{
    (void)self;
    static char *kwlist[] = {"ws", "logits", "size", NULL};
    PyObject *wso, *zo, *so;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO:label_argmax", kwlist,
                                     &wso, &zo, &so))
        return NULL;
    pm_em_ws *ws = get_ws(wso);
    if (!ws) return NULL;
    npy_intp size[2];
    if (parse_size2(so, "size", size) < 0) return NULL;
    PyArrayObject *z = as_logits(zo), *out = NULL;
    if (!z) return NULL;
    npy_intp *d = PyArray_DIMS(z);
    if (check_output_size("size", (double)d[0] * size[0] * size[1], 4) < 0)
        goto fail;
    npy_intp od[3] = {d[0], size[0], size[1]};
    out = (PyArrayObject *)PyArray_EMPTY(3, od, NPY_INT32, 0);
    if (!out) goto fail;
    int st;
    EM_CALL(ws, st,
            pm_label_argmax(ws, PyArray_DATA(z), d[0], d[1], d[2], d[3],
                            size[0], size[1], PyArray_DATA(out)));
    if (st != PM_OK) {
        raise_status(st, "label_argmax");
        goto fail;
    }
    Py_DECREF(z);
    return (PyObject *)out;
fail:
    Py_XDECREF(z);
    Py_XDECREF(out);
    return NULL;
}

/* A status of a batched kernel as an exception: non-finite logits come
 * from the features (the prototypes were checked at the door); a refused
 * argument is a mask id or a label out of range, found and named here. */
static void raise_batch_status(const em_batch *a, int st, const char *what)
{
    long bad;
    const pm_batch *bt = &a->bt;
    if (st == PM_ERR_NONFINITE) {
        PyErr_SetString(PyExc_ValueError,
                        "features contains NaN or inf (or values so large "
                        "that the logits overflow)");
        return;
    }
    if (st == PM_ERR_ARG && a->masks &&
        find_bad_id(a->masks, 0, PM_MAX_MASK_ID, NO_ALSO, bt->index, bt->B, &bad)) {
        raise_bad_id("masks", 0, PM_MAX_MASK_ID, NO_ALSO, bad);
        return;
    }
    if (st == PM_ERR_ARG && a->labels &&
        find_bad_id(a->labels, 0, a->n_classes - 1, PM_IGNORE, bt->index, bt->B,
                    &bad)) {
        raise_bad_id("labels", 0, a->n_classes - 1, PM_IGNORE, bad);
        return;
    }
    raise_status(st, what);
}

/* ------------------------------------------------------- estimators */

static PyObject *kmeans(PyObject *args, PyObject *kwargs, int grad)
{
    static char *kwlist[] = {"ws", "features", "v", "index", NULL};
    PyObject *wso, *fo, *vo, *io = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO|O:kmeans", kwlist, &wso,
                                     &fo, &vo, &io))
        return NULL;
    pm_em_ws *ws = get_ws(wso);
    if (!ws) return NULL;
    em_batch a;
    PyArrayObject *v = NULL, *dv = NULL;
    if (em_batch_parse(&a, fo, NULL, NULL, NULL, io, NULL, 0) < 0) goto fail;
    v = as_matrix(vo, "v", a.bt.C);
    if (!v) goto fail;
    npy_intp K = PyArray_DIM(v, 0);
    if (grad && !(dv = new_f32(2, K, a.bt.C))) goto fail;
    double loss = 0.0;
    int st;
    EM_CALL(ws, st,
            grad ? pm_kmeans_bwd(ws, &a.bt, PyArray_DATA(v), K, &loss,
                                 PyArray_DATA(dv))
                 : pm_kmeans_fwd(ws, &a.bt, PyArray_DATA(v), K, &loss));
    if (st != PM_OK) {
        raise_batch_status(&a, st, "kmeans");
        goto fail;
    }
    em_batch_clear(&a);
    Py_DECREF(v);
    if (grad) return Py_BuildValue("(dN)", loss, dv);
    return PyFloat_FromDouble(loss);
fail:
    em_batch_clear(&a);
    Py_XDECREF(v);
    Py_XDECREF(dv);
    return NULL;
}

EM_FWD_BWD(kmeans)

static PyObject *focal(PyObject *args, PyObject *kwargs, int grad)
{
    static char *kwlist[] = {"ws",    "features", "labels", "v",    "g",
                             "gamma", "student_features",   "index", "flip",
                             NULL};
    PyObject *wso, *fo, *lo, *vo, *go, *so = Py_None, *io = Py_None,
                                        *flo = Py_None;
    double gamma;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOd|OOO:focal", kwlist,
                                     &wso, &fo, &lo, &vo, &go, &gamma, &so, &io,
                                     &flo))
        return NULL;
    pm_em_ws *ws = get_ws(wso);
    if (!ws) return NULL;
    if (!(gamma >= 0.0) || !isfinite(gamma)) {
        PyErr_Format(PyExc_ValueError,
                     "gamma must be a finite number >= 0, got %g", gamma);
        return NULL;
    }
    if (require_map(lo, "labels") < 0) return NULL;
    em_batch a;
    memset(&a, 0, sizeof a);
    PyArrayObject *v = NULL, *g = NULL, *chi = NULL, *dv = NULL, *dg = NULL;
    /* K from v, before the labels are checked against it. */
    v = as_matrix(vo, "v", -1);
    if (!v) goto fail;
    npy_intp K = PyArray_DIM(v, 0);
    if (em_batch_parse(&a, fo, so, NULL, lo, io, flo, (long)K) < 0) goto fail;
    if (PyArray_DIM(v, 1) != a.bt.C) {
        PyErr_Format(PyExc_ValueError,
                     "v must have the features' %ld channels, got %ld",
                     (long)a.bt.C, (long)PyArray_DIM(v, 1));
        goto fail;
    }
    g = as_vector(go, "g", K);
    if (!g) goto fail;
    chi = (PyArrayObject *)PyArray_EMPTY(1, &K, NPY_FLOAT64, 0);
    if (!chi) goto fail;
    if (grad && (!(dv = new_f32(2, K, a.bt.C)) || !(dg = new_f32(1, K, 0))))
        goto fail;
    double loss = 0.0;
    int st;
    EM_CALL(ws, st,
            grad ? pm_focal_bwd(ws, &a.bt, PyArray_DATA(v), PyArray_DATA(g), K,
                                gamma, PyArray_DATA(chi), &loss,
                                PyArray_DATA(dv), PyArray_DATA(dg))
                 : pm_focal_fwd(ws, &a.bt, PyArray_DATA(v), PyArray_DATA(g), K,
                                gamma, PyArray_DATA(chi), &loss));
    if (st != PM_OK) {
        raise_batch_status(&a, st, "focal");
        goto fail;
    }
    em_batch_clear(&a);
    Py_DECREF(v);
    Py_DECREF(g);
    if (grad) return Py_BuildValue("(dNNN)", loss, chi, dv, dg);
    return Py_BuildValue("(dN)", loss, chi);
fail:
    em_batch_clear(&a);
    Py_XDECREF(v);
    Py_XDECREF(g);
    Py_XDECREF(chi);
    Py_XDECREF(dv);
    Py_XDECREF(dg);
    return NULL;
}

EM_FWD_BWD(focal)

static PyObject *py_teacher_pseudo(PyObject *self, PyObject *args,
                                   PyObject *kwargs)
{
    (void)self;
    static char *kwlist[] = {"ws", "features", "masks", "theta",
                             "index", "flip", NULL};
    PyObject *wso, *fo, *mo, *to, *io = Py_None, *flo = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOO|OO:teacher_pseudo",
                                     kwlist, &wso, &fo, &mo, &to, &io, &flo))
        return NULL;
    pm_em_ws *ws = get_ws(wso);
    if (!ws) return NULL;
    if (require_map(mo, "masks") < 0) return NULL;
    em_batch a;
    PyArrayObject *theta = NULL, *out = NULL;
    if (em_batch_parse(&a, fo, NULL, mo, NULL, io, flo, 0) < 0) goto fail;
    theta = as_matrix(to, "theta", a.bt.C);
    if (!theta) goto fail;
    npy_intp od[3] = {a.bt.B, a.bt.H, a.bt.W};
    out = (PyArrayObject *)PyArray_EMPTY(3, od, NPY_UINT8, 0);
    if (!out) goto fail;
    int st;
    EM_CALL(ws, st,
            pm_teacher_pseudo(ws, &a.bt, PyArray_DATA(theta),
                              PyArray_DIM(theta, 0), PyArray_DATA(out)));
    if (st != PM_OK) {
        raise_batch_status(&a, st, "teacher_pseudo");
        goto fail;
    }
    em_batch_clear(&a);
    Py_DECREF(theta);
    return (PyObject *)out;
fail:
    em_batch_clear(&a);
    Py_XDECREF(theta);
    Py_XDECREF(out);
    return NULL;
}

static PyObject *py_em_step(PyObject *self, PyObject *args, PyObject *kwargs)
{
    (void)self;
    static char *kwlist[] = {"ws",        "features",  "masks",
                             "teacher_v", "teacher_g", "student_v",
                             "student_g", "gamma",     "student_features",
                             "index",     "flip",      "return_pseudo",
                             NULL};
    PyObject *wso, *fo, *mo, *vto, *gto, *vso, *gso, *so = Py_None,
                                                     *io = Py_None,
                                                     *flo = Py_None;
    double gamma;
    int want_pseudo = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOOOd|OOOp:em_step",
                                     kwlist, &wso, &fo, &mo, &vto, &gto, &vso,
                                     &gso, &gamma, &so, &io, &flo,
                                     &want_pseudo))
        return NULL;
    pm_em_ws *ws = get_ws(wso);
    if (!ws) return NULL;
    if (!(gamma >= 0.0) || !isfinite(gamma)) {
        PyErr_Format(PyExc_ValueError,
                     "gamma must be a finite number >= 0, got %g", gamma);
        return NULL;
    }
    if (require_map(mo, "masks") < 0) return NULL;
    em_batch a;
    PyArrayObject *vt = NULL, *gt = NULL, *vs = NULL, *gs = NULL, *chi = NULL,
                  *dv = NULL, *dg = NULL, *pseudo = NULL;
    if (em_batch_parse(&a, fo, so, mo, NULL, io, flo, 0) < 0) goto fail;
    vt = as_matrix(vto, "teacher_v", a.bt.C);
    if (!vt) goto fail;
    npy_intp K = PyArray_DIM(vt, 0), C = a.bt.C;
    vs = as_matrix(vso, "student_v", C);
    if (!vs) goto fail;
    if (PyArray_DIM(vs, 0) != K) {
        PyErr_Format(PyExc_ValueError,
                     "student_v must have the %ld rows of teacher_v, got %ld",
                     (long)K, (long)PyArray_DIM(vs, 0));
        goto fail;
    }
    gt = as_vector(gto, "teacher_g", K);
    gs = gt ? as_vector(gso, "student_g", K) : NULL;
    if (!gt || !gs) goto fail;
    chi = (PyArrayObject *)PyArray_EMPTY(1, &K, NPY_FLOAT64, 0);
    dv = new_f32(2, K, C);
    dg = new_f32(1, K, 0);
    if (!chi || !dv || !dg) goto fail;
    if (want_pseudo) {
        npy_intp od[3] = {a.bt.B, a.bt.H, a.bt.W};
        pseudo = (PyArrayObject *)PyArray_EMPTY(3, od, NPY_UINT8, 0);
        if (!pseudo) goto fail;
    }
    double loss = 0.0;
    int st;
    EM_CALL(ws, st,
            pm_em_step(ws, &a.bt, PyArray_DATA(vt), PyArray_DATA(gt),
                       PyArray_DATA(vs), PyArray_DATA(gs), K, gamma,
                       PyArray_DATA(chi), &loss, PyArray_DATA(dv),
                       PyArray_DATA(dg),
                       pseudo ? (uint8_t *)PyArray_DATA(pseudo) : NULL));
    if (st != PM_OK) {
        raise_batch_status(&a, st, "em_step");
        goto fail;
    }
    em_batch_clear(&a);
    Py_DECREF(vt);
    Py_DECREF(gt);
    Py_DECREF(vs);
    Py_DECREF(gs);
    if (pseudo) return Py_BuildValue("(dNNNN)", loss, chi, dv, dg, pseudo);
    return Py_BuildValue("(dNNN)", loss, chi, dv, dg);
fail:
    em_batch_clear(&a);
    Py_XDECREF(vt);
    Py_XDECREF(gt);
    Py_XDECREF(vs);
    Py_XDECREF(gs);
    Py_XDECREF(chi);
    Py_XDECREF(dv);
    Py_XDECREF(dg);
    Py_XDECREF(pseudo);
    return NULL;
}

static PyObject *probe(PyObject *args, PyObject *kwargs, int grad)
{
    static char *kwlist[] = {"ws", "features", "labels", "weight", "bias",
                             "index", NULL};
    PyObject *wso, *fo, *lo, *wo, *bo, *io = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOO|O:probe", kwlist,
                                     &wso, &fo, &lo, &wo, &bo, &io))
        return NULL;
    pm_em_ws *ws = get_ws(wso);
    if (!ws) return NULL;
    if (require_map(lo, "labels") < 0) return NULL;
    em_batch a;
    memset(&a, 0, sizeof a);
    PyArrayObject *wt = NULL, *bias = NULL, *dw = NULL, *db = NULL;
    wt = as_matrix(wo, "weight", -1);
    if (!wt) goto fail;
    npy_intp K = PyArray_DIM(wt, 0);
    if (em_batch_parse(&a, fo, NULL, NULL, lo, io, NULL, (long)K) < 0)
        goto fail;
    if (PyArray_DIM(wt, 1) != a.bt.C) {
        PyErr_Format(PyExc_ValueError,
                     "weight must have the features' %ld channels, got %ld",
                     (long)a.bt.C, (long)PyArray_DIM(wt, 1));
        goto fail;
    }
    bias = as_vector(bo, "bias", K);
    if (!bias) goto fail;
    if (grad && (!(dw = new_f32(2, K, a.bt.C)) || !(db = new_f32(1, K, 0))))
        goto fail;
    double loss = 0.0;
    int st;
    EM_CALL(ws, st,
            grad ? pm_probe_bwd(ws, &a.bt, PyArray_DATA(wt), PyArray_DATA(bias),
                                K, &loss, PyArray_DATA(dw), PyArray_DATA(db))
                 : pm_probe_fwd(ws, &a.bt, PyArray_DATA(wt), PyArray_DATA(bias),
                                K, &loss));
    if (st != PM_OK) {
        raise_batch_status(&a, st, "probe");
        goto fail;
    }
    em_batch_clear(&a);
    Py_DECREF(wt);
    Py_DECREF(bias);
    if (grad) return Py_BuildValue("(dNN)", loss, dw, db);
    return PyFloat_FromDouble(loss);
fail:
    em_batch_clear(&a);
    Py_XDECREF(wt);
    Py_XDECREF(bias);
    Py_XDECREF(dw);
    Py_XDECREF(db);
    return NULL;
}

EM_FWD_BWD(probe)

static PyObject *py_em_predict(PyObject *self, PyObject *args,
                               PyObject *kwargs)
{
    (void)self;
    static char *kwlist[] = {"ws", "features", "theta", "size", "bias",
                             "index", NULL};
    PyObject *wso, *fo, *to, *so, *bo = Py_None, *io = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOO|OO:predict", kwlist,
                                     &wso, &fo, &to, &so, &bo, &io))
        return NULL;
    pm_em_ws *ws = get_ws(wso);
    if (!ws) return NULL;
    npy_intp size[2];
    if (parse_size2(so, "size", size) < 0) return NULL;
    em_batch a;
    PyArrayObject *theta = NULL, *bias = NULL, *out = NULL;
    if (em_batch_parse(&a, fo, NULL, NULL, NULL, io, NULL, 0) < 0) goto fail;
    theta = as_matrix(to, "theta", a.bt.C);
    if (!theta) goto fail;
    if (bo != Py_None && !(bias = as_vector(bo, "bias", PyArray_DIM(theta, 0))))
        goto fail;
    if (check_output_size("size", (double)a.bt.B * size[0] * size[1], 4) < 0)
        goto fail;
    a.bt.H = size[0];
    a.bt.W = size[1];
    npy_intp od[3] = {a.bt.B, size[0], size[1]};
    out = (PyArrayObject *)PyArray_EMPTY(3, od, NPY_INT32, 0);
    if (!out) goto fail;
    int st;
    EM_CALL(ws, st,
            pm_predict(ws, &a.bt, PyArray_DATA(theta),
                       bias ? (const float *)PyArray_DATA(bias) : NULL,
                       PyArray_DIM(theta, 0), PyArray_DATA(out)));
    if (st != PM_OK) {
        raise_batch_status(&a, st, "predict");
        goto fail;
    }
    em_batch_clear(&a);
    Py_DECREF(theta);
    Py_XDECREF(bias);
    return (PyObject *)out;
fail:
    em_batch_clear(&a);
    Py_XDECREF(theta);
    Py_XDECREF(bias);
    Py_XDECREF(out);
    return NULL;
}

static PyObject *py_as_label_map(PyObject *self, PyObject *args,
                                 PyObject *kwargs)
{
    (void)self;
    static char *kwlist[] = {"labels", "n_classes", "name", NULL};
    PyObject *lo, *ko;
    const char *name = "labels";
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO|s:as_label_map", kwlist,
                                     &lo, &ko, &name))
        return NULL;
    npy_intp K;
    if (parse_positive(ko, "n_classes", &K) < 0) return NULL;
    if (K > 255) {
        PyErr_Format(PyExc_ValueError, "n_classes must be at most 255, got %ld",
                     (long)K);
        return NULL;
    }
    return (PyObject *)as_id_map(lo, name, NPY_UINT8, 0, (long)K - 1,
                                 PM_IGNORE, 1);
}

static PyObject *py_as_mask_map(PyObject *self, PyObject *args,
                                PyObject *kwargs)
{
    (void)self;
    static char *kwlist[] = {"masks", "name", NULL};
    PyObject *mo;
    const char *name = "masks";
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|s:as_mask_map", kwlist,
                                     &mo, &name))
        return NULL;
    return (PyObject *)as_id_map(mo, name, NPY_INT32, 0, PM_MAX_MASK_ID, NO_ALSO,
                                 1);
}

#define EM_KW(name, fn, doc)                                                \
    {name, (PyCFunction)(void (*)(void))fn, METH_VARARGS | METH_KEYWORDS, doc}

static PyMethodDef em_methods[] = {
    {"em_workspace", (PyCFunction)py_em_workspace, METH_NOARGS,
     "em_workspace($module, /)\n--\n\n"
     "A workspace for the EM and probe kernels: oneDNN primitives cached per\n"
     "shape and buffers reused from call to call (a capsule)."},
    {"em_workspace_bytes", (PyCFunction)py_em_workspace_bytes, METH_O,
     "em_workspace_bytes($module, ws, /)\n--\n\n"
     "Bytes held by the workspace's buffers."},
    EM_KW("weightnorm_fwd", py_weightnorm_fwd,
          "weightnorm_fwd($module, /, v, g)\n--\n\n"
          "theta = g[:, None] * v / ||v|| row by row (K, C)."),
    EM_KW("weightnorm_bwd", py_weightnorm_bwd,
          "weightnorm_bwd($module, /, v, g, dtheta)\n--\n\n"
          "(dv, dg) from the gradient with respect to theta."),
    EM_KW("label_softmax_mean", py_label_softmax_mean,
          "label_softmax_mean($module, /, ws, logits, size)\n--\n\n"
          "Mean softmax probability of each class over all pixels of the\n"
          "logits (B, K, h, w) upsampled bilinearly to size; float64 (K,)."),
    EM_KW("label_ce_fwd", py_label_ce_fwd,
          "label_ce_fwd($module, /, ws, logits, labels, weights, scale)\n--\n\n"
          "scale * sum over labelled pixels of weights[y] * -log softmax[y] of\n"
          "the logits (B, K, h, w) upsampled to the labels' (B, H, W)."),
    EM_KW("label_ce_bwd", py_label_ce_bwd,
          "label_ce_bwd($module, /, ws, logits, labels, weights, scale)\n--\n\n"
          "(loss, d loss / d logits) of label_ce_fwd."),
    EM_KW("label_argmax", py_label_argmax,
          "label_argmax($module, /, ws, logits, size)\n--\n\n"
          "Argmax over classes of the upsampled logits; int32 (B, H, W)."),
    EM_KW("kmeans_fwd", py_kmeans_fwd,
          "kmeans_fwd($module, /, ws, features, v, index=None)\n--\n\n"
          "Cosine K-means loss -mean_p max_k cos(v_k, F_p)."),
    EM_KW("kmeans_bwd", py_kmeans_bwd,
          "kmeans_bwd($module, /, ws, features, v, index=None)\n--\n\n"
          "(loss, dv) of the cosine K-means loss."),
    EM_KW("focal_fwd", py_focal_fwd,
          "focal_fwd($module, /, ws, features, labels, v, g, gamma,\n"
          "          student_features=None, index=None, flip=None)\n--\n\n"
          "(loss, chi) of the focal loss of PriMaPs-EM at label resolution."),
    EM_KW("focal_bwd", py_focal_bwd,
          "focal_bwd($module, /, ws, features, labels, v, g, gamma,\n"
          "          student_features=None, index=None, flip=None)\n--\n\n"
          "(loss, chi, dv, dg) of the focal loss."),
    EM_KW("teacher_pseudo", py_teacher_pseudo,
          "teacher_pseudo($module, /, ws, features, masks, theta, index=None,\n"
          "               flip=None)\n--\n\n"
          "Pseudo labels: the mode of the teacher's label-resolution argmax\n"
          "over every mask; 255 on the background.  uint8 (B, H, W)."),
    EM_KW("em_step", py_em_step,
          "em_step($module, /, ws, features, masks, teacher_v, teacher_g,\n"
          "        student_v, student_g, gamma, student_features=None,\n"
          "        index=None, flip=None, return_pseudo=False)\n--\n\n"
          "One E-step and focal M-step gradient: (loss, chi, dv, dg[, pseudo])."),
    EM_KW("probe_fwd", py_probe_fwd,
          "probe_fwd($module, /, ws, features, labels, weight, bias,\n"
          "          index=None)\n--\n\n"
          "Cross-entropy of the linear probe at label resolution."),
    EM_KW("probe_bwd", py_probe_bwd,
          "probe_bwd($module, /, ws, features, labels, weight, bias,\n"
          "          index=None)\n--\n\n"
          "(loss, dweight, dbias) of the linear probe."),
    EM_KW("em_predict", py_em_predict,
          "em_predict($module, /, ws, features, theta, size, bias=None,\n"
          "           index=None)\n--\n\n"
          "argmax_k of theta F (+ bias) upsampled to size; int32 (B, H, W)."),
    EM_KW("as_label_map", py_as_label_map,
          "as_label_map($module, /, labels, n_classes, name='labels')\n--\n\n"
          "labels checked to hold classes in [0, n_classes) or 255; uint8."),
    EM_KW("as_mask_map", py_as_mask_map,
          "as_mask_map($module, /, masks, name='masks')\n--\n\n"
          "mask maps checked to hold ids in [0, 65535]; int32."),
    {NULL, NULL, 0, NULL}};

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
    const int guard = interrupt_begin();
    Py_BEGIN_ALLOW_THREADS
    st = pm_dense_crf(ctx, (const uint8_t *)PyArray_DATA(img),
                      (const float *)PyArray_DATA(lg),
                      (float *)PyArray_DATA(out), B, L, H, W, &p);
    Py_END_ALLOW_THREADS
    if (interrupt_end(guard, st) < 0) goto fail;
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
    /* lattice coordinates of NaN or inf do not exist */
    const float *fp = (const float *)PyArray_DATA(f);
    for (npy_intp i = 0; i < N * d; i++)
        if (!isfinite(fp[i])) {
            PyErr_SetString(PyExc_ValueError, "features contains NaN or inf");
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
    main_thread_ident = PyThread_get_thread_ident();
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
