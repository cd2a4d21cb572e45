// The piece contract of docs/tpu-pieces.md: which nets a bmodel must have, their inputs and
// outputs, and the shapes and element types that must agree between them.
//
// The check runs on plain descriptions of the nets, from either source: the bmodel file itself
// (bmodel_file.h: no libraries, no device, so tests and the backend can check a file before the
// simulator or a card sees it) or the runtime that loaded it (describe_net: what the engine binds).
// One check, two sources.
#pragma once

#include <string>
#include <vector>

#include "bmrt_api.h"

namespace wct {

struct TensorDesc {
  std::string name;
  bm_data_type_t dtype = BM_FLOAT32;
  bm_shape_t shape{};
};

// One net at stage 0. A net that spans D devices lists its inputs (and outputs) D times, device by
// device, as bmrt does.
struct NetDesc {
  std::string name;
  std::vector<TensorDesc> inputs, outputs;
};

// The runtime's description of a loaded net. Throws ModelError when it has no stage.
NetDesc describe_net(const bm_net_info_t* info, const std::string& name);

// A net as the engine binds it: the contract's input/output slots mapped to the net's own.
struct NetLayout {
  NetDesc desc;      // empty name: an optional net the bmodel does not have
  int groups = 1;    // devices the net spans: its inputs/outputs repeat once per device
  int in_per = 0, out_per = 0;
  // Contract slot (the order in docs/tpu-pieces.md) -> index within one device's group, or -1
  // for an input the net does not take (GPTBigCode blocks take no position_ids).
  std::vector<int> in_slot, out_slot;

  bool present() const { return !desc.name.empty(); }
  bool has_input(int slot) const { return in_slot[slot] >= 0; }
  int in_index(int slot, int group) const { return group * in_per + in_slot[slot]; }
  int out_index(int slot, int group) const { return group * out_per + out_slot[slot]; }
  const TensorDesc& in(int slot, int group) const { return desc.inputs[in_index(slot, group)]; }
  const TensorDesc& out(int slot, int group) const { return desc.outputs[out_index(slot, group)]; }
};

// Contract slots. Embed: input_ids, position_ids -> hidden. Blocks: hidden, position_ids,
// attention_mask[, past_k, past_v] -> hidden_out, present_k, present_v. Heads: hidden -> token | logits.
enum EmbedIn { kIds = 0, kPositions = 1 };
enum BlockIn { kHidden = 0, kBlockPositions = 1, kMask = 2, kPastK = 3, kPastV = 4 };
enum BlockOut { kHiddenOut = 0, kPresentK = 1, kPresentV = 2 };

// Block nets over `rows` new positions against the cached history, one per layer: `block_chunk_{i}`
// (K rows, the keystroke chunk) and any `block_chunk{R}_{i}` (R rows, for prefill in steps).
struct ChunkSet {
  int rows = 0;
  std::vector<NetLayout> blocks;
};

struct Contract {
  NetLayout embed, embed_cache, lm_head, lm_logits;  // lm_logits optional (present() false)
  NetLayout lm_rows;  // lm_head_chunk, optional: the top-1 of each of head_rows rows in one launch
  int head_rows = 0;  // its rows, 0 without it
  std::vector<NetLayout> blocks, blocks_cache;
  std::vector<ChunkSet> chunks;  // ascending rows; empty: no chunk nets
  int devices = 1;
  int seq_len = 0;    // N: the context
  int chunk_len = 0;  // K: the rows of block_chunk_{i}, 0 without them
  int num_layers = 0;
  int hidden = 0;
  int vocab = 0;  // 0 without lm_head_logits
  size_t hidden_row_bytes = 0;       // one position of the hidden state
  std::vector<size_t> kv_row_bytes;  // per device: one position of one layer's K (or V)
};

// Checks `nets` (the bmodel's, any order) for an engine on `devices` devices. Throws ModelError
// naming the net and what is wrong.
Contract check_contract(const std::vector<NetDesc>& nets, int devices);

}  // namespace wct
