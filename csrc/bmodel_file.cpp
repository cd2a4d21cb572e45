#include "bmodel_file.h"

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <vector>

#include "errors.h"

namespace wct {
namespace {

constexpr uint32_t kMagic = 0xFF55AAEE;  // tpu-bmodel/src/bmodel.cpp: BMODEL_MAGIC
constexpr size_t kHeaderBytes = 64;      // magic, header_size, flatbuffers_size, binary_size, reserved[12]

// Bounds-checked little-endian reads over the flatbuffer; any miss sets `ok` false.
struct Reader {
  const std::vector<uint8_t>& buf;
  bool ok = true;

  template <typename T>
  T get(uint64_t at) {
    if (at + sizeof(T) > buf.size()) {
      ok = false;
      return T{};
    }
    T v;
    std::memcpy(&v, buf.data() + at, sizeof(T));
    return v;
  }

  // Position of field `id` of the table at `table`, or 0 when absent.
  uint64_t field(uint64_t table, int id) {
    const int64_t vtable = static_cast<int64_t>(table) - get<int32_t>(table);
    if (!ok || vtable < 0) return ok = false, 0;
    const uint16_t vt_bytes = get<uint16_t>(vtable);
    const uint16_t table_bytes = get<uint16_t>(vtable + 2);
    if (!ok || vt_bytes < 4 || vt_bytes % 2 || vtable + vt_bytes > static_cast<int64_t>(buf.size()) ||
        table + table_bytes > buf.size())
      return ok = false, 0;
    const uint64_t slot = 4 + 2 * static_cast<uint64_t>(id);
    if (slot + 2 > vt_bytes) return 0;
    const uint16_t offset = get<uint16_t>(vtable + slot);
    if (offset == 0) return 0;
    if (offset + 4u > table_bytes) return ok = false, 0;
    return table + offset;
  }

  // A required string field: present, in bounds and NUL-terminated.
  std::string string(uint64_t table, int id) {
    const uint64_t at = field(table, id);
    if (!ok || at == 0) return ok = false, "";
    const uint64_t str = at + get<uint32_t>(at);
    const uint32_t len = get<uint32_t>(str);
    if (!ok || str + 4 + len + 1 > buf.size() || buf[str + 4 + len] != 0) return ok = false, "";
    return std::string(reinterpret_cast<const char*>(buf.data() + str + 4), len);
  }

  uint32_t u32(uint64_t table, int id, uint32_t fallback) {
    const uint64_t at = field(table, id);
    return ok && at ? get<uint32_t>(at) : fallback;
  }

  // A vector field: (position of its first element, length); (0, 0) when absent.
  std::pair<uint64_t, uint32_t> vector(uint64_t table, int id, uint64_t elem_bytes) {
    const uint64_t at = field(table, id);
    if (!ok || at == 0) return {0, 0};
    const uint64_t vec = at + get<uint32_t>(at);
    const uint32_t n = get<uint32_t>(vec);
    if (!ok || vec + 4 + elem_bytes * n > buf.size()) return ok = false, std::pair<uint64_t, uint32_t>{0, 0};
    return {vec + 4, n};
  }

