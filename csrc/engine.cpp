// The bmrt engine (see engine.h for the data path).
#include "engine.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <unordered_set>

#include "bmodel_file.h"
#include "dtypes.h"
#include "errors.h"
#include "runtime.h"

namespace wct {
namespace {

constexpr float kMaskHidden = -10000.0f;  // docs/tpu-pieces.md: additive, finite in float16

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

Engine::Engine(const Api& api, const std::string& bmodel_path, const std::vector<int>& devices, int slots)
    : api_(api) {
  if (slots < 0 || slots > kMaxSlots)
    throw Error("KV-cache slots must be 0 (as many as fit) to " + std::to_string(kMaxSlots) + ", not " +
                std::to_string(slots));
  try {
    open(bmodel_path, devices, slots);
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
  closing_.store(true);
  cancel_.store(true);
  std::lock_guard<std::timed_mutex> lock(mutex_);
  release();
}

void Engine::close_at_exit() {
  closing_.store(true);
  cancel_.store(true);
  std::unique_lock<std::timed_mutex> lock(mutex_, std::chrono::seconds(2));
  if (lock.owns_lock()) release();
}

void Engine::release() {
  memory_.free_all();
  dev_.clear();
  if (bmrt_) api_.bmrt_destroy(bmrt_);
  bmrt_ = nullptr;
  for (bm_handle_t handle : handles_) api_.bm_dev_free(handle);
  handles_.clear();
  closed_ = true;
  length_ = 0;
  slot_ = 0;
  lengths_.clear();
  std::lock_guard<std::mutex> lock(g_live_mutex);
  g_live.erase(std::remove(g_live.begin(), g_live.end(), this), g_live.end());
}

void Engine::open(const std::string& bmodel_path, const std::vector<int>& devices_in, int slots) {
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
  std::vector<NetDesc> nets;
  for (const std::string& name : net_names_) nets.push_back(describe_net(api_.bmrt_get_network_info(bmrt_, name.c_str()), name));
  contract_ = check_contract(nets, static_cast<int>(handles_.size()));
  allocate(slots);
}

// ---- device buffers ---------------------------------------------------------------------------

int64_t Engine::slot_bytes_on(int d) const {
  return 2ll * contract_.num_layers * contract_.seq_len * static_cast<int64_t>(contract_.kv_row_bytes[d]);
}

int64_t Engine::slot_bytes() const {
  int64_t bytes = 0;
  for (int d = 0; d < static_cast<int>(handles_.size()); ++d) bytes += slot_bytes_on(d);
  return bytes;
}

// `wanted` slots (0: kMaxSlots), fewer where the device memory left after the bmodel and the
// engine's other buffers cannot hold them beside kFreeReserveBytes, at least one; -1 where bmlib
// reports no heap statistics (tpu-mlir's simulator reports none).
int Engine::slots_that_fit(int wanted) const {
  int fit = wanted == 0 ? kMaxSlots : wanted;
  for (int d = 0; d < static_cast<int>(handles_.size()); ++d) {
    const int64_t avail = memory_.free_bytes(d);
    if (avail < 0) return -1;
    fit = static_cast<int>(std::min<int64_t>(fit, std::max<int64_t>(0, avail - kFreeReserveBytes) /
                                                      std::max<int64_t>(slot_bytes_on(d), 1)));
  }
  return std::max(1, fit);
}

bool Engine::allocate_slot(int slot) {
  const size_t N = contract_.seq_len, mark = memory_.mark();
  try {
    for (int d = 0; d < static_cast<int>(handles_.size()); ++d) {
      DeviceBufs& b = dev_[d];
      b.k_cache.emplace_back();
      b.v_cache.emplace_back();
      for (int i = 0; i < contract_.num_layers; ++i) {
        b.k_cache[slot].push_back(memory_.alloc(d, N * contract_.kv_row_bytes[d], "the K cache"));
        b.v_cache[slot].push_back(memory_.alloc(d, N * contract_.kv_row_bytes[d], "the V cache"));
      }
    }
  } catch (const DeviceError&) {
    memory_.free_since(mark);
    for (DeviceBufs& b : dev_) {
      b.k_cache.resize(slot);
      b.v_cache.resize(slot);
    }
    if (slot == 0) throw;  // not even one cache: the model does not fit
    return false;
  }
  return true;
}

void Engine::allocate(int wanted_slots) {
  const size_t N = contract_.seq_len, K = contract_.chunks.empty() ? 0 : contract_.chunks.back().rows;
  const size_t mask_elems = std::max({N * N, K * (N + K), N + 1});
  dev_.resize(handles_.size());
  for (int d = 0; d < static_cast<int>(handles_.size()); ++d) {
    DeviceBufs& b = dev_[d];
    b.ids = memory_.alloc(d, N * 4, "input_ids");
    b.pos = memory_.alloc(d, N * 4, "position_ids");
    b.mask = memory_.alloc(d, mask_elems * 4, "attention_mask");
    b.hidden[0] = memory_.alloc(d, N * contract_.hidden_row_bytes, "hidden");
    b.hidden[1] = memory_.alloc(d, N * contract_.hidden_row_bytes, "hidden");
    b.present_k = memory_.alloc(d, std::max<size_t>(K, 1) * contract_.kv_row_bytes[d], "present_k");
    b.present_v = memory_.alloc(d, std::max<size_t>(K, 1) * contract_.kv_row_bytes[d], "present_v");
    if (d < contract_.lm_head.groups) {
      b.lm_in = memory_.alloc(d, contract_.hidden_row_bytes, "lm_head input");
      b.lm_token = memory_.alloc(d, 4, "lm_head token");
      if (contract_.lm_logits.present()) b.lm_logits = memory_.alloc(d, static_cast<size_t>(contract_.vocab) * 4, "logits");
      if (contract_.lm_rows.present()) b.lm_tokens = memory_.alloc(d, static_cast<size_t>(contract_.head_rows) * 4, "lm_head_chunk tokens");
    }
  }
  // Where bmlib reports free memory, as many as it says fit; where it does not, allocated until
  // the device refuses one, then enough of the last given back to leave kFreeReserveBytes free.
  const int fit = slots_that_fit(wanted_slots);
  const int target = fit > 0 ? fit : wanted_slots == 0 ? kMaxSlots : wanted_slots;
  std::vector<size_t> marks;  // marks[s]: where slot s's buffers begin in memory_
  int slots = 0;
  for (marks.push_back(memory_.mark()); slots < target && allocate_slot(slots); marks.push_back(memory_.mark())) ++slots;
  if (fit < 0 && slots < target) {
    const int64_t per_slot = std::max<int64_t>(slot_bytes(), 1);
    slots -= static_cast<int>(std::min<int64_t>(slots - 1, (kFreeReserveBytes + per_slot - 1) / per_slot));
    memory_.free_since(marks[slots]);
    for (DeviceBufs& b : dev_) {
      b.k_cache.resize(slots);
      b.v_cache.resize(slots);
    }
  }
  lengths_.assign(slots, 0);
  slot_ = 0;
}

// ---- device primitives ------------------------------------------------------------------------

void Engine::bind_in(Launch& l, int slot, int g, const Buf& buf) const {
  if (!l.net.has_input(slot)) return;
  const TensorDesc& desc = l.net.in(slot, g);
  bm_tensor_t& t = l.in[l.net.in_index(slot, g)];
  t.dtype = desc.dtype;
  t.shape = desc.shape;  // may cover only the first rows of `buf`
  t.device_mem = buf.mem;
  t.st_mode = BM_STORE_1N;
}

void Engine::bind_out(Launch& l, int slot, int g, const Buf& buf) const {
  const TensorDesc& desc = l.net.out(slot, g);
  bm_tensor_t& t = l.out[l.net.out_index(slot, g)];
  t.dtype = desc.dtype;
  t.shape = desc.shape;
  t.device_mem = buf.mem;
  t.st_mode = BM_STORE_1N;
}

void Engine::launch(Launch& l) {
  const NetLayout& net = l.net;
  if (!api_.bmrt_launch_tensor_ex(bmrt_, net.desc.name.c_str(), l.in.data(), static_cast<int>(l.in.size()), l.out.data(),
                                  static_cast<int>(l.out.size()), /*user_mem=*/true, /*user_stmode=*/false))
    throw DeviceError("bmrt_launch_tensor_ex('" + net.desc.name + "') failed");
  // Launches are asynchronous on a real chip; the copies that follow must see their results, and
  // a device that went away shows up here rather than as garbage later.
  for (int g = 0; g < net.groups; ++g) {
    bm_status_t status = api_.bm_thread_sync(handles_[g]);
    if (status != BM_SUCCESS)
      throw DeviceError("net '" + net.desc.name + "' failed on device " + std::to_string(g) + " (bm_thread_sync returned " +
                        std::to_string(status) + ")");
  }
  ++stats_.launches;
}

// The mask in the dtype of `net`'s input `pos`, to every device.
void Engine::write_mask(const NetLayout& net, std::vector<float>& mask) {
  const bm_data_type_t t = net.in(kMask, 0).dtype;
  if (t == BM_FLOAT32) {
    for (auto& b : dev_) memory_.write(b.mask, mask.data(), mask.size() * 4);
    return;
  }
  std::vector<uint16_t> half(mask.size());
  for (size_t i = 0; i < mask.size(); ++i) half[i] = t == BM_FLOAT16 ? f32_to_f16(mask[i]) : f32_to_bf16(mask[i]);
  for (auto& b : dev_) memory_.write(b.mask, half.data(), half.size() * 2);
}

// ---- the three ways in ------------------------------------------------------------------------

// Host inputs to every device: ids and positions (the first `n` of the N-long buffers), mask.
void Engine::write_inputs(const std::vector<int32_t>& ids, const std::vector<int32_t>& pos, const NetLayout& masked,
                          std::vector<float>& mask) {
  for (auto& b : dev_) {
    memory_.write(b.ids, ids.data(), ids.size() * 4);
    memory_.write(b.pos, pos.data(), pos.size() * 4);
  }
  write_mask(masked, mask);
}

// `embed` or `embed_cache` from ids/pos into hidden[0].
void Engine::run_embed(const NetLayout& net) {
  Launch l(net);
  for (int g = 0; g < net.groups; ++g) {
    bind_in(l, kIds, g, dev_[g].ids);
    bind_in(l, kPositions, g, dev_[g].pos);
    bind_out(l, 0, g, dev_[g].hidden[0]);
  }
  launch(l);
}

// One net per layer over hidden[0] (ping-pong between the two hidden buffers). Prefill nets
// (`at` < 0) write their N present rows straight into the caches; the others take the caches as
// past and write `keep` rows of their present output into them at row `at`.
void Engine::run_blocks(const std::vector<NetLayout>& nets, int at, int keep) {
  int cur = 0;
  for (int i = 0; i < contract_.num_layers; ++i) {
    Launch l(nets[i]);
    for (int g = 0; g < l.net.groups; ++g) {
      DeviceBufs& b = dev_[g];
      bind_in(l, kHidden, g, b.hidden[cur]);
      bind_in(l, kBlockPositions, g, b.pos);
      bind_in(l, kMask, g, b.mask);
      bind_out(l, kHiddenOut, g, b.hidden[1 - cur]);
      if (at < 0) {
        bind_out(l, kPresentK, g, b.k_cache[slot_][i]);
        bind_out(l, kPresentV, g, b.v_cache[slot_][i]);
      } else {
        bind_in(l, kPastK, g, b.k_cache[slot_][i]);
        bind_in(l, kPastV, g, b.v_cache[slot_][i]);
        bind_out(l, kPresentK, g, b.present_k);
        bind_out(l, kPresentV, g, b.present_v);
      }
    }
    launch(l);
    if (at >= 0) {
      for (int g = 0; g < l.net.groups; ++g) {
        const size_t row = contract_.kv_row_bytes[g];
        memory_.copy(dev_[g].k_cache[slot_][i], at * row, dev_[g].present_k, 0, keep * row);
        memory_.copy(dev_[g].v_cache[slot_][i], at * row, dev_[g].present_v, 0, keep * row);
      }
    }
    cur = 1 - cur;
  }
  cur_ = cur;
}

void Engine::prefill(const std::vector<int>& tokens) {
  const int N = contract_.seq_len, n = static_cast<int>(tokens.size());
  std::vector<int32_t> ids(N, 0), pos(N);
  std::copy(tokens.begin(), tokens.end(), ids.begin());
  for (int t = 0; t < N; ++t) pos[t] = t;  // padding rows get real positions: never used, never out of range
  std::vector<float> mask(static_cast<size_t>(N) * N);
  for (int i = 0; i < N; ++i)
    for (int j = 0; j < N; ++j) mask[static_cast<size_t>(i) * N + j] = j <= i ? 0.0f : kMaskHidden;
  write_inputs(ids, pos, contract_.blocks[0], mask);
  run_embed(contract_.embed);
  run_blocks(contract_.blocks, -1, 0);
  last_row_ = n - 1;
  length_ = n;
  stats_.prefills++;
  stats_.block_rows += N;
  stats_.tokens_fed += n;
}

// `count` <= set.rows tokens at positions length_ ..., through embed (its first rows) and the set's blocks.
void Engine::chunk(const int* tokens, int count, const ChunkSet& set) {
  const int N = contract_.seq_len, K = set.rows, L = length_;
  std::vector<int32_t> ids(N, 0), pos(N, 0);
  std::copy(tokens, tokens + count, ids.begin());
  for (int t = 0; t < K; ++t) pos[t] = std::min(L + t, N - 1);  // padding rows: any valid position
  const int cols = N + K;  // the N cached positions, then the chunk's own K
  std::vector<float> mask(static_cast<size_t>(K) * cols);
  for (int t = 0; t < K; ++t)
    for (int j = 0; j < cols; ++j)
      mask[static_cast<size_t>(t) * cols + j] = (j < N ? j < L : j - N <= t) ? 0.0f : kMaskHidden;
  write_inputs(ids, pos, set.blocks[0], mask);
  run_embed(contract_.embed);
  run_blocks(set.blocks, L, count);
  last_row_ = count - 1;
  length_ = L + count;
  stats_.chunks++;
  stats_.block_rows += K;
  stats_.tokens_fed += count;
}

void Engine::decode(int token) {
  const int N = contract_.seq_len, L = length_;
  std::vector<float> mask(N + 1, kMaskHidden);
  std::fill(mask.begin(), mask.begin() + L, 0.0f);
  mask[N] = 0.0f;  // the token's own column
  write_inputs({token}, {L}, contract_.blocks_cache[0], mask);
  run_embed(contract_.embed_cache);
  run_blocks(contract_.blocks_cache, L, 1);
  last_row_ = 0;
  length_ = L + 1;
  stats_.decodes++;
  stats_.block_rows += 1;
  stats_.tokens_fed += 1;
}

void Engine::check_ids(const std::vector<int>& ids) const {
  const int n = static_cast<int>(ids.size());
  if (n == 0) throw Error("feed needs at least one token");
  if (length_ + n > contract_.seq_len)
    throw Error(std::to_string(length_ + n) + " positions exceed the bmodel's context of " + std::to_string(contract_.seq_len));
  for (int id : ids)
    if (id < 0 || (contract_.vocab > 0 && id >= contract_.vocab)) throw Error("token id " + std::to_string(id) + " is out of range");
}

void Engine::feed(const std::vector<int>& ids) {
  check_ids(ids);
  const int n = static_cast<int>(ids.size());
  int done = 0;
  for (const FeedCall& call : plan_feed(length_, n, contract_.seq_len, chunk_rows())) {
    const int take = std::min(call.rows, n - done);
    if (call.kind == FeedCall::Prefill) {
      prefill(ids);
    } else if (call.kind == FeedCall::Decode) {
      decode(ids[done]);
    } else {
      const auto set = std::find_if(contract_.chunks.begin(), contract_.chunks.end(),
                                    [&](const ChunkSet& s) { return s.rows == call.rows; });
      chunk(ids.data() + done, take, *set);
    }
    done += take;
  }
}

std::vector<int> Engine::chunk_rows() const {
  std::vector<int> rows;
  for (const ChunkSet& set : contract_.chunks) rows.push_back(set.rows);
  return rows;
}

const char* feed_call_name(FeedCall::Kind kind) {
  switch (kind) {
    case FeedCall::Prefill: return "prefill";
    case FeedCall::Chunk: return "chunk";
    case FeedCall::Decode: return "decode";
  }
  return "?";
}

std::vector<FeedCall> plan_feed(int length, int count, int seq_len, const std::vector<int>& chunk_rows) {
  if (count <= 0) return {};
  if (chunk_rows.empty()) {
    if (length == 0 && count > 1) return {{FeedCall::Prefill, seq_len}};
    return std::vector<FeedCall>(count, {FeedCall::Decode, 1});
  }
  // cost[r]: the cheapest way to feed r tokens; first[r]: the rows of its first call (1 = decode).
  std::vector<int64_t> cost(count + 1, 0);
  std::vector<int> first(count + 1, 1);
  for (int r = 1; r <= count; ++r) {
    cost[r] = 1 + kCallRows + cost[r - 1];
    for (int rows : chunk_rows) {
      const int64_t c = rows + kCallRows + cost[std::max(0, r - rows)];
      if (c <= cost[r]) cost[r] = c, first[r] = rows;  // ties: the bigger call first
    }
  }
  if (length == 0 && count > 1 && seq_len + kCallRows < cost[count]) return {{FeedCall::Prefill, seq_len}};
  std::vector<FeedCall> plan;
  for (int r = count; r > 0; r -= std::min(r, first[r]))
    plan.push_back({first[r] == 1 ? FeedCall::Decode : FeedCall::Chunk, first[r]});
  return plan;
}

// The last position's hidden row into `net`'s input on each device it spans, then launch it.
void Engine::run_head(const NetLayout& net, Buf DeviceBufs::*output) {
  Launch l(net);
  for (int g = 0; g < net.groups; ++g) {
    memory_.copy(dev_[g].lm_in, 0, dev_[g].hidden[cur_], static_cast<size_t>(last_row_) * contract_.hidden_row_bytes, contract_.hidden_row_bytes);
    bind_in(l, 0, g, dev_[g].lm_in);
    bind_out(l, 0, g, dev_[g].*output);
  }
  launch(l);
}

// A top-1 index as the head net returns it: i32, or kept as f32 by the compiler.
static int token_of(uint32_t raw, bm_data_type_t dtype) {
  if (dtype != BM_FLOAT32) return static_cast<int>(raw);
  float f;
  std::memcpy(&f, &raw, 4);
  return static_cast<int>(f);
}

int Engine::head_token() {
  run_head(contract_.lm_head, &DeviceBufs::lm_token);
  uint32_t raw = 0;
  memory_.read(&raw, dev_[0].lm_token, 4);
  return token_of(raw, contract_.lm_head.out(0, 0).dtype);
}

// The chunk's output rows go to the head as they lie in hidden[cur_] (its first head_rows rows;
// those past `rows` are padding, their tokens never read).
std::vector<int> Engine::head_tokens(int rows) {
  const NetLayout& net = contract_.lm_rows;
  Launch l(net);
  for (int g = 0; g < net.groups; ++g) {
    bind_in(l, 0, g, dev_[g].hidden[cur_]);
    bind_out(l, 0, g, dev_[g].lm_tokens);
  }
  launch(l);
  std::vector<uint32_t> raw(rows);
  memory_.read(raw.data(), dev_[0].lm_tokens, raw.size() * 4);
  std::vector<int> tokens(rows);
  for (int r = 0; r < rows; ++r) tokens[r] = token_of(raw[r], net.out(0, 0).dtype);
  return tokens;
}

std::vector<float> Engine::head_logits() {
  run_head(contract_.lm_logits, &DeviceBufs::lm_logits);
  const bm_data_type_t t = contract_.lm_logits.out(0, 0).dtype;
  std::vector<float> logits(contract_.vocab);
  if (t == BM_FLOAT32) {
    memory_.read(logits.data(), dev_[0].lm_logits, logits.size() * 4);
  } else {
    std::vector<uint16_t> half(contract_.vocab);
    memory_.read(half.data(), dev_[0].lm_logits, half.size() * 2);
    for (int i = 0; i < contract_.vocab; ++i) logits[i] = t == BM_FLOAT16 ? f16_to_f32(half[i]) : bf16_to_f32(half[i]);
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

void Engine::select_slot(int slot) {
  std::lock_guard<std::timed_mutex> lock(mutex_);
  require_open();
  if (slot < 0 || slot >= slots())
    throw Error("slot " + std::to_string(slot) + " does not exist (this engine keeps " + std::to_string(slots()) + ")");
  lengths_[slot_] = length_;
  slot_ = slot;
  length_ = lengths_[slot];
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
  if (!contract_.lm_logits.present()) throw ModelError("the bmodel has no lm_head_logits net; logits are not available");
  return guarded(length_, [&] {
    feed(ids);
    return head_logits();
  });
}

std::vector<int> Engine::verify(const std::vector<int>& ids) {
  std::lock_guard<std::timed_mutex> lock(mutex_);
  require_open();
  check_ids(ids);
  const int n = static_cast<int>(ids.size());
  const ChunkSet* set = nullptr;  // the smallest that holds the draft (chunks are ascending)
  for (const ChunkSet& s : contract_.chunks)
    if (s.rows >= n) {
      set = &s;
      break;
    }
  return guarded(length_, [&] {
    std::vector<int> tokens;
    if (n == 1 || set == nullptr) {
      for (int id : ids) {
        decode(id);
        tokens.push_back(head_token());
      }
    } else {
      chunk(ids.data(), n, *set);
      if (contract_.lm_rows.present() && n <= contract_.head_rows) {
        tokens = head_tokens(n);
        last_row_ = n - 1;
      } else {
        for (int row = 0; row < n; ++row) {
          last_row_ = row;
          tokens.push_back(head_token());
        }
      }
    }
    stats_.verifies++;
    return tokens;
  });
}

EngineStats Engine::stats() const {
  EngineStats s = stats_;
  const Traffic& t = memory_.traffic();
  s.bytes_to_device = t.to_device;
  s.bytes_from_device = t.from_device;
  s.bytes_on_device = t.on_device;
  return s;
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
    if (closing_.load()) {  // close() from another thread: the device is going away under this request
      length_ = 0;
      throw DeviceError("the TPU device was closed during the generation, after " +
                        std::to_string(result.tokens.size()) + " token(s)");
    }
    if (cancel_.load()) {
      result.reason = StopReason::Cancelled;
      break;
    }
    if (length_ >= contract_.seq_len) {
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
