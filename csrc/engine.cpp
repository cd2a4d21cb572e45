// The bmrt engine (see engine.h for the data path).
#include "engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <unordered_set>

#include "bmodel_file.h"
#include "errors.h"
#include "runtime.h"

namespace wct {
namespace {

constexpr float kMaskHidden = -10000.0f;  // docs/tpu-pieces.md: additive, finite in float16

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
    default: return "int4";
  }
}

size_t count(const bm_shape_t& s) {
  size_t n = 1;
  for (int i = 0; i < s.num_dims; ++i) n *= static_cast<size_t>(s.dims[i]);
  return n;
}

std::string shape_str(const bm_shape_t& s) {
  std::string out = "[";
  for (int i = 0; i < s.num_dims; ++i) out += (i ? "," : "") + std::to_string(s.dims[i]);
  return out + "]";
}

uint16_t f32_to_f16(float f) {  // round to nearest even; enough for 0 and the mask value
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

std::mutex g_live_mutex;
std::vector<Engine*> g_live;  // engines still holding a device, closed at exit

void close_live_engines() {
  std::vector<Engine*> live;
  {
    std::lock_guard<std::mutex> lock(g_live_mutex);
    live = g_live;
  }
  for (Engine* engine : live) {
    try {
      engine->close_at_exit();
    } catch (...) {  // exiting: nothing left to report to
    }
  }
}

}  // namespace

const char* stop_reason_name(StopReason reason) {
  switch (reason) {
    case StopReason::MaxSteps: return "max_steps";
    case StopReason::StopToken: return "stop_token";
    case StopReason::Callback: return "callback";
    case StopReason::Cancelled: return "cancelled";
    case StopReason::Context: return "context";
  }
  return "?";
}

// ---- lifetime -------------------------------------------------------------------------------

Engine::Engine(const Api& api, const std::string& bmodel_path, const std::vector<int>& devices) : api_(api) {
  try {
    open(bmodel_path, devices);
  } catch (...) {
    release();
    throw;
  }
  std::lock_guard<std::mutex> lock(g_live_mutex);
  g_live.push_back(this);
  at_exit_before_bmlib(close_live_engines);
}

Engine::~Engine() {
  try {
    close();
  } catch (...) {
  }
}

void Engine::close() {
  cancel_.store(true);
  std::lock_guard<std::timed_mutex> lock(mutex_);
  release();
}

void Engine::close_at_exit() {
  cancel_.store(true);
  std::unique_lock<std::timed_mutex> lock(mutex_, std::chrono::seconds(2));
  if (lock.owns_lock()) release();
}

void Engine::release() {
  for (Buf& buf : owned_) api_.bm_free_device(handles_[buf.dev], buf.mem);
  owned_.clear();
  dev_.clear();
  if (bmrt_) api_.bmrt_destroy(bmrt_);
  bmrt_ = nullptr;
  for (bm_handle_t handle : handles_) api_.bm_dev_free(handle);
  handles_.clear();
  closed_ = true;
  length_ = 0;
  std::lock_guard<std::mutex> lock(g_live_mutex);
  g_live.erase(std::remove(g_live.begin(), g_live.end(), this), g_live.end());
}

void Engine::open(const std::string& bmodel_path, const std::vector<int>& devices_in) {
  info_ = read_bmodel_info(bmodel_path);
  std::vector<int> devices = devices_in;
  for (int d = 0; devices_in.empty() && d < info_.device_num; ++d) devices.push_back(d);  // as compiled
  if (static_cast<int>(devices.size()) != info_.device_num)
    throw ModelError(bmodel_path + ": compiled for " + std::to_string(info_.device_num) + " device(s), " +
                     std::to_string(devices.size()) + " given");
  for (int id : devices) handles_.push_back(open_device(api_, id));
  closed_ = false;
  bmrt_ = handles_.size() == 1 ? api_.bmrt_create(handles_[0])
                               : api_.bmrt_create_ex(handles_.data(), static_cast<int>(handles_.size()));
  if (!bmrt_) throw DeviceError("bmrt_create failed on " + std::to_string(handles_.size()) + " device(s)");
  if (!api_.bmrt_load_bmodel(bmrt_, bmodel_path.c_str()))
    throw ModelError(bmodel_path + ": bmrt could not load it (corrupt, compiled for another chip or device "
                     "count, or larger than the device memory; the runtime's log above says which)");
  const char** names = nullptr;
  api_.bmrt_get_network_names(bmrt_, &names);
  const int n = api_.bmrt_get_network_number(bmrt_);
  for (int i = 0; names && i < n; ++i) net_names_.emplace_back(names[i]);
  std::free(names);
  check_layout();
  allocate();
}

