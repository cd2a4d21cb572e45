// dlopen of libbmlib + libbmrt from the first directory that has both, and dlsym of the table.
#include "runtime.h"

#include <dlfcn.h>
#include <sys/stat.h>

#include <cstdlib>
#include <mutex>

#include "errors.h"

namespace wct {
namespace {

std::mutex g_mutex;
Api g_api{};
bool g_loaded = false;
std::string g_dir;
std::vector<void (*)()> g_exit_hooks;

bool is_file(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string first_file(const std::string& dir, std::initializer_list<const char*> names) {
  for (const char* name : names) {
    std::string path = dir + "/" + name;
    if (is_file(path)) return path;
  }
  return "";
}

template <typename F>
bool resolve(void* lib, const char* name, F& slot, std::string& missing) {
  slot = reinterpret_cast<F>(::dlsym(lib, name));
  if (!slot) missing += std::string(missing.empty() ? "" : ", ") + name;
  return slot != nullptr;
}

// Fills `api` from the two libraries; returns the names of missing symbols ("" = complete).
std::string resolve_all(void* bmlib, void* bmrt, Api& api) {
  std::string missing;
  resolve(bmlib, "bm_dev_getcount", api.bm_dev_getcount, missing);
  resolve(bmlib, "bm_dev_request", api.bm_dev_request, missing);
  resolve(bmlib, "bm_dev_free", api.bm_dev_free, missing);
  resolve(bmlib, "bm_malloc_device_byte", api.bm_malloc_device_byte, missing);
  resolve(bmlib, "bm_free_device", api.bm_free_device, missing);
  resolve(bmlib, "bm_memcpy_s2d_partial_offset", api.bm_memcpy_s2d_partial_offset, missing);
  resolve(bmlib, "bm_memcpy_d2s_partial_offset", api.bm_memcpy_d2s_partial_offset, missing);
  resolve(bmlib, "bm_memcpy_d2d_byte", api.bm_memcpy_d2d_byte, missing);
  resolve(bmlib, "bm_thread_sync", api.bm_thread_sync, missing);
  std::string optional;  // absent in some builds: the engine copes without them
  resolve(bmlib, "bm_get_gmem_total_heap_num", api.bm_get_gmem_total_heap_num, optional);
  resolve(bmlib, "bm_get_gmem_heap_stat_byte_by_id", api.bm_get_gmem_heap_stat_byte_by_id, optional);
  resolve(bmrt, "bmrt_create", api.bmrt_create, missing);
  resolve(bmrt, "bmrt_create_ex", api.bmrt_create_ex, missing);
  resolve(bmrt, "bmrt_destroy", api.bmrt_destroy, missing);
  resolve(bmrt, "bmrt_load_bmodel", api.bmrt_load_bmodel, missing);
  resolve(bmrt, "bmrt_get_network_number", api.bmrt_get_network_number, missing);
  resolve(bmrt, "bmrt_get_network_names", api.bmrt_get_network_names, missing);
  resolve(bmrt, "bmrt_get_network_info", api.bmrt_get_network_info, missing);
  resolve(bmrt, "bmrt_launch_tensor_ex", api.bmrt_launch_tensor_ex, missing);
  return missing;
}

// One directory: "" on success (g_api filled), else why not.
std::string try_dir(const std::string& dir) {
  std::string bmlib_path = first_file(dir, {"libbmlib.so", "libbmlib.so.0"});
  std::string bmrt_path = first_file(dir, {"libbmrt.so", "libbmrt.so.1.0"});
  if (bmlib_path.empty() || bmrt_path.empty()) return "no libbmlib.so/libbmrt.so there";
  // tpu-mlir's cmodel bmlib simulates the chip with libcmodel_*.so, which it finds through
  // TPUKERNEL_FIRMWARE_PATH. A real libsophon directory has no such file, so this never
  // redirects a PCIe/SoC install.
  std::string cmodel = first_file(dir, {"libcmodel_bm1684x.so"});
  if (!cmodel.empty()) ::setenv("TPUKERNEL_FIRMWARE_PATH", cmodel.c_str(), /*overwrite=*/0);
  // bmlib first and global: libbmrt's DT_NEEDED libbmlib.so.0 then resolves to this copy.
  void* bmlib = ::dlopen(bmlib_path.c_str(), RTLD_NOW | RTLD_GLOBAL);
  if (!bmlib) return std::string("dlopen failed: ") + ::dlerror();
  void* bmrt = ::dlopen(bmrt_path.c_str(), RTLD_NOW | RTLD_GLOBAL);
  if (!bmrt) return std::string("dlopen failed: ") + ::dlerror();  // bmlib stays: dlclose is unsafe
  Api api{};
  std::string missing = resolve_all(bmlib, bmrt, api);
  if (!missing.empty()) return "missing symbols: " + missing;
  g_api = api;
  return "";
}

void run_exit_hooks() {
  std::vector<void (*)()> hooks;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    hooks.swap(g_exit_hooks);
  }
  for (auto it = hooks.rbegin(); it != hooks.rend(); ++it) (*it)();
}

}  // namespace

const Api& load_api(const std::vector<std::string>& dirs) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (g_loaded) return g_api;
  std::string tried;
  for (const std::string& dir : dirs) {
    if (dir.empty()) continue;
    std::string why = try_dir(dir);
    if (why.empty()) {
      g_loaded = true;
      g_dir = dir;
      // Registered after bmlib's static constructors ran, so it runs before their destructors.
      std::atexit(run_exit_hooks);
      return g_api;
    }
    tried += "\n  " + dir + ": " + why;
  }
  throw LibraryError("cannot load the Sophgo runtime (libbmlib.so + libbmrt.so); tried:" +
                     (tried.empty() ? std::string("\n  (no directories given)") : tried) +
                     "\nInstall libsophon (PCIe/SoC), set LIBSOPHON_DIR, or install tpu-mlir for the cmodel simulator.");
}

std::string loaded_from() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_dir;
}

bm_handle_t open_device(const Api& api, int id) {
  int visible = 0;
  const bm_status_t counted = api.bm_dev_getcount(&visible);
  if (counted != BM_SUCCESS || id < 0 || id >= visible)
    throw DeviceError("cannot open TPU device " + std::to_string(id) + ": " + std::to_string(visible) +
                      " device(s) visible (bm_dev_getcount returned " + std::to_string(counted) + ", runtime from " +
                      loaded_from() + ")");
  bm_handle_t handle = nullptr;
  const bm_status_t status = api.bm_dev_request(&handle, id);
  if (status != BM_SUCCESS || handle == nullptr)
    throw DeviceError("cannot open TPU device " + std::to_string(id) + " (bm_dev_request returned " +
                      std::to_string(status) + ", runtime from " + loaded_from() + ")");
  return handle;
}

void at_exit_before_bmlib(void (*fn)()) {
  std::lock_guard<std::mutex> lock(g_mutex);
  for (auto hook : g_exit_hooks)
    if (hook == fn) return;
  g_exit_hooks.push_back(fn);
}

}  // namespace wct
