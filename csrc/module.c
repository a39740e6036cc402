/* An empty Python module, so setuptools builds and installs the library like any extension;
 * the kernels are reached through ctypes (vocabtrim/native.py), not the C API. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static struct PyModuleDef vt_module = {PyModuleDef_HEAD_INIT, "_native", "vocabtrim's native kernels (used through ctypes)", -1, NULL, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&vt_module); }