// ---- the contract ---------------------------------------------------------------------------

Engine::Net Engine::find_net(const std::string& name, const std::vector<std::string>& inputs,
                             const std::string& optional, const std::vector<std::string>& outputs, bool required) {
  Net net;
  net.name = name;
  if (std::find(net_names_.begin(), net_names_.end(), name) == net_names_.end()) {
    if (!required) return net;
    std::string have;
    for (const auto& s : net_names_) have += (have.empty() ? "" : ", ") + s;
    throw ModelError("the bmodel has no net '" + name + "' (it has: " + have + "); see docs/tpu-pieces.md");
  }
  net.info = api_.bmrt_get_network_info(bmrt_, name.c_str());
  if (!net.info || net.info->stage_num < 1) throw ModelError("net '" + name + "': no network info");
  net.out_per = static_cast<int>(outputs.size());
  const int in_num = net.info->input_num, out_num = net.info->output_num;
  net.groups = out_num / net.out_per;
  net.in_per = net.groups > 0 ? in_num / net.groups : 0;
  // The inputs this net takes: all of them, or all but the optional one.
  std::vector<std::string> present;
  for (const auto& in : inputs)
    if (net.in_per == static_cast<int>(inputs.size()) || in != optional) present.push_back(in);
  if (net.groups < 1 || out_num % net.out_per || in_num % net.groups || net.in_per != static_cast<int>(present.size()))
    throw ModelError("net '" + name + "' has " + std::to_string(in_num) + " inputs and " + std::to_string(out_num) +
                     " outputs; the contract says " + std::to_string(inputs.size()) + " and " +
                     std::to_string(outputs.size()) + " per device (docs/tpu-pieces.md)");
  // Bind by name when the compiler kept the contract's names, else by position.
  auto slots = [](const std::vector<std::string>& all, const std::vector<std::string>& have_names,
                  char const** names, int per) {
    std::vector<int> slot(all.size(), -1);
    int found = 0;
    for (size_t s = 0; s < all.size(); ++s)
      for (int i = 0; i < per; ++i)
        if (names && names[i] && all[s] == names[i]) slot[s] = i, ++found;
    if (found != per) {
      std::fill(slot.begin(), slot.end(), -1);
      for (size_t s = 0, i = 0; s < all.size(); ++s)
        if (std::find(have_names.begin(), have_names.end(), all[s]) != have_names.end()) slot[s] = static_cast<int>(i++);
    }
    return slot;
  };
  net.in_slot = slots(inputs, present, net.info->input_names, net.in_per);
  net.out_slot = slots(outputs, outputs, net.info->output_names, net.out_per);
  return net;
}

