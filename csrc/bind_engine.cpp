// pybind11 adapters for errors.h, runtime.h, bmodel_file.h (with the contract check) and engine.h;
// the only file besides module.cpp that knows about Python.
#include <pybind11/functional.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bmodel_file.h"
#include "engine.h"
#include "errors.h"
#include "runtime.h"

namespace py = pybind11;

namespace {

const wct::Api& loaded_api() {
  if (wct::loaded_from().empty())
    throw wct::LibraryError("the Sophgo runtime is not loaded: call load_libraries(dirs) first");
  return wct::load_api({});
}

}  // namespace

void register_errors(py::module_& m) {
  // Base first: pybind11 tries translators newest first, so the subclasses must come later.
  // register_exception keeps each type in storage that is never destroyed (a function-local static
  // py::exception would drop its reference at exit without the GIL), and translates wct::Error
  // itself too, so a plain Error reaches Python as _bmrt.Error, not a bare RuntimeError.
  auto& error = py::register_exception<wct::Error>(m, "Error", PyExc_RuntimeError);
  py::register_exception<wct::LibraryError>(m, "LibraryError", error);
  py::register_exception<wct::ModelError>(m, "ModelError", error);
  py::register_exception<wct::DeviceError>(m, "DeviceError", error);
}

void register_runtime(py::module_& m) {
  m.def("load_libraries", [](const std::vector<std::string>& dirs) {
        wct::load_api(dirs);
        return wct::loaded_from();
      }, py::arg("dirs"),
      "Load libbmlib + libbmrt from the first directory of `dirs` that has both; returns it. Once "
      "loaded, the process keeps that copy (later calls return the same directory).");
  m.def("loaded_from", &wct::loaded_from, "The directory the libraries came from, or ''.");
  m.def("check_devices", [](const std::vector<int>& devices) {
        const wct::Api& api = loaded_api();
        py::gil_scoped_release release;
        for (int id : devices) api.bm_dev_free(wct::open_device(api, id));
      }, py::arg("devices"),
      "Open and free each device; raises DeviceError. The cmodel's bmlib exits the process when it "
      "cannot start its simulator, so callers run this in a child process first.");
}

void register_bmodel(py::module_& m) {
  m.def("inspect_bmodel", [](const std::string& path) {
        wct::BmodelInfo info = wct::read_bmodel_info(path);
        py::dict d;
        d["chip"] = info.chip;
        d["version"] = info.version;
        d["device_num"] = info.device_num;
        d["net_count"] = info.net_count;
        return d;
      }, py::arg("path"), "Header facts of a .bmodel (no libraries needed); raises ModelError if damaged.");
  m.def("check_bmodel", [](const std::string& path) {
        wct::Contract c = wct::check_bmodel_file(path);
        py::dict d;
        d["seq_len"] = c.seq_len;
        d["chunk_len"] = c.chunk_len;
        py::list rows;
        for (const wct::ChunkSet& set : c.chunks) rows.append(set.rows);
        d["chunk_rows"] = rows;
        d["num_layers"] = c.num_layers;
        d["hidden_size"] = c.hidden;
        d["vocab_size"] = c.vocab;
        d["kv_row_bytes"] = c.kv_row_bytes[0];
        return d;
      }, py::arg("path"),
      "The piece contract (docs/tpu-pieces.md) checked on the file alone, no libraries or device; "
      "raises ModelError naming the net and what is wrong.");
}

