#include "models/bnb_checkpoint.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "models/export.h"
#include "models/gemma2.h"

namespace models {
namespace fs = std::filesystem;
using engine::DType;
using engine::Error;
using engine::Tensor;
using engine::TensorView;

namespace {

const char* const kQuantStateNf4 = ".quant_state.bitsandbytes__nf4";
const char* const kQuantStateFp4 = ".quant_state.bitsandbytes__fp4";

// The tensor's bytes as a string (the quant_state JSON).
std::string tensor_bytes(const engine::SafetensorsCheckpoint& ck, const std::string& name) {
  const engine::SafetensorsEntry& e = ck.entry(name);
  ENGINE_CHECK(e.dtype_str == "U8", name, ": dtype ", e.dtype_str, ", expected U8 (the bytes of a JSON object)");
  return std::string(static_cast<const char*>(e.data), e.nbytes);
}

// A 1-D view of a checkpoint tensor of `dtype` and `numel` elements (bnb stores the packed weight as (n/2, 1)).
TensorView flat_view(const engine::SafetensorsCheckpoint& ck, const std::string& weight, const std::string& name,
                     DType dtype, int64_t numel, const char* what) {
  ENGINE_CHECK(ck.contains(name), weight, ": bitsandbytes 4-bit weight without its tensor ", name, " (", what, ")");
  const TensorView v = ck.view(name);
  ENGINE_CHECK(v.dtype == dtype && v.numel() == numel, "tensor ", name, " (", what, ") has dtype ",
               engine::dtype_name(v.dtype), " and shape ", v.shape.str(), ", expected ", engine::dtype_name(dtype),
               " with ", numel, " elements");
  return v.reshape({numel});
}

// A table stored in the checkpoint must equal ours bit for bit (bnb's maps are fixed; another map would be a
// different quantization).
void check_table(const TensorView& v, const uint32_t* want, const std::string& name) {
  for (int64_t i = 0; i < v.numel(); ++i) {
    uint32_t got;
    std::memcpy(&got, static_cast<const char*>(v.data) + 4 * i, 4);  // the mapping need not be 4-byte aligned
    ENGINE_CHECK(got == want[i], "tensor ", name, ": entry ", i, " is ", engine::bits_f32(got), " (0x", std::hex,
                 got, "), expected bitsandbytes' ", engine::bits_f32(want[i]), " (0x", want[i], std::dec, ")");
  }
}

}  // namespace

const char* torch_dtype_name(DType t) {
  return t == DType::kBF16 ? "bfloat16" : t == DType::kF16 ? "float16" : "float32";
}

BnbQuantState parse_bnb_quant_state(const std::string& bytes, const std::string& what) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(bytes);
  } catch (const nlohmann::json::exception& e) {
    throw Error(what + ": not valid JSON (" + std::to_string(bytes.size()) + " bytes; truncated?): " + e.what());
  }
  ENGINE_CHECK(j.is_object(), what, ": not a JSON object: ", j.dump());
  auto str = [&](const char* k) {
    ENGINE_CHECK(j.contains(k) && j[k].is_string(), what, ": \"", k, "\" missing or not a string in ", j.dump());
    return j[k].get<std::string>();
  };
  auto integer = [&](const char* k) {
    ENGINE_CHECK(j.contains(k) && j[k].is_number_integer(), what, ": \"", k, "\" missing or not an integer in ",
                 j.dump());
    return j[k].get<int64_t>();
  };
  BnbQuantState s;
  s.quant_type = str("quant_type");
  s.blocksize = integer("blocksize");
  s.dtype = str("dtype");
  ENGINE_CHECK(j.contains("shape") && j["shape"].is_array(), what, ": \"shape\" missing or not a list in ", j.dump());
  for (const auto& d : j["shape"]) {
    ENGINE_CHECK(d.is_number_integer() && d.get<int64_t>() >= 0, what, ": bad \"shape\" ", j["shape"].dump());
    s.shape.push_back(d.get<int64_t>());
  }
  s.nested = j.contains("nested_offset") || j.contains("nested_blocksize") || j.contains("nested_dtype");
  if (s.nested) {
    s.nested_blocksize = integer("nested_blocksize");
    s.nested_dtype = str("nested_dtype");
    ENGINE_CHECK(j.contains("nested_offset") && j["nested_offset"].is_number(), what,
                 ": \"nested_offset\" missing or not a number in ", j.dump());
    s.nested_offset = float(j["nested_offset"].get<double>());  // as bnb: float(...), then an f32 tensor
  }
  return s;
}

std::string bnb_quant_state_json(const BnbQuantState& s) {
  nlohmann::ordered_json j;
  j["quant_type"] = s.quant_type;
  j["blocksize"] = s.blocksize;
  j["dtype"] = s.dtype;
  j["shape"] = s.shape;
  if (s.nested) {
    j["nested_blocksize"] = s.nested_blocksize;
    j["nested_dtype"] = s.nested_dtype;
    j["nested_offset"] = double(s.nested_offset);  // Python's offset.item(): the f32 value as a double
  }
  return j.dump();
}

