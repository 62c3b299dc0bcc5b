#include "models/lora.h"

#include <sys/stat.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/philox.h"
#include "engine/safetensors.h"

namespace models {

double LoraSpec::scaling() const { return use_rslora ? alpha / std::sqrt(double(r)) : alpha / double(r); }

namespace {
const char* const kAllTargets[] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};

std::string module_path(int64_t layer, const std::string& t) {
  const bool attn = t == "q_proj" || t == "k_proj" || t == "v_proj" || t == "o_proj";
  return "model.layers." + std::to_string(layer) + (attn ? ".self_attn." : ".mlp.") + t;
}
}  // namespace

LoraAdapters::LoraAdapters(const Gemma2Config& cfg, const LoraSpec& spec, Engine& eng)
    : eng_(eng), cfg_(cfg), spec_(spec) {
  ENGINE_CHECK(spec.r > 0, "lora: r must be positive, got ", spec.r);
  ENGINE_CHECK(spec.dropout >= 0 && spec.dropout < 1, "lora: dropout must be in [0, 1), got ", spec.dropout);
  for (const auto& t : spec.targets) {
    bool known = false;
    for (const char* k : kAllTargets) known = known || t == k;
    ENGINE_CHECK(known, "lora: unknown target module '", t, "' (Gemma-2 has q_proj k_proj v_proj o_proj gate_proj ",
                 "up_proj down_proj)");
  }
  const int64_t D = cfg.hidden_size, F = cfg.intermediate_size, Q = cfg.num_attention_heads * cfg.head_dim,
                KVD = cfg.num_key_value_heads * cfg.head_dim;
  int64_t total = 0;
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l)
    for (const char* t : kAllTargets) {  // HF module order within a layer
      bool wanted = false;
      for (const auto& s : spec.targets) wanted = wanted || s == t;
      if (!wanted) continue;
      LoraModule m;
      m.layer = l;
      m.target = t;
      m.path = module_path(l, t);
      const std::string ts = t;
      m.in = ts == "o_proj" ? Q : ts == "down_proj" ? F : D;
      m.out = ts == "q_proj" ? Q : (ts == "k_proj" || ts == "v_proj") ? KVD : ts == "o_proj" ? D
              : ts == "down_proj" ? D : F;
      m.r = spec.r;
      m.scaling = float(spec.scaling());
      m.dropout = float(spec.dropout);
      m.stream = uint64_t(modules_.size());
      total += m.r * m.in + m.out * m.r;
      modules_.push_back(m);
    }
  params_ = eng.empty({total}, engine::DType::kF32);
  grads_ = eng.empty({total}, engine::DType::kF32);
  eng.zero(grads_);
  // Initialise on the host with Philox (the same values on every backend), then copy once.
  Tensor host = eng.empty_host({total}, engine::DType::kF32);
  int64_t off = 0;
  for (LoraModule& m : modules_) {
    const float bound = 1.0f / std::sqrt(float(m.in));  // kaiming_uniform(a=sqrt(5)): gain*sqrt(3/in) = 1/sqrt(in)
    for (int64_t i = 0; i < m.r * m.in; ++i)
      host.ptr<float>()[off + i] = (2.0f * engine::philox_uniform(spec.init_seed, m.stream, uint64_t(i)) - 1.0f) * bound;
    for (int64_t i = 0; i < m.out * m.r; ++i) host.ptr<float>()[off + m.r * m.in + i] = 0.0f;
    auto view = [&](Tensor& flat, int64_t at, engine::Shape s) {
      return Tensor(flat.view().slice_rows(at, at + s.numel()).reshape(s), std::shared_ptr<void>());
    };
    m.A = view(params_, off, {m.r, m.in});
    m.B = view(params_, off + m.r * m.in, {m.out, m.r});
    m.dA = view(grads_, off, {m.r, m.in});
    m.dB = view(grads_, off + m.r * m.in, {m.out, m.r});
    off += m.r * m.in + m.out * m.r;
  }
  eng.copy(params_, host);
  eng.synchronize();
}

const LoraModule* LoraAdapters::find(int64_t layer, const std::string& target) const {
  for (const LoraModule& m : modules_)
    if (m.layer == layer && m.target == target) return &m;
  return nullptr;
}

void LoraAdapters::zero_grads() { eng_.zero(grads_); }

