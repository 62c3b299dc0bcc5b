#include "models/export.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <tuple>

#include "engine/safetensors.h"
#include "models/bnb_checkpoint.h"
#include "models/gemma2_config.h"
#include "ops/elementwise.h"
#include "ops/matmul.h"
#include "ops/nf4.h"

namespace models {
namespace fs = std::filesystem;
using engine::DType;
using engine::Error;
using engine::Shape;
using engine::Tensor;
using engine::TensorView;

namespace {

const char* const kAllTargets[] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};

bool is_16_or_32(DType t) { return t == DType::kF32 || t == DType::kF16 || t == DType::kBF16; }

// Sort key giving HF's order: the embedding, then layer by layer (numerically), then the rest.
std::tuple<int, int64_t, std::string> tensor_order(const std::string& n) {
  static const std::string kLayers = "model.layers.";
  if (n.rfind("model.embed_tokens.", 0) == 0) return {0, 0, n};
  if (n.rfind(kLayers, 0) == 0) {
    size_t i = kLayers.size();
    int64_t layer = 0;
    bool digits = false;
    while (i < n.size() && n[i] >= '0' && n[i] <= '9') layer = layer * 10 + (n[i++] - '0'), digits = true;
    if (digits) return {1, layer, n.substr(i)};
  }
  return {2, 0, n};
}

std::string shard_name(size_t k, size_t n) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "model-%05zu-of-%05zu.safetensors", k + 1, n);
  return buf;
}

bool same_path(const fs::path& a, const std::string& b) {
  std::error_code ec;
  return !b.empty() && fs::exists(b, ec) && fs::equivalent(a, b, ec);
}

struct Planned {
  std::string name;
  TensorView src;                   // host view into the base checkpoint's mapping
  Shape shape;                      // as written (a bnb weight: the unpacked (out, in))
  DType dtype;                      // as written
  const LoraModule* lora = nullptr; // merged when set
  bool bnb = false;                 // a bitsandbytes 4-bit weight: dequantized (and merged when lora is set)
  size_t shard = 0;
};

// W' = W + scaling * B @ A for one linear (W alone when p.lora is null: a bnb weight the adapter leaves alone),
// returned in host memory in the output dtype. f32 from the cast or dequantization on, one rounding to the output
// dtype at the end.
Tensor merge_linear(engine::Engine& eng, const engine::SafetensorsCheckpoint& ck, const Planned& p,
                    const ExportOptions& o) {
  const Shape shape = p.shape;
  Tensor w32 = eng.empty(shape, DType::kF32);  // (out, in)
  if (p.bnb) {  // the 4-bit base itself: there is no 16-bit original to merge into, whatever o.base says
    const ops::Nf4Storage q = load_bnb_nf4(eng, ck, p.name, shape[0], shape[1]);
    ops::nf4_dequantize(w32, q.view(), eng);
  } else {
    TensorView w_src = p.src;
    Tensor staged;
    if (eng.is_cuda()) {  // pageable source: eng.copy stages it before returning, so the mapping may be read later
      staged = eng.empty(shape, p.src.dtype);
      eng.copy(staged, p.src);
      w_src = staged;
    }
    if (o.base == MergeBase::kNf4) {
      // As Gemma2Model::load quantizes: from the weight materialised in the compute dtype (SPEC.md §3.2).
      Tensor wq = eng.empty(shape, o.compute_dtype);
      ops::cast(wq, w_src, eng);
      ops::Nf4Storage q = ops::nf4_empty(shape[0], shape[1], eng);
      ops::nf4_quantize(q.view(), wq, ops::Nf4QuantParams{}, eng);
      ops::nf4_dequantize(w32, q.view(), eng);
    } else {
      ops::cast(w32, w_src, eng);
    }
  }
  if (p.lora) {  // w32 += scaling * B (out, r) @ A (r, in)
    const LoraModule& m = *p.lora;
    ops::matmul(w32, m.B, m.A, ops::matmul_params(w32, m.B, m.A, false, false, m.scaling, 1.f), eng);
  }
  Tensor out = w32;
  if (o.out_dtype != DType::kF32) {
    out = eng.empty(shape, o.out_dtype);
    ops::cast(out, w32, eng);
  }
  if (!eng.is_cuda()) return out;
  Tensor host = eng.empty_host(shape, o.out_dtype);
  eng.copy(host, out);
  eng.synchronize();  // one sync per tensor: its bytes must be on the host before they are written
  return host;
}