std::vector<std::string> bnb_tensor_names(const std::string& weight) {
  return {weight, weight + ".absmax", weight + ".quant_map", weight + ".nested_absmax", weight + ".nested_quant_map",
          weight + kQuantStateNf4};
}

bool bnb_quantized(const engine::SafetensorsCheckpoint& ck, const std::string& weight) {
  if (ck.contains(weight) && ck.entry(weight).dtype_str == "U8") return true;
  for (const std::string& n : bnb_tensor_names(weight))
    if (n != weight && ck.contains(n)) return true;
  return ck.contains(weight + kQuantStateFp4);
}

BnbQuantState read_bnb_quant_state(const engine::SafetensorsCheckpoint& ck, const std::string& weight) {
  ENGINE_CHECK(!ck.contains(weight + kQuantStateFp4), weight, ": bitsandbytes quant_type fp4 is not supported ",
               "(only nf4; found ", weight, kQuantStateFp4, ")");
  const std::string qs_name = weight + kQuantStateNf4;
  ENGINE_CHECK(ck.contains(qs_name), weight, ": bitsandbytes 4-bit weight without its quant state ", qs_name);
  const BnbQuantState s = parse_bnb_quant_state(tensor_bytes(ck, qs_name), qs_name);
  ENGINE_CHECK(s.quant_type != "fp4", qs_name, ": quant_type fp4 is not supported (only nf4)");
  ENGINE_CHECK(s.quant_type == "nf4", qs_name, ": quant_type \"", s.quant_type, "\", expected \"nf4\"");
  ENGINE_CHECK(s.blocksize == ops::kNf4Block, qs_name, ": blocksize ", s.blocksize, " is not supported (the NF4 ",
               "kernels use ", ops::kNf4Block, ", bitsandbytes' default)");
  ENGINE_CHECK(s.nested, qs_name, ": not double-quantized (bnb_4bit_use_double_quant=False); only double-quantized ",
               "checkpoints are supported (ops/nf4.h stores 8-bit absmax codes)");
  ENGINE_CHECK(s.nested_blocksize == ops::kNf4Block2, qs_name, ": nested_blocksize ", s.nested_blocksize,
               " is not supported (only ", ops::kNf4Block2, ")");
  ENGINE_CHECK(s.nested_dtype == "float32", qs_name, ": nested_dtype \"", s.nested_dtype, "\", expected \"float32\"");
  ENGINE_CHECK(s.dtype == "bfloat16" || s.dtype == "float16" || s.dtype == "float32", qs_name, ": dtype \"", s.dtype,
               "\", expected bfloat16, float16 or float32");
  ENGINE_CHECK(std::isfinite(s.nested_offset), qs_name, ": nested_offset is not finite");
  return s;
}

ops::Nf4Storage load_bnb_nf4(engine::Engine& eng, const engine::SafetensorsCheckpoint& ck, const std::string& weight,
                             int64_t rows, int64_t cols) {
  const BnbQuantState s = read_bnb_quant_state(ck, weight);
  ENGINE_CHECK(s.shape.size() == 2 && s.shape[0] == rows && s.shape[1] == cols, weight, kQuantStateNf4,
               ": shape ", nlohmann::json(s.shape).dump(), " does not match config.json's (", rows, ",", cols, ")");
  const int64_t n = rows * cols;
  ENGINE_CHECK(ck.contains(weight), weight, ": missing (its quant state is there, the packed weight is not)");
  ENGINE_CHECK(ck.view(weight).dtype == DType::kU8, "tensor ", weight, " has dtype ",
               engine::dtype_name(ck.view(weight).dtype), "; a bitsandbytes 4-bit weight must be uint8 ",
               "(bnb_4bit_quant_storage other than uint8 is not supported)");
  const TensorView packed = flat_view(ck, weight, weight, DType::kU8, ops::nf4_packed_bytes(n), "packed 4-bit codes");
  const TensorView absmax =
      flat_view(ck, weight, weight + ".absmax", DType::kU8, ops::nf4_blocks(n), "8-bit absmax codes");
  const TensorView absmax2 =
      flat_view(ck, weight, weight + ".nested_absmax", DType::kF32, ops::nf4_blocks2(n), "nested absmax");
  check_table(flat_view(ck, weight, weight + ".quant_map", DType::kF32, 16, "NF4 table"), ops::kNf4CodeBits,
              weight + ".quant_map");
  check_table(flat_view(ck, weight, weight + ".nested_quant_map", DType::kF32, 256, "dynamic map"),
              ops::kDynamicMapBits, weight + ".nested_quant_map");
  ops::Nf4Storage q = ops::nf4_empty(rows, cols, eng);
  eng.copy(q.packed, packed);
  eng.copy(q.absmax_q, absmax);
  eng.copy(q.absmax2, absmax2);
  Tensor off = eng.empty_host({1}, DType::kF32);
  off.ptr<float>()[0] = s.nested_offset;
  eng.copy(q.offset, off);  // pageable source: staged before copy() returns, so `off` may go
  return q;
}

