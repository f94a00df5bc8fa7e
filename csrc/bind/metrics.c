/*
 * metrics.c -- the binding of the confusion matrix (csrc/metrics.c): label
 * arrays of any integer dtype, read in place where they can be.
 */
#include "common.h"

#include <string.h>

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
        raise_dtype(name, "an integer array of labels", d,
                    " (round or cast it first, e.g. x.astype(np.int64))");
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

PyMethodDef metrics_methods[] = {
    {"confusion_matrix", (PyCFunction)(void (*)(void))py_confusion_matrix,
     METH_VARARGS | METH_KEYWORDS, confusion_matrix_doc},
    {NULL, NULL, 0, NULL}};