LoraSpec lora_spec_from_json(nlohmann::json& j, const std::string& path) {
  auto is_unset = [&](const char* k) {
    if (!j.contains(k)) return true;
    const auto& v = j[k];
    return v.is_null() || (v.is_object() && v.empty()) || (v.is_array() && v.empty()) || (v.is_boolean() && !v);
  };
  ENGINE_CHECK(j.value("peft_type", std::string("LORA")) == "LORA", path, ": peft_type is ", j["peft_type"].dump(),
               ", expected \"LORA\"");
  ENGINE_CHECK(j.contains("r") && j["r"].is_number_integer() && j["r"].get<int64_t>() > 0, path,
               ": \"r\" must be a positive integer, got ", j.value("r", nlohmann::json()).dump());
  ENGINE_CHECK(j.contains("lora_alpha") && j["lora_alpha"].is_number(), path,
               ": \"lora_alpha\" must be a number, got ", j.value("lora_alpha", nlohmann::json()).dump());
  for (const char* k : {"use_dora", "rank_pattern", "alpha_pattern", "layers_to_transform", "modules_to_save",
                        "fan_in_fan_out", "layer_replication"})
    ENGINE_CHECK(is_unset(k), path, ": ", k, " = ", j[k].dump(), " is not supported by the merge");
  ENGINE_CHECK(j.value("bias", std::string("none")) == "none", path, ": bias = ", j["bias"].dump(),
               " is not supported (only \"none\")");
  LoraSpec s;
  s.r = j["r"].get<int64_t>();
  s.alpha = j["lora_alpha"].get<double>();
  s.dropout = 0;  // merging is inference: no dropout
  s.use_rslora = j.value("use_rslora", false);
  s.targets.clear();
  ENGINE_CHECK(j.contains("target_modules"), path, ": no \"target_modules\"");
  const auto& tm = j["target_modules"];
  if (tm.is_string()) {
    ENGINE_CHECK(tm.get<std::string>() == "all-linear", path, ": target_modules = ", tm.dump(),
                 ": only \"all-linear\" or a list of module names is supported (no regular expressions)");
    s.targets.assign(std::begin(kAllTargets), std::end(kAllTargets));
  } else {
    ENGINE_CHECK(tm.is_array() && !tm.empty(), path, ": target_modules must be a non-empty list, got ", tm.dump());
    for (const auto& t : tm) {
      const std::string name = t.is_string() ? t.get<std::string>() : t.dump();
      ENGINE_CHECK(std::find(std::begin(kAllTargets), std::end(kAllTargets), name) != std::end(kAllTargets), path,
                   ": target module '", name, "' is not a Gemma-2 linear (q_proj k_proj v_proj o_proj gate_proj ",
                   "up_proj down_proj)");
      s.targets.push_back(name);
    }
  }
  return s;
}

}  // namespace