void write_bnb_checkpoint(const std::string& src_dir, const std::string& out_dir, DType quant_dtype,
                          engine::Engine& eng) {
  ENGINE_CHECK(quant_dtype == DType::kF32 || quant_dtype == DType::kF16 || quant_dtype == DType::kBF16,
               "write_bnb_checkpoint: quantization dtype must be f32, f16 or bf16, got ", engine::dtype_name(quant_dtype));
  std::error_code ec;
  ENGINE_CHECK(!(fs::exists(out_dir, ec) && fs::equivalent(src_dir, out_dir, ec)), out_dir,
               ": is the source folder; write the bitsandbytes checkpoint to another folder");
  ENGINE_CHECK(!fs::exists(out_dir + "/model.safetensors.index.json", ec), out_dir, ": holds a sharded checkpoint ",
               "(model.safetensors.index.json) that would shadow the model.safetensors written here; choose another folder");
  // The loader quantizes each linear as training would (from the weight materialised in quant_dtype).
  Gemma2Options o;
  o.compute_dtype = quant_dtype;
  o.quantize_nf4 = true;
  const Gemma2Model m = Gemma2Model::load(src_dir, eng, o);
  const engine::SafetensorsCheckpoint ck(src_dir);

  std::vector<Tensor> keep;  // host copies of the quantized arrays, alive until the file is written
  auto host = [&](const Tensor& t, engine::Shape shape) {
    Tensor h = eng.empty_host(t.shape(), t.dtype());
    eng.copy(h, t);
    keep.push_back(h);
    return h.view().reshape(shape);
  };
  struct Arrays {
    int64_t rows, cols;
    TensorView packed, absmax_q, absmax2, offset;
  };
  std::map<std::string, Arrays> arrays;
  for (const auto& [name, q] : m.nf4_weights()) {
    const int64_t n = q->rows * q->cols;
    arrays[name] = {q->rows, q->cols, host(q->packed, {ops::nf4_packed_bytes(n), 1}),
                    host(q->absmax_q, {ops::nf4_blocks(n)}), host(q->absmax2, {ops::nf4_blocks2(n)}),
                    host(q->offset, {1})};
  }
  eng.synchronize();  // the host copies are complete
  Tensor quant_map = eng.empty_host({16}, DType::kF32), nested_map = eng.empty_host({256}, DType::kF32);
  std::memcpy(quant_map.data(), ops::kNf4CodeBits, sizeof(ops::kNf4CodeBits));
  std::memcpy(nested_map.data(), ops::kDynamicMapBits, sizeof(ops::kDynamicMapBits));
  std::map<std::string, std::vector<std::pair<std::string, TensorView>>> quantized;  // weight -> its 6 tensors
  std::set<std::string> skip;  // a bnb source's own tensors: replaced by the ones written here
  for (const auto& [name, a] : arrays) {
    BnbQuantState s;
    s.quant_type = "nf4";
    s.blocksize = ops::kNf4Block;
    s.dtype = torch_dtype_name(quant_dtype);
    s.shape = {a.rows, a.cols};
    s.nested = true;
    s.nested_blocksize = ops::kNf4Block2;
    s.nested_dtype = "float32";
    s.nested_offset = a.offset.ptr<float>()[0];
    const std::string js = bnb_quant_state_json(s);
    Tensor bytes = eng.empty_host({int64_t(js.size())}, DType::kU8);
    std::memcpy(bytes.data(), js.data(), js.size());
    keep.push_back(bytes);
    const std::vector<std::string> names = bnb_tensor_names(name);
    quantized[name] = {{names[0], a.packed},    {names[1], a.absmax_q},        {names[2], quant_map.view()},
                       {names[3], a.absmax2},   {names[4], nested_map.view()}, {names[5], bytes.view()}};
    skip.insert(names.begin(), names.end());
  }
  // In the source's tensor order, each quantized weight followed by its quant state.
  std::vector<std::pair<std::string, TensorView>> tensors;
  for (const std::string& name : ck.names()) {
    auto it = quantized.find(name);
    if (it != quantized.end()) tensors.insert(tensors.end(), it->second.begin(), it->second.end());
    else if (!skip.count(name)) tensors.emplace_back(name, ck.view(name));
  }

  fs::create_directories(out_dir);
  nlohmann::ordered_json cj;
  try {
    cj = nlohmann::ordered_json::parse(engine::read_file(src_dir + "/config.json"));
  } catch (const nlohmann::json::exception& e) {
    throw Error(src_dir + "/config.json: not valid JSON: " + e.what());
  }
  cj["quantization_config"] = nlohmann::ordered_json::parse(bnb4_quantization_config_json(torch_dtype_name(quant_dtype)));
  engine::write_safetensors(out_dir + "/model.safetensors", tensors, {{"format", "pt"}});
  engine::write_file_atomic(out_dir + "/config.json", cj.dump(2) + "\n");
  copy_side_files(src_dir, out_dir);
}

}  // namespace models