void Engine::check_layout() {
  const int D = static_cast<int>(handles_.size());
  const std::vector<std::string> ids_pos = {"input_ids", "position_ids"};
  // position_ids is optional: a Llama embed does not use it (RoPE is in the blocks) and tpu-mlir
  // drops an unused input.
  embed_ = find_net("embed", ids_pos, "position_ids", {"hidden"}, true);
  embed_cache_ = find_net("embed_cache", ids_pos, "position_ids", {"hidden"}, true);
  lm_head_ = find_net("lm_head", {"hidden"}, "", {"token"}, true);
  lm_logits_ = find_net("lm_head_logits", {"hidden"}, "", {"logits"}, false);
  while (std::find(net_names_.begin(), net_names_.end(), "block_" + std::to_string(num_layers_)) != net_names_.end())
    ++num_layers_;
  if (num_layers_ == 0) throw ModelError("the bmodel has no block_0 net; see docs/tpu-pieces.md");
  const std::vector<std::string> kv_out = {"hidden_out", "present_k", "present_v"};
  const std::vector<std::string> past_in = {"hidden", "position_ids", "attention_mask", "past_k", "past_v"};
  const bool has_chunk = std::find(net_names_.begin(), net_names_.end(), "block_chunk_0") != net_names_.end();
  for (int i = 0; i < num_layers_; ++i) {
    const std::string s = std::to_string(i);
    blocks_.push_back(find_net("block_" + s, {"hidden", "position_ids", "attention_mask"}, "position_ids", kv_out, true));
    blocks_cache_.push_back(find_net("block_cache_" + s, past_in, "position_ids", kv_out, true));
    if (has_chunk) blocks_chunk_.push_back(find_net("block_chunk_" + s, past_in, "position_ids", kv_out, true));
  }

  // Shapes, taken from stage 0 of each net and checked against each other.
  auto in_shape = [](const Net& n, int pos, int g) -> const bm_shape_t& {
    return n.info->stages[0].input_shapes[g * n.in_per + n.in_slot[pos]];
  };
  auto out_shape = [](const Net& n, int pos, int g) -> const bm_shape_t& {
    return n.info->stages[0].output_shapes[g * n.out_per + n.out_slot[pos]];
  };
  auto in_type = [](const Net& n, int pos, int g) { return n.info->input_dtypes[g * n.in_per + n.in_slot[pos]]; };
  auto out_type = [](const Net& n, int pos, int g) { return n.info->output_dtypes[g * n.out_per + n.out_slot[pos]]; };
  auto in_bytes = [&](const Net& n, int pos, int g) { return count(in_shape(n, pos, g)) * dtype_size(in_type(n, pos, g)); };
  auto out_bytes = [&](const Net& n, int pos, int g) { return count(out_shape(n, pos, g)) * dtype_size(out_type(n, pos, g)); };
  auto fail = [](const Net& n, const std::string& what) {
    throw ModelError("net '" + n.name + "': " + what + " (docs/tpu-pieces.md)");
  };
  auto expect_elems = [&](const Net& n, bool input, int pos, size_t want, const char* what) {
    for (int g = 0; g < n.groups; ++g) {
      const bm_shape_t& s = input ? in_shape(n, pos, g) : out_shape(n, pos, g);
      if (count(s) != want) fail(n, std::string(what) + " has shape " + shape_str(s) + ", expected " + std::to_string(want) + " elements");
    }
  };
  auto expect_int = [&](const Net& n, int pos, const char* what) {
    for (int g = 0; g < n.groups; ++g) {
      bm_data_type_t t = in_type(n, pos, g);
      if (t != BM_INT32 && t != BM_UINT32) fail(n, std::string(what) + " is " + dtype_name(t) + ", expected i32");
    }
  };
  auto expect_mask = [&](const Net& n, int pos) {
    bm_data_type_t t = in_type(n, pos, 0);
    if (t != BM_FLOAT32 && t != BM_FLOAT16 && t != BM_BFLOAT16) fail(n, std::string("attention_mask is ") + dtype_name(t));
  };
  for (const Net* n : {&embed_, &embed_cache_})
    if (n->groups != D) fail(*n, "spans " + std::to_string(n->groups) + " device(s), the engine opened " + std::to_string(D));
  if (lm_head_.groups != 1 && lm_head_.groups != D) fail(lm_head_, "spans an unexpected number of devices");

  const bm_shape_t& ids = in_shape(embed_, 0, 0);
  seq_len_ = ids.num_dims ? ids.dims[ids.num_dims - 1] : 0;
  const size_t N = static_cast<size_t>(seq_len_);
  if (N < 2) fail(embed_, "input_ids has shape " + shape_str(ids) + ", expected [1,N]");
  expect_elems(embed_, true, 0, N, "input_ids");
  expect_int(embed_, 0, "input_ids");
  if (embed_.has_input(1)) {
    expect_elems(embed_, true, 1, N, "position_ids");
    expect_int(embed_, 1, "position_ids");
  }
  const size_t hidden_bytes = out_bytes(embed_, 0, 0);
  if (hidden_bytes % N) fail(embed_, "hidden is not N rows");
  hidden_row_bytes_ = hidden_bytes / N;
  const bm_data_type_t hidden_type = out_type(embed_, 0, 0);
  hidden_ = static_cast<int>(hidden_row_bytes_ / dtype_size(hidden_type));
  const size_t H = static_cast<size_t>(hidden_);
  auto expect_hidden = [&](const Net& n, bool input, int pos, size_t rows) {
    expect_elems(n, input, pos, rows * H, input ? "hidden" : "hidden_out");
    for (int g = 0; g < n.groups; ++g) {
      bm_data_type_t t = input ? in_type(n, pos, g) : out_type(n, pos, g);
      if (t != hidden_type) fail(n, std::string("hidden is ") + dtype_name(t) + ", embed gives " + dtype_name(hidden_type));
    }
  };
  expect_elems(embed_cache_, true, 0, 1, "input_ids");
  expect_int(embed_cache_, 0, "input_ids");
  if (embed_cache_.has_input(1)) expect_int(embed_cache_, 1, "position_ids");
  expect_hidden(embed_cache_, false, 0, 1);
  expect_hidden(lm_head_, true, 0, 1);
  expect_elems(lm_head_, false, 0, 1, "token");
  if (lm_logits_.info) {
    expect_hidden(lm_logits_, true, 0, 1);
    vocab_ = static_cast<int>(count(out_shape(lm_logits_, 0, 0)));
    bm_data_type_t t = out_type(lm_logits_, 0, 0);
    if (t != BM_FLOAT32 && t != BM_FLOAT16 && t != BM_BFLOAT16) fail(lm_logits_, std::string("logits are ") + dtype_name(t));
  }

  if (has_chunk) {
    const bm_shape_t& hid = in_shape(blocks_chunk_[0], 0, 0);
    chunk_len_ = static_cast<int>(count(hid) / H);
    if (chunk_len_ < 1 || static_cast<size_t>(chunk_len_) > N) fail(blocks_chunk_[0], "hidden has shape " + shape_str(hid));
  }
  const size_t K = static_cast<size_t>(chunk_len_);
  kv_row_bytes_.assign(D, 0);
  const bm_data_type_t kv_type = out_type(blocks_[0], 1, 0);
  for (int g = 0; g < D; ++g) {
    const size_t bytes = out_bytes(blocks_[0], 1, g);
    if (bytes % N) fail(blocks_[0], "present_k is not N rows");
    kv_row_bytes_[g] = bytes / N;
  }
  for (int i = 0; i < num_layers_; ++i) {
    for (const Net* n : {&blocks_[i], &blocks_cache_[i]})
      if (n->groups != D) fail(*n, "spans " + std::to_string(n->groups) + " device(s), the engine opened " + std::to_string(D));
    const Net& b = blocks_[i];
    expect_hidden(b, true, 0, N);
    expect_hidden(b, false, 0, N);
    if (b.has_input(1)) {
      expect_elems(b, true, 1, N, "position_ids");
      expect_int(b, 1, "position_ids");
    }
    expect_elems(b, true, 2, N * N, "attention_mask");
    expect_mask(b, 2);
    auto expect_kv = [&](const Net& n, bool input, int pos, size_t rows, const char* what) {
      for (int g = 0; g < D; ++g) {
        size_t bytes = input ? in_bytes(n, pos, g) : out_bytes(n, pos, g);
        bm_data_type_t t = input ? in_type(n, pos, g) : out_type(n, pos, g);
        if (t != kv_type || bytes != rows * kv_row_bytes_[g])
          fail(n, std::string(what) + " is " + std::to_string(bytes) + " bytes of " + dtype_name(t) + ", expected " +
                      std::to_string(rows) + " rows of " + std::to_string(kv_row_bytes_[g]) + " bytes of " + dtype_name(kv_type));
      }
    };
    expect_kv(b, false, 1, N, "present_k");
    expect_kv(b, false, 2, N, "present_v");
    std::vector<std::pair<const Net*, size_t>> incremental = {{&blocks_cache_[i], 1}};
    if (has_chunk) incremental.push_back({&blocks_chunk_[i], K});
    for (auto [n, rows] : incremental) {
      if (n->groups != D) fail(*n, "spans an unexpected number of devices");
      expect_hidden(*n, true, 0, rows);
      expect_hidden(*n, false, 0, rows);
      if (n->has_input(1)) {
        expect_elems(*n, true, 1, rows, "position_ids");
        expect_int(*n, 1, "position_ids");
      }
      expect_elems(*n, true, 2, rows * (N + rows), "attention_mask");
      expect_mask(*n, 2);
      expect_kv(*n, true, 3, N, "past_k");
      expect_kv(*n, true, 4, N, "past_v");
      expect_kv(*n, false, 1, rows, "present_k");
      expect_kv(*n, false, 2, rows, "present_v");
    }
  }
}

