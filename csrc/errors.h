// The engine's exceptions. The binding turns each into a Python exception of the same name, so a
// bmrt/bmlib failure never aborts the process: it surfaces in Python with what was tried.
#pragma once

#include <stdexcept>
#include <string>

namespace wct {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// libbmlib/libbmrt cannot be found or lack a symbol (no libsophon, no tpu-mlir).
struct LibraryError : Error {
  using Error::Error;
};

// The .bmodel is unusable: unreadable, corrupt, or its nets do not follow docs/tpu-pieces.md.
struct ModelError : Error {
  using Error::Error;
};

// The device refused: cannot be opened, out of device memory, a launch or copy failed.
struct DeviceError : Error {
  using Error::Error;
};

}  // namespace wct
