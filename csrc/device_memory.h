// The engine's own device buffers and the copies between them and the host.
//
// Buffers of our own, not the nets' input/output memories: the runtime may place those in the
// neuron area that every net shares, and a KV cache there would be overwritten by the next launch.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "bmrt_api.h"

namespace wct {

// Bytes moved by the copies below since the engine opened: what crosses the host-device link per
// token (bench/tpu_cmodel.py counts it) and what stays on the device.
struct Traffic {
  int64_t to_device = 0;    // host -> device (inputs, masks)
  int64_t from_device = 0;  // device -> host (token ids, logits)
  int64_t on_device = 0;    // device -> device (KV rows into the cache, the head's input row)
};

struct Buf {
  int dev = 0;  // index into the engine's device handles
  bm_device_mem_t mem{};
  size_t bytes = 0;
};

class DeviceMemory {
 public:
  // `handles` is the engine's, opened before the first alloc and kept until free_all().
  DeviceMemory(const Api& api, const std::vector<bm_handle_t>& handles) : api_(api), handles_(handles) {}
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;

  // Throws DeviceError naming `what` when the device is out of memory.
  Buf alloc(int dev, size_t bytes, const char* what);
  void free_all();  // every buffer alloc() returned; before the handles are freed
  size_t mark() const { return owned_.size(); }
  void free_since(size_t mark);  // the buffers alloc() returned after mark() said `mark`
  // Bytes free on device `dev`, summed over its global-memory heaps (bm_malloc_device_byte takes
  // from any of them); -1 where this libbmlib cannot say.
  int64_t free_bytes(int dev) const;

  // Each throws DeviceError when bmlib refuses.
  void write(const Buf& dst, const void* src, size_t bytes);
  void read(void* dst, const Buf& src, size_t bytes);
  void copy(const Buf& dst, size_t dst_offset, const Buf& src, size_t src_offset, size_t bytes);

  const Traffic& traffic() const { return traffic_; }

 private:
  const Api& api_;
  const std::vector<bm_handle_t>& handles_;
  std::vector<Buf> owned_;
  Traffic traffic_;
};

}  // namespace wct