Engine::Buf Engine::alloc(int dev, size_t bytes, const char* what) {
  Buf buf;
  buf.dev = dev;
  buf.bytes = bytes;
  if (bytes > 0xffffffffu) throw DeviceError(std::string(what) + ": " + std::to_string(bytes) + " bytes exceed one bmlib allocation");
  bm_status_t status = api_.bm_malloc_device_byte(handles_[dev], &buf.mem, static_cast<unsigned int>(bytes));
  if (status != BM_SUCCESS)
    throw DeviceError("out of device memory: " + std::to_string(bytes) + " bytes for " + what + " on device " +
                      std::to_string(dev) + " (bm_malloc_device_byte returned " + std::to_string(status) + ")");
  owned_.push_back(buf);
  return buf;
}

// Buffers of our own (not the nets' input/output memories, which the runtime may place in the
// neuron area that every net shares: a KV cache there would be overwritten by the next launch).
void Engine::allocate() {
  const size_t N = seq_len_, K = chunk_len_;
  const size_t mask_elems = std::max({N * N, K * (N + K), N + 1});
  dev_.resize(handles_.size());
  for (int d = 0; d < static_cast<int>(handles_.size()); ++d) {
    DeviceBufs& b = dev_[d];
    b.ids = alloc(d, N * 4, "input_ids");
    b.pos = alloc(d, N * 4, "position_ids");
    b.mask = alloc(d, mask_elems * 4, "attention_mask");
    b.hidden[0] = alloc(d, N * hidden_row_bytes_, "hidden");
    b.hidden[1] = alloc(d, N * hidden_row_bytes_, "hidden");
    b.present_k = alloc(d, std::max<size_t>(K, 1) * kv_row_bytes_[d], "present_k");
    b.present_v = alloc(d, std::max<size_t>(K, 1) * kv_row_bytes_[d], "present_v");
    for (int i = 0; i < num_layers_; ++i) {
      b.k_cache.push_back(alloc(d, N * kv_row_bytes_[d], "the K cache"));
      b.v_cache.push_back(alloc(d, N * kv_row_bytes_[d], "the V cache"));
    }
    if (d < lm_head_.groups) {
      b.lm_in = alloc(d, hidden_row_bytes_, "lm_head input");
      b.lm_token = alloc(d, 4, "lm_head token");
      if (lm_logits_.info) b.lm_logits = alloc(d, static_cast<size_t>(vocab_) * 4, "logits");
    }
  }
}

