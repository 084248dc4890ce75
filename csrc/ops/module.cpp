// Python module entry for clipbert._C: importing it runs the static TORCH_LIBRARY registrations.
#include <Python.h>

static struct PyModuleDef clipbert_c_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&clipbert_c_module); }
