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
};

}  // namespace

BmodelInfo read_bmodel_info(const std::string& path) {
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
  Reader r{fb};
  const uint64_t root = r.get<uint32_t>(0);
  BmodelInfo info;
  r.string(root, 0);  // type
  info.version = r.string(root, 1);
  r.string(root, 2);  // time
  info.chip = r.string(root, 3);
  const uint64_t nets = r.field(root, 4);
  if (r.ok && nets) {
    const uint64_t vec = nets + r.get<uint32_t>(nets);
    info.net_count = static_cast<int>(r.get<uint32_t>(vec));
    if (vec + 4 + 4ull * static_cast<uint64_t>(info.net_count) > fb.size()) r.ok = false;
  }
  const uint64_t devices = r.field(root, 7);
  if (r.ok && devices) info.device_num = static_cast<int>(r.get<uint32_t>(devices));
  if (!r.ok || nets == 0 || info.net_count < 1 || info.device_num < 0 || info.device_num > 64)
    throw ModelError(path + ": corrupt bmodel (its model description is damaged); copy or compile it again");
  if (info.device_num == 0) info.device_num = 1;  // absent in single-device bmodels of older compilers
  return info;
}

}  // namespace wct
