/*
 * masks.c -- the binding of the mask proposals (csrc/masks.c): masks() with
 * its scalar parameters, the optional soft logits and the CRF refinement.
 */
#include "common.h"

#include <math.h>
#include <string.h>

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
        RUN_NOGIL(st, "masks",
                  pm_masks_soft(own, val, level[b], n_prop[b], h * w,
                                (float *)PyArray_DATA(s)));
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
    npy_intp B, C, h, w;
    x = as_features(obj, "features", &B, &C, &h, &w);
    if (!x) goto fail;
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

PyMethodDef masks_methods[] = {
    {"masks", (PyCFunction)(void (*)(void))py_masks,
     METH_VARARGS | METH_KEYWORDS, masks_doc},
    {NULL, NULL, 0, NULL}};
