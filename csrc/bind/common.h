/*
 * common.h -- the vocabulary of the binding files (csrc/bind/).
 *
 * Every entry point follows the same pattern: check kinds and shapes at the
 * door (TypeError / ValueError naming the argument and what it got), convert
 * the inputs to dense native arrays (a copy only when needed), allocate the
 * NumPy-owned outputs, release the GIL around the kernel, and turn its status
 * into an exception.  Each function has one cleanup label.
 *
 * NumPy's C API is imported once, by module.c; the other files share its
 * table (PY_ARRAY_UNIQUE_SYMBOL).
 */
#ifndef PM_BIND_COMMON_H
#define PM_BIND_COMMON_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#define PY_ARRAY_UNIQUE_SYMBOL primaps_ARRAY_API
#ifndef PM_BIND_MODULE
#define NO_IMPORT_ARRAY
#endif
#include <numpy/arrayobject.h>

#include <stddef.h>

#include "primaps.h"

/* Messages */
const char *shape_str(PyArrayObject *a, char *buf, size_t len); /* "(3, 40, 40)" */
void raise_status(int status, const char *what); /* a kernel status as an exception */
/* TypeError "<name> must be <expect>, got dtype <d><hint>" */
void raise_dtype(const char *name, const char *expect, PyArray_Descr *d, const char *hint);

/* Ctrl-C around a kernel: begin with the GIL held, end after the kernel
 * (-1 with KeyboardInterrupt set when it was interrupted). */
extern unsigned long main_thread_ident;
int interrupt_begin(void);
int interrupt_end(int active, int status);

/* A kernel call with the GIL released, then its status as an exception
 * (goto fail); `st` is an int of the caller. */
#define RUN_NOGIL(st, what, call)                                           \
    do {                                                                    \
        Py_BEGIN_ALLOW_THREADS                                              \
        st = (call);                                                        \
        Py_END_ALLOW_THREADS                                                \
        if (st != PM_OK) {                                                  \
            raise_status(st, what);                                         \
            goto fail;                                                      \
        }                                                                   \
    } while (0)

/* Arrays: new references, or NULL with the exception set. */
int numeric_kind(PyArray_Descr *d); /* ints, unsigned ints, floats */
PyArrayObject *any_array(PyObject *obj, const char *name, const char *expect);
PyArrayObject *numeric_array(PyObject *obj, const char *name);
PyArrayObject *as_array(PyObject *obj, const char *name, int typenum); /* dense, native */
/* float32 features (B, C, h, w), or one map (C, h, w) with B = 1 */
PyArrayObject *as_features(PyObject *obj, const char *name, npy_intp *B, npy_intp *C,
                           npy_intp *h, npy_intp *w);
int check_ndim(PyArrayObject *a, const char *name, int lo, int hi, const char *expect);
int check_finite(PyArrayObject *a, const char *name); /* float32: -1 on NaN or inf */
int check_output_size(const char *name, double count, size_t itemsize);

/* Scalars and sizes */
int parse_integer(PyObject *o, const char *name, long long lo, long long hi,
                  const char *kind, const char *range, long long *out);
int parse_positive(PyObject *o, const char *name, npy_intp *out);
int parse_nonnegative(PyObject *o, const char *name, npy_intp *out);
int parse_real(PyObject *o, const char *name, double *out);
int check_side(const char *name, const npy_intp size[2]);
int parse_size2(PyObject *o, const char *name, npy_intp out[2]);

/* The method tables of the areas, registered by module.c. */
extern PyMethodDef runtime_methods[], masks_methods[], em_methods[], metrics_methods[],
    crf_methods[];

#endif
