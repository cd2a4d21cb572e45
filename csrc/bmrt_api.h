// The slice of Sophgo's bmlib + bmrt C API that the engine uses, declared by this project.
//
// libsophon's headers ship in no package registry, so the wheel cannot build against them. These
// declarations follow the public headers `bmlib/include/bmlib_runtime.h`,
// `tpu-runtime/include/bmdef.h` and `tpu-runtime/include/bmruntime_interface.h` of
// github.com/sophgo/libsophon (checked against the bmlib header inside tpu-mlir 1.30.2). Only the
// layouts the engine reads are spelled out; everything else stays opaque. The functions are never
// linked: runtime.cpp resolves them with dlsym into the `Api` table below.
#pragma once

#include <cstddef>
#include <cstdint>

extern "C" {

// ---- bmlib ---------------------------------------------------------------------------------
typedef enum {
  BM_SUCCESS = 0,
  BM_ERR_DEVNOTREADY = 1,
  BM_ERR_FAILURE = 2,
  BM_ERR_TIMEOUT = 3,
  BM_ERR_PARAM = 4,
  BM_ERR_NOMEM = 5,
  BM_ERR_DATA = 6,
  BM_ERR_BUSY = 7,
  BM_ERR_NOFEATURE = 8,
  BM_NOT_SUPPORTED = 9,
} bm_status_t;

struct bm_context;
typedef struct bm_context* bm_handle_t;

typedef union {
  struct {
    unsigned int mem_type : 3;
    unsigned int gmem_heapid : 3;
    unsigned int reserved : 26;
  } u;
  unsigned int rawflags;
} bm_mem_flags_t;

// A device memory descriptor, passed by value across the API (24 bytes on LP64 Linux).
typedef struct bm_mem_desc {
  union {
    struct {
      unsigned long device_addr;
      unsigned int reserved;
      int dmabuf_fd;
    } device;
    struct {
      void* system_addr;
      unsigned int reserved0;
      int reserved1;
    } system;
  } u;
  bm_mem_flags_t flags;
  unsigned int size;
} bm_device_mem_t;

// One global-memory heap's use in bytes (bm_get_gmem_heap_stat_byte_by_id).
typedef struct bm_heap_stat_byte {
  unsigned int heap_id;
  unsigned long long mem_total;
  unsigned long long mem_avail;
  unsigned long long mem_used;
  unsigned long long mem_start_addr;
} bm_heap_stat_byte_t;

// ---- bmrt (bmdef.h) ------------------------------------------------------------------------
typedef enum {
  BM_FLOAT32 = 0,
  BM_FLOAT16 = 1,
  BM_INT8 = 2,
  BM_UINT8 = 3,
  BM_INT16 = 4,
  BM_UINT16 = 5,
  BM_INT32 = 6,
  BM_UINT32 = 7,
  BM_BFLOAT16 = 8,
  BM_INT4 = 9,
  BM_UINT4 = 10,
} bm_data_type_t;

typedef enum { BM_STORE_1N = 0, BM_STORE_2N = 1, BM_STORE_4N = 2 } bm_store_mode_t;

#define BM_MAX_DIMS_NUM 8
typedef struct {
  int num_dims;
  int dims[BM_MAX_DIMS_NUM];
} bm_shape_t;

typedef struct {
  bm_data_type_t dtype;
  bm_shape_t shape;
  bm_device_mem_t device_mem;
  bm_store_mode_t st_mode;
} bm_tensor_t;

typedef struct {
  bm_shape_t* input_shapes;
  bm_shape_t* output_shapes;
  bm_device_mem_t* input_mems;
  bm_device_mem_t* output_mems;
} bm_stage_info_t;

// Read-only, owned by the runtime. The fields after `max_output_bytes` changed between libsophon
// releases; the engine reads them only for multi-device nets (input_loc_devices).
typedef struct {
  const char* name;
  bool is_dynamic;
  int input_num;
  char const** input_names;
  bm_data_type_t* input_dtypes;
  float* input_scales;
  int output_num;
  char const** output_names;
  bm_data_type_t* output_dtypes;
  float* output_scales;
  int stage_num;
  bm_stage_info_t* stages;
  size_t* max_input_bytes;
  size_t* max_output_bytes;
  int* input_zero_point;
  int* output_zero_point;
  int* input_loc_devices;
  int* output_loc_devices;
} bm_net_info_t;

}  // extern "C"

namespace wct {

// Every entry point the engine calls, resolved once from the loaded libraries.
struct Api {
  // bmlib
  bm_status_t (*bm_dev_getcount)(int* count);
  bm_status_t (*bm_dev_request)(bm_handle_t* handle, int devid);
  void (*bm_dev_free)(bm_handle_t handle);
  bm_status_t (*bm_malloc_device_byte)(bm_handle_t handle, bm_device_mem_t* pmem, unsigned int size);
  void (*bm_free_device)(bm_handle_t handle, bm_device_mem_t mem);
  bm_status_t (*bm_memcpy_s2d_partial_offset)(bm_handle_t handle, bm_device_mem_t dst, void* src,
                                              unsigned int size, unsigned int offset);
  bm_status_t (*bm_memcpy_d2s_partial_offset)(bm_handle_t handle, void* dst, bm_device_mem_t src,
                                              unsigned int size, unsigned int offset);
  bm_status_t (*bm_memcpy_d2d_byte)(bm_handle_t handle, bm_device_mem_t dst, size_t dst_offset,
                                    bm_device_mem_t src, size_t src_offset, size_t size);
  bm_status_t (*bm_thread_sync)(bm_handle_t handle);
  // Optional (null where a libbmlib lacks them): how much device memory is free, which sizes the
  // KV-cache slots (engine.h). Without them the engine keeps the slots it was asked for.
  bm_status_t (*bm_get_gmem_total_heap_num)(bm_handle_t handle, unsigned int* heap_num);
  bm_status_t (*bm_get_gmem_heap_stat_byte_by_id)(bm_handle_t handle, bm_heap_stat_byte_t* stat, unsigned int heap_id);
  // bmrt
  void* (*bmrt_create)(bm_handle_t handle);
  void* (*bmrt_create_ex)(bm_handle_t* handles, int num_handles);
  void (*bmrt_destroy)(void* p_bmrt);
  bool (*bmrt_load_bmodel)(void* p_bmrt, const char* bmodel_path);
  int (*bmrt_get_network_number)(void* p_bmrt);
  void (*bmrt_get_network_names)(void* p_bmrt, const char*** network_names);  // caller free()s
  const bm_net_info_t* (*bmrt_get_network_info)(void* p_bmrt, const char* net_name);
  bool (*bmrt_launch_tensor_ex)(void* p_bmrt, const char* net_name, const bm_tensor_t inputs[], int input_num,
                                bm_tensor_t outputs[], int output_num, bool user_mem, bool user_stmode);
};

}  // namespace wct
