// bmrt's element types: their sizes and names, shapes as text, and the float16/bfloat16
// conversions the engine needs for masks and logits (no libraries: the host does them).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "bmrt_api.h"

namespace wct {

size_t dtype_size(bm_data_type_t t);     // bytes per element (INT4/UINT4 count as 1: never bound here)
const char* dtype_name(bm_data_type_t t);  // "f32", "f16", "i32", … for error messages
size_t element_count(const bm_shape_t& s);
std::string shape_str(const bm_shape_t& s);  // "[1,64,128]"

uint16_t f32_to_f16(float f);  // round to nearest even; subnormals flush to zero (0 and the mask value are exact)
float f16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);  // round to nearest even
float bf16_to_f32(uint16_t b);

}  // namespace wct
