/*
 * crf.c -- the bindings of the dense CRF (csrc/crf.c): dense_crf with its
 * parameters, the reusable context and the raw permutohedral filter.
 */
#include "common.h"

#include <math.h>
#include <string.h>

/* A uint8 image array: any other dtype is a TypeError naming the argument
 * (colour scales are defined on 0..255 intensities); strided, negative-
 * stride or non-array (e.g. a torch tensor) input is converted. */
static PyArrayObject *as_uint8_image(PyObject *obj, const char *name)
{
    PyArrayObject *src = any_array(obj, name, "a uint8 array");
    if (!src) return NULL;
    if (PyArray_TYPE(src) != NPY_UINT8) {
        raise_dtype(name, "a uint8 array (RGB intensities 0..255)", PyArray_DESCR(src), "");
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
    long long v;
    if (parse_integer(o, "iterations", 0, 1000000, "a non-negative integer",
                      "an integer in [0, 1000000]", &v) < 0)
        return -1;
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
    RUN_NOGIL(st, "features",
              pm_permutohedral_filter((const float *)PyArray_DATA(f),
                                      (const float *)PyArray_DATA(v),
                                      (float *)PyArray_DATA(out), N, (int)d, V));
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

PyMethodDef crf_methods[] = {
    {"dense_crf", (PyCFunction)(void (*)(void))py_dense_crf,
     METH_VARARGS | METH_KEYWORDS, dense_crf_doc},
    {"crf_context", (PyCFunction)py_crf_context, METH_NOARGS,
     crf_context_doc},
    {"permutohedral_filter",
     (PyCFunction)(void (*)(void))py_permutohedral_filter,
     METH_VARARGS | METH_KEYWORDS, permutohedral_filter_doc},
    {NULL, NULL, 0, NULL}};

