/*
 * em_args.c -- the arguments of the EM and probe bindings (em.c): the
 * workspace capsule, integer maps (labels, mask ids) checked against their
 * range, a batch's arrays checked against each other, prototypes (K, C)
 * and vectors (K,) without NaN or inf.
 */
#include "common.h"
#include "em_args.h"

#include <limits.h>
#include <math.h>
#include <string.h>

pm_em_ws *get_ws(PyObject *obj)
{
    if (!PyCapsule_IsValid(obj, EM_WS_NAME)) {
        PyErr_Format(PyExc_TypeError,
                     "ws must be a workspace from em_workspace(), got %s",
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    return (pm_em_ws *)PyCapsule_GetPointer(obj, EM_WS_NAME);
}

/* The first value of a dense integer map (rows `index`, NULL: all) that
 * lies outside [lo, hi] and is not `also` (NO_ALSO: none); 1 if there is one. */

int find_bad_id(PyArrayObject *m, long lo, long hi, long also,
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

void raise_bad_id(const char *name, long lo, long hi, long also,
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
PyArrayObject *as_id_map(PyObject *obj, const char *name, int typenum,
                                long lo, long hi, long also, int check)
{
    PyArrayObject *a = as_array(obj, name, NPY_NOTYPE);
    if (!a) return NULL;
    char kind = PyArray_DESCR(a)->kind;
    if (kind != 'i' && kind != 'u') {
        raise_dtype(name, "an integer array", PyArray_DESCR(a), "");
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


void em_batch_clear(em_batch *a)
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
int require_map(PyObject *obj, const char *name)
{
    if (obj != Py_None) return 0;
    PyErr_Format(PyExc_TypeError,
                 "%s must be an integer array of shape (n, H, W), got None",
                 name);
    return -1;
}

/* A map (n, H, W) that matches the features' n. */
int check_map_shape(PyArrayObject *m, const char *name, npy_intp n)
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

/* features or student_features as float32, or as float16 (kept for
 * pm_em_batch_widen, the kernel call's, with the GIL released) when it is a
 * float16 array and the batch has no index; *f32 or *f16 points at it. */
static PyArrayObject *batch_array(PyObject *obj, const char *name, int keep_half,
                                  const float **f32, const uint16_t **f16)
{
    const int half = keep_half && PyArray_Check(obj) &&
                     PyArray_TYPE((PyArrayObject *)obj) == NPY_HALF;
    PyArrayObject *a = as_array(obj, name, half ? NPY_HALF : NPY_FLOAT32);
    if (!a) return NULL;
    if (half)
        *f16 = PyArray_DATA(a);
    else
        *f32 = PyArray_DATA(a);
    return a;
}

/* Converts and checks the batch arguments; None means absent.  n_classes
 * is needed when labels are given. */
int em_batch_parse(em_batch *a, PyObject *features, PyObject *student,
                          PyObject *masks, PyObject *labels, PyObject *index,
                          PyObject *flip, long n_classes)
{
    char buf[160], buf2[160];
    memset(a, 0, sizeof *a);
    /* with an index, NumPy converts float16 here (the kernel reads rows) */
    const int no_index = !index || index == Py_None;
    pm_batch *bt = &a->bt;
    a->features = batch_array(features, "features", no_index, &bt->features,
                              &bt->features16);
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
    bt->n = d[0];
    bt->C = d[1];
    bt->h = d[2];
    bt->w = d[3];
    bt->B = d[0];
    if (student && student != Py_None) {
        a->student = batch_array(student, "student_features", no_index,
                                 &bt->student, &bt->student16);
        if (!a->student) return -1;
        if (!PyArray_SAMESHAPE(a->student, a->features)) {
            PyErr_Format(PyExc_ValueError,
                         "student_features must have the shape of features "
                         "%s, got %s",
                         shape_str(a->features, buf, sizeof buf),
                         shape_str(a->student, buf2, sizeof buf2));
            return -1;
        }
    }
    if (index && index != Py_None) {
        /* image numbers: integers only (a float index would be truncated) */
        a->index = as_array(index, "index", NPY_NOTYPE);
        if (!a->index) return -1;
        const char kind = PyArray_DESCR(a->index)->kind;
        if (kind != 'i' && kind != 'u') {
            raise_dtype("index", "an integer array of image numbers",
                        PyArray_DESCR(a->index), "");
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
            raise_dtype("flip", "an array of flags (bool or numbers)",
                        PyArray_DESCR(fl), "");
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
PyArrayObject *as_matrix(PyObject *obj, const char *name, npy_intp C)
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
    if (check_finite(a, name) < 0) {
        Py_DECREF(a);
        return NULL;
    }
    return a;
}

/* A float32 vector of shape (K,) without NaN or inf. */
PyArrayObject *as_vector(PyObject *obj, const char *name, npy_intp K)
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
    if (check_finite(a, name) < 0) {
        Py_DECREF(a);
        return NULL;
    }
    return a;
}

PyArrayObject *new_f32(int nd, npy_intp d0, npy_intp d1)
{
    npy_intp dims[2] = {d0, d1};
    return (PyArrayObject *)PyArray_EMPTY(nd, dims, NPY_FLOAT32, 0);
}

/* A status of a batched kernel as an exception: non-finite logits come
 * from the features (the prototypes were checked at the door); a refused
 * argument is a mask id or a label out of range, found and named here. */
void raise_batch_status(const em_batch *a, int st, const char *what)
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
