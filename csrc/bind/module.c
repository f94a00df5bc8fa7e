/*
 * module.c -- the module primaps._core: the method tables of the binding
 * files (one per area of the core, each next to its bindings) registered
 * in one module.  Only the files of csrc/bind/ talk to Python; the kernels
 * of csrc/ know nothing of it.
 */
#define PM_BIND_MODULE /* this file imports NumPy's C API for all of them */
#include "common.h"


static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "_core",
    "The compiled core of primaps (C kernels on OpenBLAS and oneDNN).", -1,
    NULL, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__core(void); /* the prototype -Wmissing-prototypes asks for */

PyMODINIT_FUNC PyInit__core(void)
{
    import_array();
    pm_pin_blas();
    main_thread_ident = PyThread_get_thread_ident();
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    /* One method table per kernel family, each next to its bindings. */
    PyMethodDef *families[] = {runtime_methods, masks_methods, em_methods,
                               metrics_methods, crf_methods};
    for (size_t i = 0; i < sizeof families / sizeof families[0]; i++) {
        if (PyModule_AddFunctions(m, families[i]) < 0) {
            Py_DECREF(m);
            return NULL;
        }
    }
    return m;
}