// ---- device primitives ------------------------------------------------------------------------

void Engine::bind_in(Launch& l, int slot, int g, const Buf& buf) const {
  if (!l.net.has_input(slot)) return;
  const int idx = g * l.net.in_per + l.net.in_slot[slot];
  bm_tensor_t& t = l.in[idx];
  t.dtype = l.net.info->input_dtypes[idx];
  t.shape = l.net.info->stages[0].input_shapes[idx];  // may cover only the first rows of `buf`
  t.device_mem = buf.mem;
  t.st_mode = BM_STORE_1N;
}

void Engine::bind_out(Launch& l, int slot, int g, const Buf& buf) const {
  const int idx = g * l.net.out_per + l.net.out_slot[slot];
  bm_tensor_t& t = l.out[idx];
  t.dtype = l.net.info->output_dtypes[idx];
  t.shape = l.net.info->stages[0].output_shapes[idx];
  t.device_mem = buf.mem;
  t.st_mode = BM_STORE_1N;
}

void Engine::launch(Launch& l) {
  const Net& net = l.net;
  if (!api_.bmrt_launch_tensor_ex(bmrt_, net.name.c_str(), l.in.data(), static_cast<int>(l.in.size()), l.out.data(),
                                  static_cast<int>(l.out.size()), /*user_mem=*/true, /*user_stmode=*/false))
    throw DeviceError("bmrt_launch_tensor_ex('" + net.name + "') failed");
  // Launches are asynchronous on a real chip; the copies that follow must see their results, and
  // a device that went away shows up here rather than as garbage later.
  for (int g = 0; g < net.groups; ++g) {
    bm_status_t status = api_.bm_thread_sync(handles_[g]);
    if (status != BM_SUCCESS)
      throw DeviceError("net '" + net.name + "' failed on device " + std::to_string(g) + " (bm_thread_sync returned " +
                        std::to_string(status) + ")");
  }
  ++stats_.launches;
}

