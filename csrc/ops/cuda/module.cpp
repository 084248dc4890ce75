// Python module entry for clipbert._cuda: importing it registers the CUDA kernels (no GPU needed to load).
// It also exposes the NLL kernels' variant switch (lse_common.cuh, NllKernel), which lives in this library.
#include <Python.h>

#include <exception>

namespace clipbert::cuda {
int set_nll_kernel(int kernel);  // lse_aggregate_kernel.cu; returns the previous choice
}

// _set_nll_kernel(code: int) -> int: sets the process-wide NLL kernel variant, returns the previous one.
static PyObject* set_nll_kernel(PyObject*, PyObject* arg) {
  const long code = PyLong_AsLong(arg);
  if (code == -1 && PyErr_Occurred()) return nullptr;
  try {
    return PyLong_FromLong(clipbert::cuda::set_nll_kernel(static_cast<int>(code)));
  } catch (const std::exception& err) {
    PyErr_SetString(PyExc_ValueError, err.what());
    return nullptr;
  }
}

static PyMethodDef clipbert_cuda_methods[] = {
    {"_set_nll_kernel", set_nll_kernel, METH_O, "Set the NLL CUDA kernel variant (0-3); returns the previous one."},
    {nullptr, nullptr, 0, nullptr}};

static struct PyModuleDef clipbert_cuda_module = {PyModuleDef_HEAD_INIT, "_cuda", nullptr, -1, clipbert_cuda_methods};

PyMODINIT_FUNC PyInit__cuda(void) { return PyModule_Create(&clipbert_cuda_module); }