  // The table that element `i` of a vector of tables at `first` points to.
  uint64_t table_at(uint64_t first, uint32_t i) {
    const uint64_t slot = first + 4ull * i;
    return slot + get<uint32_t>(slot);
  }
};

// The header checked and the model description (the flatbuffer) read.
std::vector<uint8_t> read_description(const std::string& path) {
  std::ifstream file(path, std::ios::binary | std::ios::ate);
  if (!file) throw ModelError(path + ": cannot open the bmodel (" + std::strerror(errno) + ")");
  const auto size = static_cast<uint64_t>(file.tellg());
  uint32_t header[4] = {0, 0, 0, 0};
  file.seekg(0);
  if (size < kHeaderBytes || !file.read(reinterpret_cast<char*>(header), sizeof(header)))
    throw ModelError(path + ": not a bmodel (" + std::to_string(size) + " bytes, shorter than a bmodel header)");
  if (header[0] != kMagic) throw ModelError(path + ": not a bmodel (wrong magic number)");
  const uint64_t need = static_cast<uint64_t>(header[1]) + header[2] + header[3];
  if (header[1] < kHeaderBytes || size < need)
    throw ModelError(path + ": truncated bmodel (" + std::to_string(size) + " bytes, its header says " +
                     std::to_string(need) + "); copy or compile it again");
  if (header[2] < 8 || header[2] > (256u << 20))
    throw ModelError(path + ": corrupt bmodel (model description of " + std::to_string(header[2]) + " bytes)");
  std::vector<uint8_t> fb(header[2]);
  file.seekg(header[1]);
  if (!file.read(reinterpret_cast<char*>(fb.data()), static_cast<std::streamsize>(fb.size())))
    throw ModelError(path + ": cannot read the bmodel's model description");
  return fb;
}

[[noreturn]] void damaged(const std::string& path) {
  throw ModelError(path + ": corrupt bmodel (its model description is damaged); copy or compile it again");
}

BmodelInfo parse_info(Reader& r, const std::string& path) {
  const uint64_t root = r.get<uint32_t>(0);
  BmodelInfo info;
  r.string(root, 0);  // type
  info.version = r.string(root, 1);
  r.string(root, 2);  // time
  info.chip = r.string(root, 3);
  const auto [nets, count] = r.vector(root, 4, 4);
  info.net_count = static_cast<int>(count);
  const uint64_t devices = r.field(root, 7);
  if (r.ok && devices) info.device_num = static_cast<int>(r.get<uint32_t>(devices));
  if (!r.ok || nets == 0 || info.net_count < 1 || info.device_num < 0 || info.device_num > 64) damaged(path);
  if (info.device_num == 0) info.device_num = 1;  // absent in single-device bmodels of older compilers
  return info;
}

std::vector<TensorDesc> parse_tensors(Reader& r, uint64_t parameter, int id) {
  std::vector<TensorDesc> out;
  const auto [first, n] = r.vector(parameter, id, 4);
  for (uint32_t i = 0; r.ok && i < n; ++i) {
    const uint64_t t = r.table_at(first, i);
    TensorDesc desc;
    desc.name = r.string(t, 0);
    desc.dtype = static_cast<bm_data_type_t>(r.u32(t, 1, BM_FLOAT32));
    const auto [shapes, shape_count] = r.vector(t, 5, 4);
    if (shape_count > 0) {
      const auto [dims, dim_count] = r.vector(r.table_at(shapes, 0), 0, 8);
      if (dim_count > BM_MAX_DIMS_NUM) r.ok = false;
      desc.shape.num_dims = static_cast<int>(dim_count);
      for (uint32_t d = 0; r.ok && d < dim_count; ++d) {
        const uint64_t dim = r.get<uint64_t>(dims + 8ull * d);
        if (dim > 0x7fffffffu) r.ok = false;
        desc.shape.dims[d] = static_cast<int>(dim);
      }
    }
    out.push_back(desc);
  }
  return out;
}

}  // namespace

BmodelInfo read_bmodel_info(const std::string& path) {
  const std::vector<uint8_t> fb = read_description(path);
  Reader r{fb};
  return parse_info(r, path);
}

std::vector<NetDesc> read_bmodel_nets(const std::string& path) {
  const std::vector<uint8_t> fb = read_description(path);
  Reader r{fb};
  parse_info(r, path);
  const auto [nets, count] = r.vector(r.get<uint32_t>(0), 4, 4);
  std::vector<NetDesc> out;
  for (uint32_t i = 0; r.ok && i < count; ++i) {
    const uint64_t net = r.table_at(nets, i);
    NetDesc desc;
    desc.name = r.string(net, 0);
    const auto [parameters, stages] = r.vector(net, 3, 4);
    if (!r.ok) break;
    if (stages == 0)
      throw ModelError(path + ": net '" + desc.name + "' has no stage (a bmodel format older than this engine reads)");
    const uint64_t stage0 = r.table_at(parameters, 0);
    desc.inputs = parse_tensors(r, stage0, 0);
    desc.outputs = parse_tensors(r, stage0, 1);
    out.push_back(std::move(desc));
  }
  if (!r.ok) damaged(path);
  return out;
}

Contract check_bmodel_file(const std::string& path) {
  const BmodelInfo info = read_bmodel_info(path);
  if (info.device_num != 1)
    throw ModelError(path + ": compiled for " + std::to_string(info.device_num) +
                     " devices; its nets are checked when the engine loads it");
  try {
    return check_contract(read_bmodel_nets(path), 1);
  } catch (const ModelError& e) {
    throw ModelError(path + ": " + e.what());
  }
}

}  // namespace wct