std::string LoraAdapters::trainable_summary(int64_t base_params) const {
  const int64_t t = num_params(), all = base_params + t;
  char buf[200];
  auto commas = [](long long v) {
    std::string d = std::to_string(v), o;
    for (size_t i = 0; i < d.size(); ++i) {
      if (i && (d.size() - i) % 3 == 0) o += ',';
      o += d[i];
    }
    return o;
  };  // peft prints thousands separators
  std::snprintf(buf, sizeof(buf), "trainable params: %s || all params: %s || trainable%%: %.4f",
                commas(t).c_str(), commas(all).c_str(), 100.0 * double(t) / double(all));
  return buf;
}

std::string LoraAdapters::peft_name(const LoraModule& m, bool a) const {
  return "base_model.model." + m.path + (a ? ".lora_A.weight" : ".lora_B.weight");
}

void LoraAdapters::save_peft(const std::string& dir, const std::string& base_model_name_or_path) const {
  ::mkdir(dir.c_str(), 0755);
  Tensor host = eng_.empty_host({num_params()}, engine::DType::kF32);
  eng_.copy(host, params_);
  eng_.synchronize();
  std::vector<std::pair<std::string, engine::TensorView>> tensors;
  int64_t off = 0;
  for (const LoraModule& m : modules_) {
    tensors.emplace_back(peft_name(m, true), host.view().slice_rows(off, off + m.r * m.in).reshape({m.r, m.in}));
    off += m.r * m.in;
    tensors.emplace_back(peft_name(m, false), host.view().slice_rows(off, off + m.out * m.r).reshape({m.out, m.r}));
    off += m.out * m.r;
  }
  engine::write_safetensors(dir + "/adapter_model.safetensors", tensors, {{"format", "pt"}});

  nlohmann::json c;  // peft 0.13.2 LoraConfig fields (SPEC.md §4.6); dumped with sorted keys like peft
  c["alpha_pattern"] = nlohmann::json::object();
  c["auto_mapping"] = nullptr;
  c["base_model_name_or_path"] = base_model_name_or_path;
  c["bias"] = "none";
  c["fan_in_fan_out"] = false;
  c["inference_mode"] = true;
  c["init_lora_weights"] = true;
  c["layer_replication"] = nullptr;
  c["layers_pattern"] = nullptr;
  c["layers_to_transform"] = nullptr;
  c["loftq_config"] = nlohmann::json::object();
  if (spec_.alpha == std::floor(spec_.alpha)) c["lora_alpha"] = int64_t(spec_.alpha);
  else c["lora_alpha"] = spec_.alpha;
  c["lora_dropout"] = spec_.dropout;
  c["megatron_config"] = nullptr;
  c["megatron_core"] = "megatron.core";
  c["modules_to_save"] = nullptr;
  c["peft_type"] = "LORA";
  c["r"] = spec_.r;
  c["rank_pattern"] = nlohmann::json::object();
  c["revision"] = nullptr;
  c["target_modules"] = spec_.targets;
  c["task_type"] = "CAUSAL_LM";
  c["use_dora"] = false;
  c["use_rslora"] = spec_.use_rslora;
  engine::write_file_atomic(dir + "/adapter_config.json", c.dump(2) + "\n");
}

void LoraAdapters::load_peft(const std::string& dir) {
  engine::SafetensorsFile f(dir + "/adapter_model.safetensors");
  Tensor host = eng_.empty_host({num_params()}, engine::DType::kF32);
  int64_t off = 0;
  size_t used = 0;
  for (const LoraModule& m : modules_) {
    for (bool a : {true, false}) {
      const std::string name = peft_name(m, a);
      ENGINE_CHECK(f.contains(name), f.path(), ": adapter has no tensor ", name, " (r=", m.r, ", target ", m.target, ")");
      const engine::TensorView v = f.view(name);
      const engine::Shape want = a ? engine::Shape{m.r, m.in} : engine::Shape{m.out, m.r};
      ENGINE_CHECK(v.shape == want, f.path(), ": tensor ", name, " has shape ", v.shape.str(), ", expected ", want.str());
      for (int64_t i = 0; i < v.numel(); ++i) host.ptr<float>()[off + i] = float(engine::load_f64(v.data, v.dtype, i));
      off += v.numel();
      ++used;
    }
  }
  ENGINE_CHECK(used == f.names().size(), f.path(), ": has ", f.names().size(), " tensors but this LoRA config expects ",
               used, " (different target_modules?)");
  eng_.copy(params_, host);
  eng_.synchronize();
}

}  // namespace models
