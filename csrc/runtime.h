// Loading libbmlib + libbmrt at run time (dlopen), so the module imports without libsophon.
#pragma once

#include <string>
#include <vector>

#include "bmrt_api.h"

namespace wct {

// The process-wide API table. The first successful call picks a directory for the life of the
// process (bmlib keeps global device state; two copies in one process would fight over it);
// later calls return the same table whatever they ask for. Throws LibraryError naming every
// directory tried and why each failed.
const Api& load_api(const std::vector<std::string>& dirs);

// The directory the libraries came from, or "" before load_api succeeded.
std::string loaded_from();

// bm_dev_request on device `id`, after checking that the id exists: bmlib asserts (and exits the
// process) on an id past its device count instead of returning an error. Throws DeviceError.
bm_handle_t open_device(const Api& api, int id);

// Called at exit before bmlib's own static destructors (which crash when a device is still
// held): the engine registers its cleanup here.
void at_exit_before_bmlib(void (*fn)());

}  // namespace wct