void Engine::write(Buf& buf, const void* data, size_t bytes) {
  bm_status_t status = api_.bm_memcpy_s2d_partial_offset(handles_[buf.dev], buf.mem, const_cast<void*>(data),
                                                         static_cast<unsigned int>(bytes), 0);
  if (status != BM_SUCCESS) throw DeviceError("host-to-device copy failed (" + std::to_string(status) + ")");
}

// The mask in the dtype of `net`'s input `pos`, to every device.
void Engine::write_mask(const Net& net, std::vector<float>& mask) {
  const bm_data_type_t t = net.info->input_dtypes[net.in_slot[2]];
  if (t == BM_FLOAT32) {
    for (auto& b : dev_) write(b.mask, mask.data(), mask.size() * 4);
    return;
  }
  std::vector<uint16_t> half(mask.size());
  for (size_t i = 0; i < mask.size(); ++i) half[i] = t == BM_FLOAT16 ? f32_to_f16(mask[i]) : f32_to_bf16(mask[i]);
  for (auto& b : dev_) write(b.mask, half.data(), half.size() * 2);
}

void Engine::copy(Buf& dst, size_t dst_offset, Buf& src, size_t src_offset, size_t bytes) {
  bm_status_t status = api_.bm_memcpy_d2d_byte(handles_[dst.dev], dst.mem, dst_offset, src.mem, src_offset, bytes);
  if (status != BM_SUCCESS) throw DeviceError("device-to-device copy failed (" + std::to_string(status) + ")");
}

void Engine::read(void* dst, Buf& src, size_t bytes) {
  bm_status_t status = api_.bm_memcpy_d2s_partial_offset(handles_[src.dev], dst, src.mem, static_cast<unsigned int>(bytes), 0);
  if (status != BM_SUCCESS) throw DeviceError("device-to-host copy failed (" + std::to_string(status) + ")");
}

// ---- the three ways in ------------------------------------------------------------------------

// Host inputs to every device: ids and positions (the first `n` of the N-long buffers), mask.
void Engine::write_inputs(const std::vector<int32_t>& ids, const std::vector<int32_t>& pos, const Net& masked,
                          std::vector<float>& mask) {
  for (auto& b : dev_) {
    write(b.ids, ids.data(), ids.size() * 4);
    write(b.pos, pos.data(), pos.size() * 4);
  }
  write_mask(masked, mask);
}

// `embed` or `embed_cache` from ids/pos into hidden[0].
void Engine::run_embed(const Net& net) {
  Launch l(net);
  for (int g = 0; g < net.groups; ++g) {
    bind_in(l, 0, g, dev_[g].ids);
    bind_in(l, 1, g, dev_[g].pos);
    bind_out(l, 0, g, dev_[g].hidden[0]);
  }
  launch(l);
}

// One net per layer over hidden[0] (ping-pong between the two hidden buffers). Prefill nets
// (`at` < 0) write their N present rows straight into the caches; the others take the caches as
// past and write `keep` rows of their present output into them at row `at`.
void Engine::run_blocks(const std::vector<Net>& nets, int at, int keep) {
  int cur = 0;
  for (int i = 0; i < num_layers_; ++i) {
    Launch l(nets[i]);
    for (int g = 0; g < l.net.groups; ++g) {
      DeviceBufs& b = dev_[g];
      bind_in(l, 0, g, b.hidden[cur]);
      bind_in(l, 1, g, b.pos);
      bind_in(l, 2, g, b.mask);
      bind_out(l, 0, g, b.hidden[1 - cur]);
      if (at < 0) {
        bind_out(l, 1, g, b.k_cache[i]);
        bind_out(l, 2, g, b.v_cache[i]);
      } else {
        bind_in(l, 3, g, b.k_cache[i]);
        bind_in(l, 4, g, b.v_cache[i]);
        bind_out(l, 1, g, b.present_k);
        bind_out(l, 2, g, b.present_v);
      }
    }
    launch(l);
    if (at >= 0) {
      for (int g = 0; g < l.net.groups; ++g) {
        const size_t row = kv_row_bytes_[g];
        copy(dev_[g].k_cache[i], at * row, dev_[g].present_k, 0, keep * row);
        copy(dev_[g].v_cache[i], at * row, dev_[g].present_v, 0, keep * row);
      }
    }
    cur = 1 - cur;
  }
  cur_ = cur;
}

