// The contract check (see contract.h), on net descriptions from the file or the runtime.
#include "contract.h"

#include <algorithm>
#include <utility>

#include "dtypes.h"
#include "errors.h"

namespace wct {
namespace {

const NetDesc* find(const std::vector<NetDesc>& nets, const std::string& name) {
  for (const NetDesc& net : nets)
    if (net.name == name) return &net;
  return nullptr;
}

// `all` slots -> indices within one group: by name when the compiler kept the contract's names,
// else by position among the inputs the net takes (`have`).
std::vector<int> map_slots(const std::vector<std::string>& all, const std::vector<std::string>& have,
                           const std::vector<TensorDesc>& tensors, int per) {
  std::vector<int> slot(all.size(), -1);
  int found = 0;
  for (size_t s = 0; s < all.size(); ++s)
    for (int i = 0; i < per; ++i)
      if (all[s] == tensors[i].name) slot[s] = i, ++found;
  if (found != per) {
    std::fill(slot.begin(), slot.end(), -1);
    for (size_t s = 0, i = 0; s < all.size(); ++s)
      if (std::find(have.begin(), have.end(), all[s]) != have.end()) slot[s] = static_cast<int>(i++);
  }
  return slot;
}

// The net `name` laid out against the contract's `inputs` (of which `optional` may be missing)
// and `outputs`. An absent net: ModelError when `required`, else an empty layout.
NetLayout layout(const std::vector<NetDesc>& nets, const std::string& name, const std::vector<std::string>& inputs,
                 const std::string& optional, const std::vector<std::string>& outputs, bool required) {
  NetLayout net;
  const NetDesc* desc = find(nets, name);
  if (!desc) {
    if (!required) return net;
    std::string have;
    for (const NetDesc& n : nets) have += (have.empty() ? "" : ", ") + n.name;
    throw ModelError("the bmodel has no net '" + name + "' (it has: " + have + "); see docs/tpu-pieces.md");
  }
  net.desc = *desc;
  net.out_per = static_cast<int>(outputs.size());
  const int in_num = static_cast<int>(desc->inputs.size()), out_num = static_cast<int>(desc->outputs.size());
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
  net.in_slot = map_slots(inputs, present, desc->inputs, net.in_per);
  net.out_slot = map_slots(outputs, outputs, desc->outputs, net.out_per);
  return net;
}

[[noreturn]] void fail(const NetLayout& n, const std::string& what) {
  throw ModelError("net '" + n.desc.name + "': " + what + " (docs/tpu-pieces.md)");
}

size_t bytes_of(const TensorDesc& t) { return element_count(t.shape) * dtype_size(t.dtype); }
const TensorDesc& tensor(const NetLayout& n, bool input, int slot, int g) { return input ? n.in(slot, g) : n.out(slot, g); }

void expect_elems(const NetLayout& n, bool input, int slot, size_t want, const char* what) {
  for (int g = 0; g < n.groups; ++g) {
    const bm_shape_t& s = tensor(n, input, slot, g).shape;
    if (element_count(s) != want)
      fail(n, std::string(what) + " has shape " + shape_str(s) + ", expected " + std::to_string(want) + " elements");
  }
}

void expect_int(const NetLayout& n, int slot, const char* what) {
  for (int g = 0; g < n.groups; ++g) {
    bm_data_type_t t = n.in(slot, g).dtype;
    if (t != BM_INT32 && t != BM_UINT32) fail(n, std::string(what) + " is " + dtype_name(t) + ", expected i32");
  }
}

void expect_float(const NetLayout& n, bool input, int slot, const char* what) {
  bm_data_type_t t = tensor(n, input, slot, 0).dtype;
  if (t != BM_FLOAT32 && t != BM_FLOAT16 && t != BM_BFLOAT16)
    fail(n, std::string(what) + " is " + dtype_name(t) + ", expected f32, f16 or bf16");
}

void expect_devices(const NetLayout& n, int devices) {
  if (n.groups != devices)
    fail(n, "spans " + std::to_string(n.groups) + " device(s), the engine opened " + std::to_string(devices));
}

}  // namespace

NetDesc describe_net(const bm_net_info_t* info, const std::string& name) {
  if (!info || info->stage_num < 1) throw ModelError("net '" + name + "': no network info");
  NetDesc net;
  net.name = name;
  for (int i = 0; i < info->input_num; ++i)
    net.inputs.push_back({info->input_names && info->input_names[i] ? info->input_names[i] : "",
                          info->input_dtypes[i], info->stages[0].input_shapes[i]});
  for (int i = 0; i < info->output_num; ++i)
    net.outputs.push_back({info->output_names && info->output_names[i] ? info->output_names[i] : "",
                           info->output_dtypes[i], info->stages[0].output_shapes[i]});
  return net;
}

Contract check_contract(const std::vector<NetDesc>& nets, int devices) {
  Contract c;
  const int D = c.devices = devices;
  const std::vector<std::string> ids_pos = {"input_ids", "position_ids"};
  // position_ids is optional: a Llama embed does not use it (RoPE is in the blocks) and tpu-mlir
  // drops an unused input.
  c.embed = layout(nets, "embed", ids_pos, "position_ids", {"hidden"}, true);
  c.embed_cache = layout(nets, "embed_cache", ids_pos, "position_ids", {"hidden"}, true);
  c.lm_head = layout(nets, "lm_head", {"hidden"}, "", {"token"}, true);
  c.lm_logits = layout(nets, "lm_head_logits", {"hidden"}, "", {"logits"}, false);
  c.lm_rows = layout(nets, "lm_head_chunk", {"hidden"}, "", {"tokens"}, false);
  while (find(nets, "block_" + std::to_string(c.num_layers))) ++c.num_layers;
  if (c.num_layers == 0) throw ModelError("the bmodel has no block_0 net; see docs/tpu-pieces.md");
  const std::vector<std::string> kv_out = {"hidden_out", "present_k", "present_v"};
  const std::vector<std::string> past_in = {"hidden", "position_ids", "attention_mask", "past_k", "past_v"};
  for (int i = 0; i < c.num_layers; ++i) {
    const std::string s = std::to_string(i);
    c.blocks.push_back(layout(nets, "block_" + s, {"hidden", "position_ids", "attention_mask"}, "position_ids", kv_out, true));
    c.blocks_cache.push_back(layout(nets, "block_cache_" + s, past_in, "position_ids", kv_out, true));
  }
  // Chunk sets: "block_chunk_" (K rows) and each "block_chunk<R>_", known by their layer-0 net.
  std::vector<std::pair<std::string, int>> chunk_prefixes;  // (prefix, rows named; 0 = read from the net)
  for (const NetDesc& n : nets) {
    const std::string& name = n.name;  // block_chunk_0, block_chunk64_0, …
    const std::string head = "block_chunk";
    if (name.size() < head.size() + 2 || name.compare(0, head.size(), head) || name.compare(name.size() - 2, 2, "_0"))
      continue;
    const std::string rows = name.substr(head.size(), name.size() - head.size() - 2);
    if (rows.empty()) chunk_prefixes.push_back({"block_chunk_", 0});
    else if (rows.find_first_not_of("0123456789") == std::string::npos && rows.size() < 7)
      chunk_prefixes.push_back({head + rows + "_", std::stoi(rows)});
  }
  for (const auto& [prefix, named_rows] : chunk_prefixes) {
    ChunkSet set;
    set.rows = named_rows;
    for (int i = 0; i < c.num_layers; ++i)
      set.blocks.push_back(layout(nets, prefix + std::to_string(i), past_in, "position_ids", kv_out, true));
    c.chunks.push_back(std::move(set));
  }

  // Shapes, from stage 0 of each net and checked against each other.
  expect_devices(c.embed, D);
  expect_devices(c.embed_cache, D);
  if (c.lm_head.groups != 1 && c.lm_head.groups != D) fail(c.lm_head, "spans an unexpected number of devices");

  const bm_shape_t& ids = c.embed.in(kIds, 0).shape;
  c.seq_len = ids.num_dims ? ids.dims[ids.num_dims - 1] : 0;
  const size_t N = static_cast<size_t>(c.seq_len);
  if (N < 2) fail(c.embed, "input_ids has shape " + shape_str(ids) + ", expected [1,N]");
  expect_elems(c.embed, true, kIds, N, "input_ids");
  expect_int(c.embed, kIds, "input_ids");
  if (c.embed.has_input(kPositions)) {
    expect_elems(c.embed, true, kPositions, N, "position_ids");
    expect_int(c.embed, kPositions, "position_ids");
  }
  const TensorDesc& embed_out = c.embed.out(0, 0);
  const size_t hidden_bytes = bytes_of(embed_out);
  if (hidden_bytes % N) fail(c.embed, "hidden is not N rows");
  c.hidden_row_bytes = hidden_bytes / N;
  const bm_data_type_t hidden_type = embed_out.dtype;
  c.hidden = static_cast<int>(c.hidden_row_bytes / dtype_size(hidden_type));
  const size_t H = static_cast<size_t>(c.hidden);
  auto expect_hidden = [&](const NetLayout& n, bool input, int slot, size_t rows) {
    expect_elems(n, input, slot, rows * H, input ? "hidden" : "hidden_out");
    for (int g = 0; g < n.groups; ++g) {
      bm_data_type_t t = tensor(n, input, slot, g).dtype;
      if (t != hidden_type) fail(n, std::string("hidden is ") + dtype_name(t) + ", embed gives " + dtype_name(hidden_type));
    }
  };
  expect_elems(c.embed_cache, true, kIds, 1, "input_ids");
  expect_int(c.embed_cache, kIds, "input_ids");
  if (c.embed_cache.has_input(kPositions)) expect_int(c.embed_cache, kPositions, "position_ids");
  expect_hidden(c.embed_cache, false, 0, 1);
  expect_hidden(c.lm_head, true, 0, 1);
  expect_elems(c.lm_head, false, 0, 1, "token");
  if (c.lm_rows.present()) {
    if (c.lm_rows.groups != c.lm_head.groups) fail(c.lm_rows, "spans other devices than lm_head");
    c.head_rows = static_cast<int>(element_count(c.lm_rows.out(0, 0).shape));
    if (c.head_rows < 1 || static_cast<size_t>(c.head_rows) > N)
      fail(c.lm_rows, "tokens has shape " + shape_str(c.lm_rows.out(0, 0).shape) + ", expected [1,K]");
    expect_hidden(c.lm_rows, true, 0, static_cast<size_t>(c.head_rows));
  }
  if (c.lm_logits.present()) {
    expect_hidden(c.lm_logits, true, 0, 1);
    c.vocab = static_cast<int>(element_count(c.lm_logits.out(0, 0).shape));
    expect_float(c.lm_logits, false, 0, "logits");
  }

  for (ChunkSet& set : c.chunks) {
    const NetLayout& first = set.blocks[0];
    const bm_shape_t& hid = first.in(kHidden, 0).shape;
    const int rows = static_cast<int>(element_count(hid) / H);
    if (rows < 1 || static_cast<size_t>(rows) > N) fail(first, "hidden has shape " + shape_str(hid));
    if (set.rows && set.rows != rows)
      fail(first, "is named for " + std::to_string(set.rows) + " rows, its hidden has " + std::to_string(rows));
    if (!set.rows) c.chunk_len = rows;  // block_chunk_{i}: K
    set.rows = rows;
  }
  std::sort(c.chunks.begin(), c.chunks.end(), [](const ChunkSet& a, const ChunkSet& b) { return a.rows < b.rows; });
  for (size_t j = 1; j < c.chunks.size(); ++j)
    if (c.chunks[j].rows == c.chunks[j - 1].rows)
      fail(c.chunks[j].blocks[0], "has the rows of " + c.chunks[j - 1].blocks[0].desc.name + " (" +
                                      std::to_string(c.chunks[j].rows) + ")");
  c.kv_row_bytes.assign(D, 0);
  expect_devices(c.blocks[0], D);
  const bm_data_type_t kv_type = c.blocks[0].out(kPresentK, 0).dtype;
  for (int g = 0; g < D; ++g) {
    const size_t bytes = bytes_of(c.blocks[0].out(kPresentK, g));
    if (bytes % N) fail(c.blocks[0], "present_k is not N rows");
    c.kv_row_bytes[g] = bytes / N;
  }
  auto expect_kv = [&](const NetLayout& n, bool input, int slot, size_t rows, const char* what) {
    for (int g = 0; g < D; ++g) {
      const TensorDesc& t = tensor(n, input, slot, g);
      const size_t bytes = bytes_of(t);
      if (t.dtype != kv_type || bytes != rows * c.kv_row_bytes[g])
        fail(n, std::string(what) + " is " + std::to_string(bytes) + " bytes of " + dtype_name(t.dtype) + ", expected " +
                    std::to_string(rows) + " rows of " + std::to_string(c.kv_row_bytes[g]) + " bytes of " +
                    dtype_name(kv_type));
    }
  };
  for (int i = 0; i < c.num_layers; ++i) {
    const NetLayout& b = c.blocks[i];
    expect_devices(b, D);
    expect_devices(c.blocks_cache[i], D);
    expect_hidden(b, true, kHidden, N);
    expect_hidden(b, false, kHiddenOut, N);
    if (b.has_input(kBlockPositions)) {
      expect_elems(b, true, kBlockPositions, N, "position_ids");
      expect_int(b, kBlockPositions, "position_ids");
    }
    expect_elems(b, true, kMask, N * N, "attention_mask");
    expect_float(b, true, kMask, "attention_mask");
    expect_kv(b, false, kPresentK, N, "present_k");
    expect_kv(b, false, kPresentV, N, "present_v");
    std::vector<std::pair<const NetLayout*, size_t>> incremental = {{&c.blocks_cache[i], 1}};
    for (const ChunkSet& set : c.chunks) incremental.push_back({&set.blocks[i], static_cast<size_t>(set.rows)});
    for (auto [n, rows] : incremental) {
      expect_devices(*n, D);
      expect_hidden(*n, true, kHidden, rows);
      expect_hidden(*n, false, kHiddenOut, rows);
      if (n->has_input(kBlockPositions)) {
        expect_elems(*n, true, kBlockPositions, rows, "position_ids");
        expect_int(*n, kBlockPositions, "position_ids");
      }
      expect_elems(*n, true, kMask, rows * (N + rows), "attention_mask");
      expect_float(*n, true, kMask, "attention_mask");
      expect_kv(*n, true, kPastK, N, "past_k");
      expect_kv(*n, true, kPastV, N, "past_v");
      expect_kv(*n, false, kPresentK, rows, "present_k");
      expect_kv(*n, false, kPresentV, rows, "present_v");
    }
  }
  return c;
}

}  // namespace wct