std::vector<std::string> copy_side_files(const std::string& from, const std::string& to) {
  // Files of a checkpoint folder that belong in a loadable checkpoint beside the weights.
  static const char* const kSideFiles[] = {"tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                                           "special_tokens_map.json", "generation_config.json"};
  std::vector<std::string> copied;
  std::error_code ec;
  for (const char* f : kSideFiles) {
    if (!fs::exists(from + "/" + f, ec)) continue;
    engine::write_file_atomic(to + "/" + f, engine::read_file(from + "/" + f));
    copied.push_back(f);
  }
  return copied;
}

LoraSpec lora_spec_from_peft(const std::string& adapter_dir) {
  const std::string path = adapter_dir + "/adapter_config.json";
  std::ifstream in(path);
  ENGINE_CHECK(in.good(), path, ": cannot open (is ", adapter_dir, " a peft LoRA adapter folder?)");
  nlohmann::json j;
  try {
    in >> j;
  } catch (const std::exception& e) {
    throw Error(path + ": not valid JSON: " + e.what());
  }
  ENGINE_CHECK(j.is_object(), path, ": not a JSON object");
  try {
    return lora_spec_from_json(j, path);
  } catch (const nlohmann::json::exception& e) {  // a field of the wrong JSON type
    throw Error(path + ": " + e.what());
  }
}

ExportResult export_merged(const ExportOptions& o, engine::Engine& eng) {
  ENGINE_CHECK(!o.out_dir.empty(), "export: no output folder given");
  ENGINE_CHECK(is_16_or_32(o.out_dtype), "export: output dtype must be f32, f16 or bf16, got ",
               engine::dtype_name(o.out_dtype));
  ENGINE_CHECK(is_16_or_32(o.compute_dtype), "export: compute dtype must be f32, f16 or bf16, got ",
               engine::dtype_name(o.compute_dtype));
  ENGINE_CHECK(o.shard_bytes > 0, "export: shard size must be positive, got ", o.shard_bytes, " bytes");
  fs::path out = fs::path(o.out_dir).lexically_normal();
  if (!out.has_filename()) out = out.parent_path();  // "dir/" -> "dir"
  std::error_code ec;
  const bool out_exists = fs::exists(out, ec);
  if (out_exists) {
    ENGINE_CHECK(fs::is_directory(out, ec), out.string(), ": exists and is not a folder");
    ENGINE_CHECK(!same_path(out, o.model_dir) && !same_path(out, o.adapter_dir), out.string(),
                 ": is the base model or the adapter folder; choose another output folder");
    ENGINE_CHECK(fs::is_empty(out, ec) || o.force, out.string(),
                 ": exists and is not empty (pass --force to replace it)");
  }

  const Gemma2Config cfg = Gemma2Config::from_json_file(o.model_dir + "/config.json");
  const engine::SafetensorsCheckpoint ck(o.model_dir);
  const LoraSpec spec = lora_spec_from_peft(o.adapter_dir);
  LoraAdapters lora(cfg, spec, eng);
  lora.load_peft(o.adapter_dir);  // checks every A and B against cfg: names, r, shapes

  // The plan: every tensor of the base, in HF order, with its output dtype, merge and shard.
  std::map<std::string, const LoraModule*> merged;
  for (const LoraModule& m : lora.modules()) {
    const std::string w = m.path + ".weight";
    ENGINE_CHECK(ck.contains(w), o.model_dir, ": the adapter targets ", m.path, " but the checkpoint has no ", w);
    merged[w] = &m;
    if (bnb_quantized(ck, w)) continue;  // its shape and arrays are checked when it is planned
    const TensorView v = ck.view(w);
    ENGINE_CHECK(v.shape == Shape({m.out, m.in}), o.model_dir, ": tensor ", w, " has shape ", v.shape.str(),
                 ", the adapter expects (", m.out, ",", m.in, ")");
    ENGINE_CHECK(is_16_or_32(v.dtype), o.model_dir, ": tensor ", w, " has dtype ", engine::dtype_name(v.dtype),
                 ", expected bf16, f16 or f32");
  }
  // A bitsandbytes 4-bit base: its quantized weights are written dequantized, their quant-state tensors not at all.
  std::map<std::string, BnbQuantState> bnb;
  std::set<std::string> bnb_aux;
  for (const std::string& n : ck.names()) {
    if (n.size() < 7 || n.compare(n.size() - 7, 7, ".weight") != 0 || !bnb_quantized(ck, n)) continue;
    bnb[n] = read_bnb_quant_state(ck, n);
    for (const std::string& a : bnb_tensor_names(n))
      if (a != n) bnb_aux.insert(a);
  }
  std::vector<std::string> names = ck.names();
  std::sort(names.begin(), names.end(),
            [](const std::string& a, const std::string& b) { return tensor_order(a) < tensor_order(b); });
  std::vector<Planned> plan;
  std::vector<int64_t> shard_bytes;
  ExportResult res;
  for (const std::string& n : names) {
    if (bnb_aux.count(n)) continue;
    Planned p;
    p.name = n;
    p.src = ck.view(n);
    p.shape = p.src.shape;
    p.dtype = engine::is_float(p.src.dtype) ? o.out_dtype : p.src.dtype;
    auto b = bnb.find(n);
    if (b != bnb.end()) {
      const std::vector<int64_t>& s = b->second.shape;
      ENGINE_CHECK(s.size() == 2, o.model_dir, ": ", n, ": quant_state shape must have 2 entries");
      p.bnb = true;
      p.shape = Shape({s[0], s[1]});
      p.dtype = o.out_dtype;
    }
    auto it = merged.find(n);
    if (it != merged.end()) {
      p.lora = it->second;
      ENGINE_CHECK(p.shape == Shape({p.lora->out, p.lora->in}), o.model_dir, ": tensor ", n, " has shape ",
                   p.shape.str(), ", the adapter expects (", p.lora->out, ",", p.lora->in, ")");
    }
    const int64_t bytes = p.shape.numel() * int64_t(engine::dtype_size(p.dtype));
    // A shard closes when this tensor would pass the limit; a tensor larger than the limit gets its own shard.
    if (shard_bytes.empty() || (shard_bytes.back() > 0 && shard_bytes.back() + bytes > o.shard_bytes))
      shard_bytes.push_back(0);
    shard_bytes.back() += bytes;
    p.shard = shard_bytes.size() - 1;
    res.total_bytes += bytes;
    res.num_merged += p.lora != nullptr;
    plan.push_back(p);
  }
  res.num_tensors = int64_t(plan.size());
  const size_t n_shards = shard_bytes.size();
  auto file_of = [&](size_t k) { return n_shards == 1 ? std::string("model.safetensors") : shard_name(k, n_shards); };

  // Everything goes to a sibling temporary folder, renamed onto `out` at the end.
  const fs::path tmp = out.string() + ".tmp." + std::to_string(::getpid());
  fs::remove_all(tmp, ec);
  ENGINE_CHECK(fs::create_directories(tmp, ec), tmp.string(), ": cannot create the temporary output folder: ",
               ec.message());
  try {
    std::map<std::string, std::string> weight_map;  // sorted, as transformers writes the index
    size_t next = 0;
    for (size_t k = 0; k < n_shards; ++k) {
      std::vector<engine::SafetensorsLayoutEntry> layout;
      for (size_t i = next; i < plan.size() && plan[i].shard == k; ++i)
        layout.push_back({plan[i].name, plan[i].dtype, plan[i].shape});
      engine::SafetensorsWriter w((tmp / file_of(k)).string(), layout, {{"format", "pt"}});
      for (; next < plan.size() && plan[next].shard == k; ++next) {
        const Planned& p = plan[next];
        if (o.on_tensor) o.on_tensor(p.name, int64_t(next), int64_t(plan.size()));
        if (p.lora || p.bnb) {
          w.write(p.name, merge_linear(eng, ck, p, o));
        } else if (p.dtype == p.src.dtype) {
          w.write(p.name, p.src);  // straight from the mapping
        } else {
          Tensor host = eng.empty_host(p.src.shape, p.dtype);
          ops::cpu::cast(host, p.src);
          w.write(p.name, host);
        }
        weight_map[p.name] = file_of(k);
      }
      w.finish();
      res.files.push_back(file_of(k));
    }
    if (n_shards > 1) {
      nlohmann::json idx;
      idx["metadata"] = {{"total_size", res.total_bytes}};
      idx["weight_map"] = weight_map;
      engine::write_file_atomic((tmp / "model.safetensors.index.json").string(), idx.dump(2) + "\n");
      res.files.push_back("model.safetensors.index.json");
    }
    // config.json: the base's own, field for field, with the stored dtype updated.
    nlohmann::ordered_json cj;
    try {
      cj = nlohmann::ordered_json::parse(engine::read_file(o.model_dir + "/config.json"));
    } catch (const nlohmann::json::exception& e) {
      throw Error(o.model_dir + "/config.json: not valid JSON: " + e.what());
    }
    cj["torch_dtype"] = torch_dtype_name(o.out_dtype);
    cj.erase("quantization_config");  // a bnb 4-bit base: the export is dense
    if (cj.contains("dtype")) cj["dtype"] = torch_dtype_name(o.out_dtype);  // transformers >= 4.56 spelling
    engine::write_file_atomic((tmp / "config.json").string(), cj.dump(2) + "\n");
    res.files.push_back("config.json");
    for (const std::string& f : copy_side_files(o.model_dir, tmp.string())) res.files.push_back(f);

    // Into place. An existing folder that is empty is replaced by rename itself; a non-empty one (--force) is
    // moved aside first and removed once the new folder is in place.
    if (out_exists && !fs::is_empty(out, ec)) {
      const fs::path old = out.string() + ".old." + std::to_string(::getpid());
      fs::rename(out, old);
      try {
        fs::rename(tmp, out);
      } catch (...) {
        fs::rename(old, out, ec);
        throw;
      }
      fs::remove_all(old, ec);
    } else {
      fs::rename(tmp, out);
    }
  } catch (const fs::filesystem_error& e) {
    fs::remove_all(tmp, ec);
    throw Error(out.string() + ": " + e.what());
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
  std::sort(res.files.begin(), res.files.end());
  return res;
}

}  // namespace models
