// wizardcoder_tpu._bmrt: the table of contents. Each register_* lives beside what it binds.
#include <pybind11/pybind11.h>

namespace py = pybind11;

void register_errors(py::module_& m);
void register_runtime(py::module_& m);
void register_bmodel(py::module_& m);
void register_engine(py::module_& m);

PYBIND11_MODULE(_bmrt, m) {
  m.doc() = "The C++ bmrt engine: a .bmodel on a BM1684X (or tpu-mlir's cmodel), KV cache on the device.";
  register_errors(m);
  register_runtime(m);
  register_bmodel(m);
  register_engine(m);
}
