// models/lora.h: LoRA adapters on Gemma-2's linear layers (SPEC.md §4), in peft's formats.
//   y = base(x) + scaling * B(A(dropout(x))),  A: (r, in), B: (out, r), scaling = alpha / r (alpha/sqrt(r)
//   with rsLoRA). A ~ kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)), B = 0, no bias (§4.2).
//   Master weights and gradients are f32; all adapters live in one flat parameter buffer and one flat
//   gradient buffer (each module's A and B are views), so the optimizer, the norm and the all-reduce each
//   run once over the whole set.
//   Target names: q_proj k_proj v_proj o_proj gate_proj up_proj down_proj ("all-linear" = all seven; never
//   the tied head or the embedding). Dropout acts on the adapter's input only, one Philox stream per module.
#pragma once
#include <string>
#include <vector>

#include "engine/engine.h"
#include "models/gemma2_config.h"

namespace models {

using engine::Engine;
using engine::Tensor;

struct LoraSpec {
  int64_t r = 4;
  double alpha = 8;
  double dropout = 0.1;
  bool use_rslora = false;
  std::vector<std::string> targets = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  uint64_t init_seed = 42;
  double scaling() const;
};

struct LoraModule {
  std::string path;       // HF module path, e.g. "model.layers.0.self_attn.q_proj"
  int64_t layer = 0;
  std::string target;     // "q_proj", ...
  int64_t in = 0, out = 0, r = 0;
  float scaling = 1.f, dropout = 0.f;
  uint64_t stream = 0;    // Philox stream of this module's dropout mask
  Tensor A, B;            // (r, in), (out, r) f32 views into the flat parameters
  Tensor dA, dB;          // views into the flat gradients
};

class LoraAdapters {
 public:
  // Creates the adapters for every target module of `cfg`, initialised as peft does (with Philox).
  LoraAdapters(const Gemma2Config& cfg, const LoraSpec& spec, Engine& eng);

  const LoraSpec& spec() const { return spec_; }
  std::vector<LoraModule>& modules() { return modules_; }
  const LoraModule* find(int64_t layer, const std::string& target) const;
  Tensor& params() { return params_; }  // (P) f32, all A and B
  const Tensor& params() const { return params_; }
  Tensor& grads() { return grads_; }    // (P) f32
  int64_t num_params() const { return params_.numel(); }
  void zero_grads();

  // peft's print_trainable_parameters line for a base model of `base_params` parameters.
  std::string trainable_summary(int64_t base_params) const;

  // adapter_model.safetensors (peft tensor names, f32, {"format": "pt"}) + adapter_config.json with
  // peft 0.13.2's field set (older peft rejects unknown keys, SPEC.md §4.6). Atomic writes.
  void save_peft(const std::string& dir, const std::string& base_model_name_or_path) const;
  // Loads A and B from a peft adapter folder (ours or one peft trained): names and shapes must match.
  void load_peft(const std::string& dir);
  std::string peft_name(const LoraModule& m, bool a) const;

 private:
  Engine& eng_;
  Gemma2Config cfg_;
  LoraSpec spec_;
  Tensor params_, grads_;
  std::vector<LoraModule> modules_;
};

}  // namespace models
