// The bmrt engine: one .bmodel of the pieces in docs/tpu-pieces.md, its KV cache on the device.
//
// Data path of one decode step (only the token id comes back to the host):
//   token, position, mask row  --s2d-->  embed_cache  -->  block_cache_0 … block_cache_{L-1}
//   (each block's present_k/v row is copied d2d into the device cache)  -->  lm_head (top-1)
//   --d2s 4 bytes-->  token.
// Prefill runs `embed` + `block_i` over N padded positions and writes the caches directly;
// `block_chunk_i` appends K positions against the history (prefix reuse without a re-prefill), and
// `block_chunk{R}_i` R positions: `plan_feed` below picks the calls that cover the new tokens.
//
// The nets are checked against the piece contract (contract.h) as the runtime describes them, and
// bound through the resulting layout; the buffers are device_memory.h's. No pybind11 here
// (bind_engine.cpp adapts it); failures throw wct::Error subclasses.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "bmodel_file.h"
#include "bmrt_api.h"
#include "contract.h"
#include "device_memory.h"

namespace wct {

// How `feed` covers `count` new tokens after `length` cached ones: its calls in order. It minimises
// rows computed plus kCallRows per call. A call reads all of a layer's weights whatever its rows:
// on a BM1684X (64 GB/s, 16 TFLOPS f16) that read takes as long as about 64 rows of compute with
// int4 weights (250 with f16), so a few padding rows are cheaper than one more call, and a long
// prompt goes through big chunks rather than the N-row block. Without chunk sets: the N-row
// prefill from empty, else a decode step per token.
struct FeedCall {
  enum Kind { Prefill, Chunk, Decode } kind;
  int rows;  // rows the block nets compute: N, the chunk set's, or 1
};
constexpr int kCallRows = 64;
// Slots when asked for as many as fit (the language server's setting goes to 64), and the device
// memory left free after them: the runtime's own buffers and a second model's load need room.
constexpr int kMaxSlots = 64;
constexpr int64_t kFreeReserveBytes = 256ll << 20;
std::vector<FeedCall> plan_feed(int length, int count, int seq_len, const std::vector<int>& chunk_rows);
const char* feed_call_name(FeedCall::Kind kind);

enum class StopReason { MaxSteps, StopToken, Callback, Cancelled, Context };
const char* stop_reason_name(StopReason reason);

struct GenerateResult {
  std::vector<int> tokens;  // every token produced, the stopping one included
  StopReason reason = StopReason::MaxSteps;
};

struct EngineStats {
  int64_t tokens_fed = 0;  // real tokens run through the blocks
  int64_t block_rows = 0;  // positions the block nets computed, padding included (what a call costs)
  int64_t prefills = 0, chunks = 0, decodes = 0;
  int64_t verifies = 0;  // verify() calls
  int64_t launches = 0;
  // device_memory.h's Traffic: host -> device, device -> host, device -> device
  int64_t bytes_to_device = 0, bytes_from_device = 0, bytes_on_device = 0;
};

class Engine {
 public:
  // Opens `devices` (one handle each; the bmodel must span that many; empty = 0 … its device
  // count - 1), loads the bmodel, checks every net against the contract and allocates the
  // device buffers, KV caches for `slots` prefixes among them (0: as many as fit, see
  // slots_that_fit). Throws ModelError / DeviceError; nothing is left held when it throws.
  Engine(const Api& api, const std::string& bmodel_path, const std::vector<int>& devices, int slots = 1);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Frees device memory, the runtime and the device handles. Idempotent; later calls throw. From
  // another thread while generate() runs: that generation stops before its next step with a
  // DeviceError (the device went away under it), then the handles are freed.
  void close();
  // At process exit: like close(), but gives up after a moment if another thread holds the engine
  // (a Python thread stuck after interpreter shutdown must not hang the exit).
  void close_at_exit();
  bool closed() const { return closed_; }

  int seq_len() const { return contract_.seq_len; }      // N: the context
  int chunk_len() const { return contract_.chunk_len; }  // K, 0 when the bmodel has no block_chunk nets
  std::vector<int> chunk_rows() const;                    // every chunk set's rows, ascending
  int num_layers() const { return contract_.num_layers; }
  int hidden_size() const { return contract_.hidden; }
  int vocab_size() const { return contract_.vocab; }  // 0 when the bmodel has no lm_head_logits
  int device_count() const { return static_cast<int>(handles_.size()); }
  std::vector<std::string> net_names() const { return net_names_; }
  const BmodelInfo& bmodel_info() const { return info_; }

  int length() const { return length_; }  // of the selected slot
  void truncate(int length);  // forget positions from `length` on (they are masked, not cleared)

