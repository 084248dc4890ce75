// Python module entry for clipbert._cuda: importing it registers the CUDA kernels (no GPU needed to load).
#include <Python.h>

static struct PyModuleDef clipbert_cuda_module = {PyModuleDef_HEAD_INIT, "_cuda", nullptr, -1, nullptr};

PyMODINIT_FUNC PyInit__cuda(void) { return PyModule_Create(&clipbert_cuda_module); }
