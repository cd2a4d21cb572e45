// What the engine checks in a .bmodel file before bmrt sees it.
//
// bmrt verifies a bmodel's flatbuffer, but when the check fails it logs the model's type,
// version, time and chip strings without checking that they exist, and a damaged file crashes the
// process there. So the header and those four strings of the root table are read here first,
// bounds-checked by hand (the layout is flatbuffers' wire format and libsophon's
// tpu-bmodel/model/model.fbs: table Model { type:0, version:1, time:2, chip:3, net:4, …,
// device_num:7 }); a file that passes this cannot crash bmrt's own verifier.
#pragma once

#include <string>

namespace wct {

struct BmodelInfo {
  std::string chip;     // "BM1684X", …
  std::string version;  // the compiler's version string
  int device_num = 1;   // devices the bmodel was compiled to span
  int net_count = 0;
};

// Throws ModelError naming the file and what is wrong with it.
BmodelInfo read_bmodel_info(const std::string& path);

}  // namespace wct
