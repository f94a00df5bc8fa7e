/* em_args.h -- shared by the EM bindings (em.c) and their arguments (em_args.c). */
#ifndef PM_BIND_EM_ARGS_H
#define PM_BIND_EM_ARGS_H

#include <limits.h>

#include "common.h"


/*
 * Every function takes a workspace (em_workspace(): a capsule owning the
 * oneDNN primitives and buffers, reused from call to call) and a batch:
 * features (n, C, h, w), optional student features of the same shape, mask
 * maps or labels (n, H, W), an optional index (B,) of the images forming
 * the batch (so that a shuffled batch of an in-memory data set needs no
 * copy) and optional flips (B,).  The workspace's lock is held, with the GIL
 * released, around each kernel.  float16 features (without an index) are
 * widened to float32 in the workspace inside that locked call.
 */


#define EM_WS_NAME "primaps._core.EMWorkspace"

/* Runs one kernel call with the GIL released and the workspace locked. */
#define EM_CALL(ws, st, call)                                               \
    do {                                                                    \
        Py_BEGIN_ALLOW_THREADS                                              \
        pm_em_ws_lock(ws);                                                  \
        st = (call);                                                        \
        pm_em_ws_unlock(ws);                                                \
        Py_END_ALLOW_THREADS                                                \
    } while (0)

/* EM_CALL, then the status as an exception (goto fail): of a kernel on
 * logits or prototypes (EM_RUN), or of a batched kernel, whose refusals
 * are explained by the batch's maps (EM_RUN_BATCH). */
#define EM_RUN(ws, what, call)                                              \
    do {                                                                    \
        int st_;                                                            \
        EM_CALL(ws, st_, call);                                             \
        if (st_ != PM_OK) {                                                 \
            raise_status(st_, what);                                        \
            goto fail;                                                      \
        }                                                                   \
    } while (0)
#define EM_RUN_BATCH(ws, batch, what, call)                                 \
    do {                                                                    \
        int st_;                                                            \
        Py_BEGIN_ALLOW_THREADS                                              \
        pm_em_ws_lock(ws);                                                  \
        st_ = pm_em_batch_widen(ws, &(batch)->bt);                          \
        if (st_ == PM_OK) st_ = (call);                                     \
        pm_em_ws_unlock(ws);                                                \
        Py_END_ALLOW_THREADS                                                \
        if (st_ != PM_OK) {                                                 \
            raise_batch_status(batch, st_, what);                           \
            goto fail;                                                      \
        }                                                                   \
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


/* "no extra value": not -1, which is itself a value a map may hold */
#define NO_ALSO LONG_MIN

/* The arrays of one batch, converted and checked against each other. */
typedef struct {
    PyArrayObject *features, *student, *masks, *labels, *index, *flip;
    long n_classes;
    pm_batch bt;
} em_batch;

pm_em_ws *get_ws(PyObject *obj);
int find_bad_id(PyArrayObject *m, long lo, long hi, long also, const int64_t *index,
                npy_intp nidx, long *bad);
void raise_bad_id(const char *name, long lo, long hi, long also, long bad);
PyArrayObject *as_id_map(PyObject *obj, const char *name, int typenum, long lo, long hi,
                         long also, int check);
void em_batch_clear(em_batch *a);
int require_map(PyObject *obj, const char *name);
int check_map_shape(PyArrayObject *m, const char *name, npy_intp n);
int em_batch_parse(em_batch *a, PyObject *features, PyObject *student, PyObject *masks,
                   PyObject *labels, PyObject *index, PyObject *flip, long n_classes);
PyArrayObject *as_matrix(PyObject *obj, const char *name, npy_intp C);
PyArrayObject *as_vector(PyObject *obj, const char *name, npy_intp K);
PyArrayObject *new_f32(int nd, npy_intp d0, npy_intp d1);
void raise_batch_status(const em_batch *a, int st, const char *what);

#endif
