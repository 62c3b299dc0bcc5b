#include "models/gemma2_random.h"

#include <sys/stat.h>

#include "engine/allocator.h"
#include "engine/philox.h"
#include "engine/safetensors.h"

namespace models {

Gemma2Config tiny_config(int64_t hidden, int64_t intermediate, int64_t layers, int64_t heads, int64_t kv_heads,
                         int64_t head_dim, int64_t vocab) {
  Gemma2Config c = Gemma2Config::gemma2_2b();
  c.hidden_size = hidden;
  c.intermediate_size = intermediate;
  c.num_hidden_layers = layers;
  c.num_attention_heads = heads;
  c.num_key_value_heads = kv_heads;
  c.head_dim = head_dim;
  c.vocab_size = vocab;
  c.query_pre_attn_scalar = double(head_dim);
  c.sliding.assign(size_t(layers), false);
  for (int64_t i = 0; i < layers; ++i) c.sliding[size_t(i)] = i % 2 == 0;
  return c;
}

void write_random_checkpoint(const std::string& dir, const Gemma2Config& c, engine::DType dtype,
                             const RandomInit& init) {
  using namespace engine;
  ::mkdir(dir.c_str(), 0755);
  HostAllocator alloc;
  std::vector<Tensor> keep;
  std::vector<std::pair<std::string, TensorView>> tensors;
  uint64_t stream = 0;
  auto add = [&](const std::string& name, Shape s, double sd) {
    Tensor t = Tensor::empty(s, dtype, alloc);  // HF stores the norms in the model dtype too
    ++stream;
    for (int64_t i = 0; i < t.numel(); ++i)
      store_f64(t.data(), dtype, i, sd * philox_normal(init.seed, stream, uint64_t(i)));
    tensors.emplace_back(name, t.view());
    keep.push_back(t);
  };
  const int64_t D = c.hidden_size, F = c.intermediate_size, H = c.num_attention_heads, KV = c.num_key_value_heads,
                HD = c.head_dim, V = c.vocab_size;
  add("model.embed_tokens.weight", {V, D}, init.std);
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    add(p + "input_layernorm.weight", {D}, init.norm_std);
    add(p + "self_attn.q_proj.weight", {H * HD, D}, init.std);
    add(p + "self_attn.k_proj.weight", {KV * HD, D}, init.std);
    add(p + "self_attn.v_proj.weight", {KV * HD, D}, init.std);
    add(p + "self_attn.o_proj.weight", {D, H * HD}, init.std);
    add(p + "post_attention_layernorm.weight", {D}, init.norm_std);
    add(p + "pre_feedforward_layernorm.weight", {D}, init.norm_std);
    add(p + "mlp.gate_proj.weight", {F, D}, init.std);
    add(p + "mlp.up_proj.weight", {F, D}, init.std);
    add(p + "mlp.down_proj.weight", {D, F}, init.std);
    add(p + "post_feedforward_layernorm.weight", {D}, init.norm_std);
  }
  add("model.norm.weight", {D}, init.norm_std);
  Gemma2Config out = c;
  out.torch_dtype = dtype == DType::kBF16 ? "bfloat16" : dtype == DType::kF16 ? "float16" : "float32";
  write_safetensors(dir + "/model.safetensors", tensors, {{"format", "pt"}});
  write_file_atomic(dir + "/config.json", out.to_json());
}

}  // namespace models