void Engine::prefill(const std::vector<int>& tokens) {
  const int N = seq_len_, n = static_cast<int>(tokens.size());
  std::vector<int32_t> ids(N, 0), pos(N);
  std::copy(tokens.begin(), tokens.end(), ids.begin());
  for (int t = 0; t < N; ++t) pos[t] = t;  // padding rows get real positions: never used, never out of range
  std::vector<float> mask(static_cast<size_t>(N) * N);
  for (int i = 0; i < N; ++i)
    for (int j = 0; j < N; ++j) mask[static_cast<size_t>(i) * N + j] = j <= i ? 0.0f : kMaskHidden;
  write_inputs(ids, pos, blocks_[0], mask);
  run_embed(embed_);
  run_blocks(blocks_, -1, 0);
  last_row_ = n - 1;
  length_ = n;
  stats_.prefills++;
  stats_.block_rows += N;
  stats_.tokens_fed += n;
}

// `count` <= K tokens at positions length_ ..., through embed (its first K rows) and block_chunk_i.
void Engine::chunk(const int* tokens, int count) {
  const int N = seq_len_, K = chunk_len_, L = length_;
  std::vector<int32_t> ids(N, 0), pos(N, 0);
  std::copy(tokens, tokens + count, ids.begin());
  for (int t = 0; t < K; ++t) pos[t] = std::min(L + t, N - 1);  // padding rows: any valid position
  const int cols = N + K;  // the N cached positions, then the chunk's own K
  std::vector<float> mask(static_cast<size_t>(K) * cols);
  for (int t = 0; t < K; ++t)
    for (int j = 0; j < cols; ++j)
      mask[static_cast<size_t>(t) * cols + j] = (j < N ? j < L : j - N <= t) ? 0.0f : kMaskHidden;
  write_inputs(ids, pos, blocks_chunk_[0], mask);
  run_embed(embed_);
  run_blocks(blocks_chunk_, L, count);
  last_row_ = count - 1;
  length_ = L + count;
  stats_.chunks++;
  stats_.block_rows += K;
  stats_.tokens_fed += count;
}

void Engine::decode(int token) {
  const int N = seq_len_, L = length_;
  std::vector<float> mask(N + 1, kMaskHidden);
  std::fill(mask.begin(), mask.begin() + L, 0.0f);
  mask[N] = 0.0f;  // the token's own column
  write_inputs({token}, {L}, blocks_cache_[0], mask);
  run_embed(embed_cache_);
  run_blocks(blocks_cache_, L, 1);
  last_row_ = 0;
  length_ = L + 1;
  stats_.decodes++;
  stats_.block_rows += 1;
  stats_.tokens_fed += 1;
}

// Prefill from empty when it is cheaper than chunks, else chunks of K, else one by one.
void Engine::feed(const std::vector<int>& ids) {
  const int n = static_cast<int>(ids.size());
  if (n == 0) throw Error("feed needs at least one token");
  if (length_ + n > seq_len_)
    throw Error(std::to_string(length_ + n) + " positions exceed the bmodel's context of " + std::to_string(seq_len_));
  for (int id : ids)
    if (id < 0 || (vocab_ > 0 && id >= vocab_)) throw Error("token id " + std::to_string(id) + " is out of range");
  if (length_ == 0 && n > 1 && (chunk_len_ == 0 || n > chunk_len_)) {
    prefill(ids);
    return;
  }
  for (int done = 0; done < n;) {
    const int rest = n - done;
    if (chunk_len_ > 0 && rest > 1) {
      const int c = std::min(rest, chunk_len_);
      chunk(ids.data() + done, c);
      done += c;
    } else {
      decode(ids[done]);
      done += 1;
    }
  }
}

