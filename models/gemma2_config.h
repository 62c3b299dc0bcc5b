// models/gemma2_config.h: the Gemma-2 hyper-parameters (SPEC.md §2.1), read from an HF config.json.
// Shape letters used across models/: B batch, T sequence, D hidden, H query heads, KV kv heads,
// HD head dim, F intermediate, V vocab, L layers, R LoRA rank.
#pragma once
#include <string>
#include <vector>

namespace models {

struct Gemma2Config {
  int64_t hidden_size = 2304;              // D
  int64_t intermediate_size = 9216;        // F
  int64_t num_hidden_layers = 26;          // L
  int64_t num_attention_heads = 8;         // H
  int64_t num_key_value_heads = 4;         // KV
  int64_t head_dim = 256;                  // HD (H*HD need not equal D)
  int64_t vocab_size = 256000;             // V
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  double query_pre_attn_scalar = 256;      // attention scale = query_pre_attn_scalar^-0.5
  int64_t sliding_window = 4096;           // on the layers layer_types marks sliding
  double attn_logit_softcapping = 50.0;    // <= 0: off
  double final_logit_softcapping = 30.0;   // <= 0: off
  std::string hidden_activation = "gelu_pytorch_tanh";
  bool tie_word_embeddings = true;
  int64_t max_position_embeddings = 8192;
  int64_t pad_token_id = 0, bos_token_id = 2;
  std::vector<int64_t> eos_token_ids = {1};
  std::string torch_dtype = "bfloat16";    // the checkpoint's stored dtype, informational
  std::vector<bool> sliding;               // per layer; from layer_types, else even layers slide
  // config.json's quantization_config says the checkpoint is bitsandbytes 4-bit (quant_method "bitsandbytes",
  // load_in_4bit, nf4, double quant, uint8 storage): its linear weights are stored packed
  // (models/bnb_checkpoint.h). Any other quantization_config is refused.
  bool bnb_4bit = false;

  static Gemma2Config gemma2_2b();
  // Reads `path` (config.json). Missing structural fields, an unknown model_type or architecture and
  // unsupported settings are one engine::Error listing every problem.
  static Gemma2Config from_json_file(const std::string& path);
  std::string to_json() const;  // an HF-compatible config.json (with quantization_config when bnb_4bit)
  float attn_scale() const;     // query_pre_attn_scalar^-0.5 in f32
  int64_t group_size() const { return num_attention_heads / num_key_value_heads; }
};

// The "quantization_config" object transformers writes for BitsAndBytesConfig(load_in_4bit=True,
// bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute_dtype), as JSON text.
std::string bnb4_quantization_config_json(const std::string& compute_dtype);

}  // namespace models