  // KV-cache slots: each a full-context K and V cache per layer in device memory, holding one
  // prefix. Every call feeds, reads and truncates the selected one; selecting another is a
  // pointer switch (nothing is copied, nothing crosses to the host), so an engine serving
  // several documents or clients keeps each one's prefix cached on the device.
  int slots() const { return static_cast<int>(lengths_.size()); }
  void select_slot(int slot);
  int selected_slot() const { return slot_; }
  int64_t slot_bytes() const;  // device memory one slot takes, summed over the devices

  // Append `ids` to the cache; return the greedy next token (lm_head) or the logits (lm_head_logits).
  int feed_greedy(const std::vector<int>& ids);
  std::vector<float> feed_logits(const std::vector<int>& ids);

  // Append all of `ids` and return the greedy token after each of them ([i] follows ids[..i]): a
  // draft checked in one pass. Through the smallest chunk set that holds them all (one launch per
  // layer over its rows), then `lm_head_chunk` once over the rows (one read of the head's weights,
  // 4 bytes back per row), or the lm_head once per row in a bmodel without it; one decode step
  // per token where no chunk set is big enough.
  std::vector<int> verify(const std::vector<int>& ids);

  // Feed `first`, then each greedy token, up to `max_steps` decode steps. After each step the
  // token goes to `on_token` (false = stop), then a token in `stop_ids` stops; `cancel()` from any
  // thread stops before the next step. The loop does no Python: the binding releases the GIL.
  GenerateResult generate(int first, int max_steps, const std::vector<int>& stop_ids,
                          const std::function<bool(int)>& on_token);
  void cancel() { cancel_.store(true); }  // lock-free: callable while generate() runs

  EngineStats stats() const;

 private:
  struct Launch {  // the tensors of one launch
    const NetLayout& net;
    std::vector<bm_tensor_t> in, out;
    explicit Launch(const NetLayout& n) : net(n), in(n.desc.inputs.size()), out(n.desc.outputs.size()) {}
  };
  struct DeviceBufs {  // one set per device
    Buf ids, pos, mask, hidden[2], present_k, present_v;
    std::vector<std::vector<Buf>> k_cache, v_cache;  // [slot][layer], N rows each
    Buf lm_in, lm_token, lm_logits, lm_tokens;
  };

  void open(const std::string& bmodel_path, const std::vector<int>& devices, int slots);
  void release();
  void allocate(int slots);
  int slots_that_fit(int wanted) const;  // -1: bmlib cannot say what is free
  int64_t slot_bytes_on(int dev) const;  // one slot's K and V caches on device `dev`
  bool allocate_slot(int slot);          // false: out of device memory (nothing of it kept)

  void bind_in(Launch& l, int slot, int dev, const Buf& buf) const;  // no-op for an absent input
  void bind_out(Launch& l, int slot, int dev, const Buf& buf) const;
  void launch(Launch& l);
  void write_mask(const NetLayout& net, std::vector<float>& mask);

  void write_inputs(const std::vector<int32_t>& ids, const std::vector<int32_t>& pos, const NetLayout& masked,
                    std::vector<float>& mask);
  void run_embed(const NetLayout& net);
  void run_blocks(const std::vector<NetLayout>& nets, int at, int keep);
  // Each leaves the last position's hidden state in hidden[cur_] row `last_row_`.
  void prefill(const std::vector<int>& ids);
  void chunk(const int* ids, int count, const ChunkSet& set);
  void decode(int token);
  void check_ids(const std::vector<int>& ids) const;  // fits the context, ids in the vocabulary
  void feed(const std::vector<int>& ids);
  void run_head(const NetLayout& net, Buf DeviceBufs::*output);
  int head_token();
  std::vector<int> head_tokens(int rows);  // lm_head_chunk over the first rows of hidden[cur_]
  std::vector<float> head_logits();
  void require_open() const;

  const Api& api_;
  std::vector<bm_handle_t> handles_;
  DeviceMemory memory_{api_, handles_};  // after handles_: it refers to them
  void* bmrt_ = nullptr;
  bool closed_ = true;
  BmodelInfo info_;
  std::vector<std::string> net_names_;
  Contract contract_;
  std::vector<DeviceBufs> dev_;

  int length_ = 0;            // the selected slot's cached positions
  int slot_ = 0;              // the selected slot
  std::vector<int> lengths_;  // every slot's, the selected one's kept in length_ meanwhile
  int cur_ = 0, last_row_ = 0;
  EngineStats stats_;
  std::atomic<bool> cancel_{false};
  std::atomic<bool> closing_{false};  // close() called: a running generate() fails instead of finishing
  std::timed_mutex mutex_;  // one call at a time; cancel() does not take it
};

}  // namespace wct
