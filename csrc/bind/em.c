/*
 * em.c -- the bindings of PriMaPs-EM and the linear probe (csrc/em.c): the
 * workspace, the pieces (weight norm, label-resolution softmax, cross
 * entropy, argmax), the K-means, focal and probe losses with their
 * gradients, the teacher's pseudo labels, one EM step and prediction.
 */
#include "common.h"
#include "em_args.h"

#include <math.h>
#include <string.h>

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
    if (check_finite(z, "logits") < 0) {
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
    EM_RUN(ws, "label_softmax_mean",
            pm_label_softmax_mean(ws, PyArray_DATA(z), d[0], d[1], d[2], d[3],
                                  size[0], size[1], PyArray_DATA(chi)));
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
    EM_RUN(ws, "label_ce",
            grad ? pm_label_ce_bwd(ws, PyArray_DATA(z), PyArray_DATA(lab), NULL,
                                   NULL, d[0], PyArray_DATA(wt), scale, d[0],
                                   d[1], d[2], d[3], PyArray_DIM(lab, 1),
                                   PyArray_DIM(lab, 2), &loss, PyArray_DATA(dz))
                 : pm_label_ce_fwd(ws, PyArray_DATA(z), PyArray_DATA(lab), NULL,
                                   NULL, d[0], PyArray_DATA(wt), scale, d[0],
                                   d[1], d[2], d[3], PyArray_DIM(lab, 1),
                                   PyArray_DIM(lab, 2), &loss));
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
    EM_RUN(ws, "label_argmax",
            pm_label_argmax(ws, PyArray_DATA(z), d[0], d[1], d[2], d[3],
                            size[0], size[1], PyArray_DATA(out)));
    Py_DECREF(z);
    return (PyObject *)out;
fail:
    Py_XDECREF(z);
    Py_XDECREF(out);
    return NULL;
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
    EM_RUN_BATCH(ws, &a, "kmeans",
            grad ? pm_kmeans_bwd(ws, &a.bt, PyArray_DATA(v), K, &loss,
                                 PyArray_DATA(dv))
                 : pm_kmeans_fwd(ws, &a.bt, PyArray_DATA(v), K, &loss));
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
    EM_RUN_BATCH(ws, &a, "focal",
            grad ? pm_focal_bwd(ws, &a.bt, PyArray_DATA(v), PyArray_DATA(g), K,
                                gamma, PyArray_DATA(chi), &loss,
                                PyArray_DATA(dv), PyArray_DATA(dg))
                 : pm_focal_fwd(ws, &a.bt, PyArray_DATA(v), PyArray_DATA(g), K,
                                gamma, PyArray_DATA(chi), &loss));
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
    EM_RUN_BATCH(ws, &a, "teacher_pseudo",
            pm_teacher_pseudo(ws, &a.bt, PyArray_DATA(theta),
                              PyArray_DIM(theta, 0), PyArray_DATA(out)));
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
    EM_RUN_BATCH(ws, &a, "em_step",
            pm_em_step(ws, &a.bt, PyArray_DATA(vt), PyArray_DATA(gt),
                       PyArray_DATA(vs), PyArray_DATA(gs), K, gamma,
                       PyArray_DATA(chi), &loss, PyArray_DATA(dv),
                       PyArray_DATA(dg),
                       pseudo ? (uint8_t *)PyArray_DATA(pseudo) : NULL));
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
    EM_RUN_BATCH(ws, &a, "probe",
            grad ? pm_probe_bwd(ws, &a.bt, PyArray_DATA(wt), PyArray_DATA(bias),
                                K, &loss, PyArray_DATA(dw), PyArray_DATA(db))
                 : pm_probe_fwd(ws, &a.bt, PyArray_DATA(wt), PyArray_DATA(bias),
                                K, &loss));
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
    EM_RUN_BATCH(ws, &a, "predict",
            pm_predict(ws, &a.bt, PyArray_DATA(theta),
                       bias ? (const float *)PyArray_DATA(bias) : NULL,
                       PyArray_DIM(theta, 0), PyArray_DATA(out)));
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

PyMethodDef em_methods[] = {
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
