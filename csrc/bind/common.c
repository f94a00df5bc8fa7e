/*
 * common.c -- the vocabulary every binding file shares: shapes in messages,
 * kernel statuses as exceptions, Ctrl-C around a kernel, inputs converted
 * to dense native arrays with TypeError / ValueError naming the argument,
 * and the integer, real and size arguments.
 */
#include "common.h"

#include <math.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>


/* Writes "(3, 40, 40)" into buf. */
const char *shape_str(PyArrayObject *a, char *buf, size_t len)
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
void raise_status(int status, const char *what)
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
unsigned long main_thread_ident;
static struct sigaction saved_sigint;

static void on_sigint(int sig)
{
    pm_interrupt_request();
    if (saved_sigint.sa_handler != SIG_DFL &&
        saved_sigint.sa_handler != SIG_IGN)
        saved_sigint.sa_handler(sig);
}

int interrupt_begin(void)
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
int interrupt_end(int active, int status)
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
int numeric_kind(PyArray_Descr *d)
{
    return d->kind == 'i' || d->kind == 'u' || d->kind == 'f';
}

/* obj as an ndarray of any dtype (a new reference), or NULL with a
 * TypeError "<name> must be <expect>, got ..." for None, strings and what
 * NumPy cannot convert.  A non-array input is converted by NumPy (a list of
 * numbers, a torch tensor via __array__). */
PyArrayObject *any_array(PyObject *obj, const char *name,
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
PyArrayObject *numeric_array(PyObject *obj, const char *name)
{
    PyArrayObject *src = any_array(obj, name, "a numeric array");
    if (!src) return NULL;
    if (!numeric_kind(PyArray_DESCR(src))) {
        raise_dtype(name, "a numeric array", PyArray_DESCR(src), "");
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
PyArrayObject *as_array(PyObject *obj, const char *name, int typenum)
{
    PyArrayObject *src = numeric_array(obj, name);
    if (!src) return NULL;
    PyArrayObject *out = (PyArrayObject *)PyArray_FROM_OTF(
        (PyObject *)src, typenum, NPY_ARRAY_IN_ARRAY | NPY_ARRAY_FORCECAST);
    Py_DECREF(src);
    return out;
}

/* Checks 3 <= ndim <= 4 style ranges with a message naming the argument. */
int check_ndim(PyArrayObject *a, const char *name, int lo, int hi,
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
int check_output_size(const char *name, double count, size_t itemsize)
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

/* An integer in [lo, hi] (not a bool, not a float): a TypeError "<name>
 * must be <kind>" for other types, a ValueError "<name> must be <range>"
 * outside the range. */
int parse_integer(PyObject *o, const char *name, long long lo, long long hi,
                  const char *kind, const char *range, long long *out)
{
    if (PyBool_Check(o) || PyFloat_Check(o) || !PyIndex_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be %s, got %s", name, kind,
                     Py_TYPE(o)->tp_name);
        return -1;
    }
    PyObject *idx = PyNumber_Index(o);
    if (!idx) return -1;
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(idx, &overflow);
    Py_DECREF(idx);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (overflow || v < lo || v > hi) {
        PyObject *r = PyObject_Repr(o);
        PyErr_Format(PyExc_ValueError, "%s must be %s, got %s", name, range,
                     r ? PyUnicode_AsUTF8(r) : "?");
        Py_XDECREF(r);
        return -1;
    }
    *out = v;
    return 0;
}

int parse_positive(PyObject *o, const char *name, npy_intp *out)
{
    long long v;
    if (parse_integer(o, name, 1, NPY_MAX_INTP, "a positive integer", "a positive integer",
                      &v) < 0)
        return -1;
    *out = (npy_intp)v;
    return 0;
}

int parse_nonnegative(PyObject *o, const char *name, npy_intp *out)
{
    long long v;
    if (parse_integer(o, name, 0, NPY_MAX_INTP - 1, "a non-negative integer",
                      "a non-negative integer", &v) < 0)
        return -1;
    *out = (npy_intp)v;
    return 0;
}

/* A size of at most PM_MAX_SIDE per axis (the resampling tables' limit). */
int check_side(const char *name, const npy_intp size[2])
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
int parse_size2(PyObject *o, const char *name, npy_intp out[2])
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


/* Parses a real number (an int or a float, not a bool), not NaN. */
int parse_real(PyObject *o, const char *name, double *out)
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

void raise_dtype(const char *name, const char *expect, PyArray_Descr *d, const char *hint)
{
    PyObject *s = PyObject_Str((PyObject *)d);
    PyErr_Format(PyExc_TypeError, "%s must be %s, got dtype %s%s", name, expect,
                 s ? PyUnicode_AsUTF8(s) : "?", hint);
    Py_XDECREF(s);
}

int check_finite(PyArrayObject *a, const char *name)
{
    const float *p = PyArray_DATA(a);
    for (npy_intp i = 0; i < PyArray_SIZE(a); i++)
        if (!isfinite(p[i])) {
            PyErr_Format(PyExc_ValueError, "%s contains NaN or inf", name);
            return -1;
        }
    return 0;
}

PyArrayObject *as_features(PyObject *obj, const char *name, npy_intp *B, npy_intp *C,
                           npy_intp *h, npy_intp *w)
{
    PyArrayObject *x = as_array(obj, name, NPY_FLOAT32);
    if (!x) return NULL;
    if (check_ndim(x, name, 3, 4, "(B, C, h, w) or (C, h, w)") < 0) {
        Py_DECREF(x);
        return NULL;
    }
    const int nd = PyArray_NDIM(x);
    const npy_intp *d = PyArray_DIMS(x);
    *B = nd == 4 ? d[0] : 1;
    *C = d[nd - 3];
    *h = d[nd - 2];
    *w = d[nd - 1];
    return x;
}