void register_engine(py::module_& m) {
  m.def("plan_feed", [](int length, int count, int seq_len, const std::vector<int>& chunk_rows) {
        py::list calls;
        for (const wct::FeedCall& call : wct::plan_feed(length, count, seq_len, chunk_rows))
          calls.append(py::make_tuple(wct::feed_call_name(call.kind), call.rows));
        return calls;
      }, py::arg("length"), py::arg("count"), py::arg("seq_len"), py::arg("chunk_rows"),
      "The calls the engine makes to feed `count` tokens after `length` cached ones: (kind, rows) "
      "with kind prefill | chunk | decode. Pure: no libraries, no device.");
  m.attr("CALL_ROWS") = wct::kCallRows;
  py::class_<wct::EngineStats>(m, "EngineStats")
      .def_readonly("tokens_fed", &wct::EngineStats::tokens_fed)
      .def_readonly("block_rows", &wct::EngineStats::block_rows)
      .def_readonly("prefills", &wct::EngineStats::prefills)
      .def_readonly("chunks", &wct::EngineStats::chunks)
      .def_readonly("decodes", &wct::EngineStats::decodes)
      .def_readonly("verifies", &wct::EngineStats::verifies)
      .def_readonly("launches", &wct::EngineStats::launches)
      .def_readonly("bytes_to_device", &wct::EngineStats::bytes_to_device)
      .def_readonly("bytes_from_device", &wct::EngineStats::bytes_from_device)
      .def_readonly("bytes_on_device", &wct::EngineStats::bytes_on_device);

  py::class_<wct::Engine>(m, "Engine")
      .def(py::init([](const std::string& bmodel, const std::vector<int>& devices, int slots) {
             return new wct::Engine(loaded_api(), bmodel, devices, slots);
           }),
           py::arg("bmodel"), py::arg("devices") = std::vector<int>{}, py::arg("slots") = 1,
           py::call_guard<py::gil_scoped_release>())
      .def("close", &wct::Engine::close, py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("closed", &wct::Engine::closed)
      .def_property_readonly("seq_len", &wct::Engine::seq_len)
      .def_property_readonly("chunk_len", &wct::Engine::chunk_len)
      .def_property_readonly("chunk_rows", &wct::Engine::chunk_rows)
      .def_property_readonly("num_layers", &wct::Engine::num_layers)
      .def_property_readonly("hidden_size", &wct::Engine::hidden_size)
      .def_property_readonly("vocab_size", &wct::Engine::vocab_size)
      .def_property_readonly("device_count", &wct::Engine::device_count)
      .def_property_readonly("net_names", &wct::Engine::net_names)
      .def_property_readonly("length", &wct::Engine::length)
      .def_property_readonly("slots", &wct::Engine::slots)
      .def_property_readonly("selected_slot", &wct::Engine::selected_slot)
      .def_property_readonly("slot_bytes", &wct::Engine::slot_bytes)
      .def("select_slot", &wct::Engine::select_slot, py::arg("slot"))
      .def_property_readonly("stats", &wct::Engine::stats)
      .def("truncate", &wct::Engine::truncate, py::arg("length"))
      .def("feed_greedy", &wct::Engine::feed_greedy, py::arg("ids"), py::call_guard<py::gil_scoped_release>())
      .def("verify", &wct::Engine::verify, py::arg("ids"), py::call_guard<py::gil_scoped_release>())
      .def("feed_logits", [](wct::Engine& e, const std::vector<int>& ids) {
             std::vector<float> logits;
             {
               py::gil_scoped_release release;
               logits = e.feed_logits(ids);
             }
             return py::bytes(reinterpret_cast<const char*>(logits.data()), logits.size() * sizeof(float));
           }, py::arg("ids"), "Logits of the last position as float32 bytes (numpy.frombuffer).")
      .def("generate", [](wct::Engine& e, int first, int max_steps, const std::vector<int>& stop_ids,
                          const std::function<bool(int)>& on_token) {
             wct::GenerateResult r;
             {
               py::gil_scoped_release release;  // the callback's wrapper takes the GIL back per token
               r = e.generate(first, max_steps, stop_ids, on_token);
             }
             return py::make_tuple(r.tokens, wct::stop_reason_name(r.reason));
           }, py::arg("first"), py::arg("max_steps"), py::arg("stop_ids") = std::vector<int>{},
           py::arg("on_token") = nullptr)
      .def("cancel", &wct::Engine::cancel);
}
