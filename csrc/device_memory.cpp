#include "device_memory.h"

#include <string>

#include "errors.h"

namespace wct {

Buf DeviceMemory::alloc(int dev, size_t bytes, const char* what) {
  Buf buf;
  buf.dev = dev;
  buf.bytes = bytes;
  if (bytes > 0xffffffffu)
    throw DeviceError(std::string(what) + ": " + std::to_string(bytes) + " bytes exceed one bmlib allocation");
  bm_status_t status = api_.bm_malloc_device_byte(handles_[dev], &buf.mem, static_cast<unsigned int>(bytes));
  if (status != BM_SUCCESS)
    throw DeviceError("out of device memory: " + std::to_string(bytes) + " bytes for " + what + " on device " +
                      std::to_string(dev) + " (bm_malloc_device_byte returned " + std::to_string(status) + ")");
  owned_.push_back(buf);
  return buf;
}

int64_t DeviceMemory::free_bytes(int dev) const {
  if (!api_.bm_get_gmem_total_heap_num || !api_.bm_get_gmem_heap_stat_byte_by_id) return -1;
  unsigned int heaps = 0;
  if (api_.bm_get_gmem_total_heap_num(handles_[dev], &heaps) != BM_SUCCESS || heaps == 0) return -1;
  int64_t avail = 0;
  for (unsigned int id = 0; id < heaps; ++id) {
    bm_heap_stat_byte_t stat{};
    if (api_.bm_get_gmem_heap_stat_byte_by_id(handles_[dev], &stat, id) != BM_SUCCESS) return -1;
    avail += static_cast<int64_t>(stat.mem_avail);
  }
  return avail;
}

void DeviceMemory::free_since(size_t mark) {
  while (owned_.size() > mark) {
    api_.bm_free_device(handles_[owned_.back().dev], owned_.back().mem);
    owned_.pop_back();
  }
}

void DeviceMemory::free_all() {
  for (Buf& buf : owned_) api_.bm_free_device(handles_[buf.dev], buf.mem);
  owned_.clear();
}

void DeviceMemory::write(const Buf& dst, const void* src, size_t bytes) {
  bm_status_t status = api_.bm_memcpy_s2d_partial_offset(handles_[dst.dev], dst.mem, const_cast<void*>(src),
                                                         static_cast<unsigned int>(bytes), 0);
  if (status != BM_SUCCESS) throw DeviceError("host-to-device copy failed (" + std::to_string(status) + ")");
  traffic_.to_device += static_cast<int64_t>(bytes);
}

void DeviceMemory::read(void* dst, const Buf& src, size_t bytes) {
  bm_status_t status =
      api_.bm_memcpy_d2s_partial_offset(handles_[src.dev], dst, src.mem, static_cast<unsigned int>(bytes), 0);
  if (status != BM_SUCCESS) throw DeviceError("device-to-host copy failed (" + std::to_string(status) + ")");
  traffic_.from_device += static_cast<int64_t>(bytes);
}

void DeviceMemory::copy(const Buf& dst, size_t dst_offset, const Buf& src, size_t src_offset, size_t bytes) {
  bm_status_t status = api_.bm_memcpy_d2d_byte(handles_[dst.dev], dst.mem, dst_offset, src.mem, src_offset, bytes);
  if (status != BM_SUCCESS) throw DeviceError("device-to-device copy failed (" + std::to_string(status) + ")");
  traffic_.on_device += static_cast<int64_t>(bytes);
}

}  // namespace wct
