// What the engine reads from a .bmodel file itself, before (or without) bmrt.
//
// bmrt verifies a bmodel's flatbuffer, but when the check fails it logs the model's type,
// version, time and chip strings without checking that they exist, and a damaged file crashes the
// process there. So the header and those four strings of the root table are read here first,
// bounds-checked by hand (the layout is flatbuffers' wire format and libsophon's
// tpu-bmodel/model/model.fbs: table Model { type:0, version:1, time:2, chip:3, net:4, …,
// device_num:7 }); a file that passes this cannot crash bmrt's own verifier.
//
// The nets' inputs and outputs are read the same way (Net { name:0, parameter:3 },
// NetParameter { input_tensor:0, output_tensor:1 }, Tensor { name:0, data_type:1, shape:5 }), so
// the piece contract (contract.h) can be checked on the file alone: no libraries, no device.
#pragma once

#include <string>
#include <vector>

#include "contract.h"

namespace wct {

struct BmodelInfo {
  std::string chip;     // "BM1684X", …
  std::string version;  // the compiler's version string
  int device_num = 1;   // devices the bmodel was compiled to span
  int net_count = 0;
};

// Each throws ModelError naming the file and what is wrong with it.
BmodelInfo read_bmodel_info(const std::string& path);
// Stage 0 of every net, in the file's order, as the runtime describes a loaded net.
std::vector<NetDesc> read_bmodel_nets(const std::string& path);
// The contract checked on the file alone. Single-device bmodels only: how a bmodel compiled for
// several devices lays out each device's tensors is the runtime's to say, so those are checked
// when the engine loads them (a ModelError says so here).
Contract check_bmodel_file(const std::string& path);

}  // namespace wct
