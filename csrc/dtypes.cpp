#include "dtypes.h"

#include <cmath>
#include <cstring>

namespace wct {

size_t dtype_size(bm_data_type_t t) {
  switch (t) {
    case BM_FLOAT32: case BM_INT32: case BM_UINT32: return 4;
    case BM_FLOAT16: case BM_BFLOAT16: case BM_INT16: case BM_UINT16: return 2;
    default: return 1;
  }
}

const char* dtype_name(bm_data_type_t t) {
  switch (t) {
    case BM_FLOAT32: return "f32";
    case BM_FLOAT16: return "f16";
    case BM_BFLOAT16: return "bf16";
    case BM_INT32: return "i32";
    case BM_UINT32: return "u32";
    case BM_INT8: return "i8";
    case BM_UINT8: return "u8";
    case BM_INT16: return "i16";
    case BM_UINT16: return "u16";
    case BM_INT4: return "i4";
    case BM_UINT4: return "u4";
  }
  return "an unknown type";
}

size_t element_count(const bm_shape_t& s) {
  size_t n = 1;
  for (int i = 0; i < s.num_dims; ++i) n *= static_cast<size_t>(s.dims[i]);
  return n;
}

std::string shape_str(const bm_shape_t& s) {
  std::string out = "[";
  for (int i = 0; i < s.num_dims; ++i) out += (i ? "," : "") + std::to_string(s.dims[i]);
  return out + "]";
}

uint16_t f32_to_f16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000u;
  int32_t exp = static_cast<int32_t>((x >> 23) & 0xffu) - 127 + 15;
  uint32_t mant = x & 0x7fffffu;
  if (exp <= 0) return static_cast<uint16_t>(sign);  // zero and (flushed) subnormals
  if (exp >= 31) return static_cast<uint16_t>(sign | 0x7c00u);
  uint32_t h = sign | (static_cast<uint32_t>(exp) << 10) | (mant >> 13);
  uint32_t rest = mant & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
  return static_cast<uint16_t>(h);
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu, x;
  if (exp == 0) {
    float f = std::ldexp(static_cast<float>(mant), -24);
    return sign ? -f : f;
  }
  if (exp == 31) x = sign | 0x7f800000u | (mant << 13);
  else x = sign | ((exp - 15 + 127) << 23) | (mant << 13);
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

uint16_t f32_to_bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

float bf16_to_f32(uint16_t b) {
  uint32_t x = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

}  // namespace wct