// The last position's hidden row into `net`'s input on each device it spans, then launch it.
void Engine::run_head(const Net& net, Buf DeviceBufs::*output) {
  Launch l(net);
  for (int g = 0; g < net.groups; ++g) {
    copy(dev_[g].lm_in, 0, dev_[g].hidden[cur_], static_cast<size_t>(last_row_) * hidden_row_bytes_, hidden_row_bytes_);
    bind_in(l, 0, g, dev_[g].lm_in);
    bind_out(l, 0, g, dev_[g].*output);
  }
  launch(l);
}

int Engine::head_token() {
  run_head(lm_head_, &DeviceBufs::lm_token);
  uint32_t raw = 0;
  read(&raw, dev_[0].lm_token, 4);
  if (lm_head_.info->output_dtypes[lm_head_.out_slot[0]] == BM_FLOAT32) {  // a top-1 index kept as float
    float f;
    std::memcpy(&f, &raw, 4);
    return static_cast<int>(f);
  }
  return static_cast<int>(raw);
}

std::vector<float> Engine::head_logits() {
  run_head(lm_logits_, &DeviceBufs::lm_logits);
  const bm_data_type_t t = lm_logits_.info->output_dtypes[lm_logits_.out_slot[0]];
  std::vector<float> logits(vocab_);
  if (t == BM_FLOAT32) {
    read(logits.data(), dev_[0].lm_logits, logits.size() * 4);
  } else {
    std::vector<uint16_t> half(vocab_);
    read(half.data(), dev_[0].lm_logits, half.size() * 2);
    for (int i = 0; i < vocab_; ++i) logits[i] = t == BM_FLOAT16 ? f16_to_f32(half[i]) : bf16_to_f32(half[i]);
  }
  return logits;
}

// ---- public calls -----------------------------------------------------------------------------

void Engine::require_open() const {
  if (closed_) throw Error("the engine is closed");
}

void Engine::truncate(int length) {
  std::lock_guard<std::timed_mutex> lock(mutex_);
  require_open();
  if (length < 0) throw Error("negative length");
  length_ = std::min(length_, length);
}

// A device failure leaves the cache half-written: forget it all rather than trust any of it.
template <typename F>
static auto guarded(int& length, F&& body) -> decltype(body()) {
  try {
    return body();
  } catch (const DeviceError&) {
    length = 0;
    throw;
  }
}

int Engine::feed_greedy(const std::vector<int>& ids) {
  std::lock_guard<std::timed_mutex> lock(mutex_);
  require_open();
  return guarded(length_, [&] {
    feed(ids);
    return head_token();
  });
}

std::vector<float> Engine::feed_logits(const std::vector<int>& ids) {
  std::lock_guard<std::timed_mutex> lock(mutex_);
  require_open();
  if (!lm_logits_.info) throw ModelError("the bmodel has no lm_head_logits net; logits are not available");
  return guarded(length_, [&] {
    feed(ids);
    return head_logits();
  });
}

GenerateResult Engine::generate(int first, int max_steps, const std::vector<int>& stop_ids,
                                const std::function<bool(int)>& on_token) {
  std::lock_guard<std::timed_mutex> lock(mutex_);
  require_open();
  cancel_.store(false);  // a cancel() applies to the generation in progress
  const std::unordered_set<int> stops(stop_ids.begin(), stop_ids.end());
  GenerateResult result;
  int token = first;
  for (int step = 0;; ++step) {
    if (step >= max_steps) {
      result.reason = StopReason::MaxSteps;
      break;
    }
    if (cancel_.load()) {
      result.reason = StopReason::Cancelled;
      break;
    }
    if (length_ >= seq_len_) {
      result.reason = StopReason::Context;
      break;
    }
    token = guarded(length_, [&] {
      feed({token});
      return head_token();
    });
    result.tokens.push_back(token);
    if (on_token && !on_token(token)) {
      result.reason = StopReason::Callback;
      break;
    }
    if (stops.count(token)) {
      result.reason = StopReason::StopToken;
      break;
    }
  }
  return result;
}

}  // namespace wct
