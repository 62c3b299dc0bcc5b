#include "models/gemma2_config.h"

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/check.h"

namespace models {

Gemma2Config Gemma2Config::gemma2_2b() {
  Gemma2Config c;
  c.sliding.resize(c.num_hidden_layers);
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) c.sliding[i] = (i % 2) == 0;
  return c;
}

float Gemma2Config::attn_scale() const { return float(std::pow(query_pre_attn_scalar, -0.5)); }

Gemma2Config Gemma2Config::from_json_file(const std::string& path) {
  std::ifstream in(path);
  ENGINE_CHECK(in.good(), path, ": cannot open");
  nlohmann::json j;
  try {
    in >> j;
  } catch (const std::exception& e) {
    throw engine::Error(path + ": not valid JSON: " + e.what());
  }
  std::vector<std::string> errors;
  Gemma2Config c;
  const std::string mt = j.value("model_type", "");
  if (mt != "gemma2")
    errors.push_back("model_type is \"" + mt + "\", expected \"gemma2\" (only Gemma-2 is supported)");
  if (j.contains("architectures")) {
    bool ok = false;
    for (const auto& a : j["architectures"]) ok = ok || a == "Gemma2ForCausalLM";
    if (!ok) errors.push_back("architectures " + j["architectures"].dump() + " does not list Gemma2ForCausalLM");
  }
  auto req_int = [&](const char* key, int64_t& dst) {
    if (!j.contains(key) || !j[key].is_number_integer()) {
      errors.push_back(std::string("missing or non-integer \"") + key + "\"");
      return;
    }
    dst = j[key].get<int64_t>();
    if (dst <= 0) errors.push_back(std::string("\"") + key + "\" must be positive, got " + std::to_string(dst));
  };
  req_int("hidden_size", c.hidden_size);
  req_int("intermediate_size", c.intermediate_size);
  req_int("num_hidden_layers", c.num_hidden_layers);
  req_int("num_attention_heads", c.num_attention_heads);
  req_int("num_key_value_heads", c.num_key_value_heads);
  req_int("head_dim", c.head_dim);
  req_int("vocab_size", c.vocab_size);
  // The rest default to transformers' Gemma2Config defaults, as transformers itself does.
  auto opt_num = [&](const char* key, double& dst) {
    if (!j.contains(key) || j[key].is_null()) return;
    if (!j[key].is_number()) errors.push_back(std::string("\"") + key + "\" must be a number");
    else dst = j[key].get<double>();
  };
  auto opt_int = [&](const char* key, int64_t& dst) {
    if (!j.contains(key) || j[key].is_null()) return;
    if (!j[key].is_number_integer()) errors.push_back(std::string("\"") + key + "\" must be an integer");
    else dst = j[key].get<int64_t>();
  };
  opt_num("rms_norm_eps", c.rms_norm_eps);
  opt_num("rope_theta", c.rope_theta);
  if (j.contains("rope_parameters") && j["rope_parameters"].is_object()) {  // transformers 5.x
    const auto& rp = j["rope_parameters"];
    if (rp.contains("rope_theta")) c.rope_theta = rp["rope_theta"].get<double>();
    if (rp.value("rope_type", "default") != "default")
      errors.push_back("rope_parameters.rope_type " + rp["rope_type"].dump() + " is not supported (only default)");
  }
  if (j.contains("rope_scaling") && !j["rope_scaling"].is_null())
    errors.push_back("rope_scaling is not supported");
  opt_num("query_pre_attn_scalar", c.query_pre_attn_scalar);
  opt_int("sliding_window", c.sliding_window);
  opt_num("attn_logit_softcapping", c.attn_logit_softcapping);
  opt_num("final_logit_softcapping", c.final_logit_softcapping);
  opt_int("max_position_embeddings", c.max_position_embeddings);
  opt_int("pad_token_id", c.pad_token_id);
  opt_int("bos_token_id", c.bos_token_id);
  if (j.contains("eos_token_id")) {
    c.eos_token_ids.clear();
    if (j["eos_token_id"].is_array()) for (const auto& e : j["eos_token_id"]) c.eos_token_ids.push_back(e.get<int64_t>());
    else if (j["eos_token_id"].is_number_integer()) c.eos_token_ids.push_back(j["eos_token_id"].get<int64_t>());
  }
  if (j.contains("torch_dtype") && j["torch_dtype"].is_string()) c.torch_dtype = j["torch_dtype"];
  if (j.contains("dtype") && j["dtype"].is_string()) c.torch_dtype = j["dtype"];
  const std::string act = j.value("hidden_activation", j.value("hidden_act", std::string("gelu_pytorch_tanh")));
  if (act != "gelu_pytorch_tanh")
    errors.push_back("hidden_activation \"" + act + "\" is not supported (Gemma-2 uses gelu_pytorch_tanh)");
  c.tie_word_embeddings = j.value("tie_word_embeddings", true);
  if (!c.tie_word_embeddings) errors.push_back("tie_word_embeddings=false is not supported (Gemma-2 ties the head)");
  if (j.value("attention_bias", false)) errors.push_back("attention_bias=true is not supported");
  if (c.num_key_value_heads > 0 && c.num_attention_heads % c.num_key_value_heads != 0)
    errors.push_back("num_attention_heads " + std::to_string(c.num_attention_heads) +
                     " is not a multiple of num_key_value_heads " + std::to_string(c.num_key_value_heads));
  if (c.head_dim % 2 != 0) errors.push_back("head_dim must be even for RoPE");
  if (j.contains("quantization_config") && !j["quantization_config"].is_null()) {
    // transformers' BitsAndBytesConfig.to_dict(); its defaults where a key is missing (quant type fp4, no double
    // quant), so a hand-written config means what it would mean to transformers.
    const auto& q = j["quantization_config"];
    auto flag = [&](const char* k) { return q.contains(k) && q[k].is_boolean() && q[k].get<bool>(); };
    auto text = [&](const char* k, const char* dflt) {
      return q.contains(k) && q[k].is_string() ? q[k].get<std::string>() : std::string(dflt);
    };
    const std::string method = q.is_object() ? text("quant_method", "") : "";
    if (!q.is_object()) {
      errors.push_back("quantization_config must be an object");
    } else if (method != "bitsandbytes") {
      errors.push_back("quantization_config.quant_method \"" + method + "\" is not supported (only bitsandbytes " +
                       "4-bit nf4 checkpoints)");
    } else if (flag("load_in_8bit") || flag("_load_in_8bit")) {
      errors.push_back("quantization_config: bitsandbytes 8-bit (load_in_8bit) checkpoints are not supported (only 4-bit nf4)");
    } else if (!flag("load_in_4bit") && !flag("_load_in_4bit")) {
      errors.push_back("quantization_config: bitsandbytes without load_in_4bit is not supported");
    } else {
      const std::string qt = text("bnb_4bit_quant_type", "fp4");
      if (qt == "fp4") errors.push_back("quantization_config: bnb_4bit_quant_type fp4 is not supported (only nf4)");
      else if (qt != "nf4") errors.push_back("quantization_config: bnb_4bit_quant_type \"" + qt + "\" is not supported (only nf4)");
      if (!flag("bnb_4bit_use_double_quant"))
        errors.push_back("quantization_config: bnb_4bit_use_double_quant=false is not supported (only double-quantized "
                         "nf4, the layout of ops/nf4.h)");
      const std::string storage = text("bnb_4bit_quant_storage", "uint8");
      if (storage != "uint8")
        errors.push_back("quantization_config: bnb_4bit_quant_storage \"" + storage + "\" is not supported (only uint8)");
      c.bnb_4bit = true;
    }
  }
  c.sliding.assign(size_t(std::max<int64_t>(c.num_hidden_layers, 0)), false);
  if (j.contains("layer_types") && j["layer_types"].is_array()) {
    const auto& lt = j["layer_types"];
    if (int64_t(lt.size()) != c.num_hidden_layers)
      errors.push_back("layer_types has " + std::to_string(lt.size()) + " entries for " +
                       std::to_string(c.num_hidden_layers) + " layers");
    for (size_t i = 0; i < lt.size() && i < c.sliding.size(); ++i) c.sliding[i] = lt[i] == "sliding_attention";
  } else {
    for (size_t i = 0; i < c.sliding.size(); ++i) c.sliding[i] = (i % 2) == 0;  // SPEC.md §1.4.5
  }
  if (!errors.empty()) {
    std::string msg = path + ": unsupported or invalid Gemma-2 config:";
    for (const auto& e : errors) msg += "\n  - " + e;
    throw engine::Error(msg);
  }
  return c;
}

std::string Gemma2Config::to_json() const {
  nlohmann::ordered_json j;
  j["architectures"] = {"Gemma2ForCausalLM"};
  j["model_type"] = "gemma2";
  j["hidden_size"] = hidden_size;
  j["intermediate_size"] = intermediate_size;
  j["num_hidden_layers"] = num_hidden_layers;
  j["num_attention_heads"] = num_attention_heads;
  j["num_key_value_heads"] = num_key_value_heads;
  j["head_dim"] = head_dim;
  j["vocab_size"] = vocab_size;
  j["rms_norm_eps"] = rms_norm_eps;
  j["rope_theta"] = rope_theta;
  j["query_pre_attn_scalar"] = query_pre_attn_scalar;
  j["sliding_window"] = sliding_window;
  j["attn_logit_softcapping"] = attn_logit_softcapping;
  j["final_logit_softcapping"] = final_logit_softcapping;
  j["hidden_activation"] = hidden_activation;
  j["hidden_act"] = hidden_activation;
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["max_position_embeddings"] = max_position_embeddings;
  j["pad_token_id"] = pad_token_id;
  j["bos_token_id"] = bos_token_id;
  j["eos_token_id"] = eos_token_ids.size() == 1 ? nlohmann::ordered_json(eos_token_ids[0]) : nlohmann::ordered_json(eos_token_ids);
  j["attention_bias"] = false;
  j["attention_dropout"] = 0.0;
  j["initializer_range"] = 0.02;
  j["torch_dtype"] = torch_dtype;
  std::vector<std::string> lt;
  for (bool s : sliding) lt.push_back(s ? "sliding_attention" : "full_attention");
  j["layer_types"] = lt;
  j["use_cache"] = true;
  if (bnb_4bit) j["quantization_config"] = nlohmann::ordered_json::parse(bnb4_quantization_config_json(torch_dtype));
  return j.dump(2) + "\n";
}

std::string bnb4_quantization_config_json(const std::string& compute_dtype) {
  nlohmann::ordered_json q;
  q["_load_in_4bit"] = true;
  q["_load_in_8bit"] = false;
  q["bnb_4bit_compute_dtype"] = compute_dtype;
  q["bnb_4bit_quant_storage"] = "uint8";
  q["bnb_4bit_quant_type"] = "nf4";
  q["bnb_4bit_use_double_quant"] = true;
  q["llm_int8_enable_fp32_cpu_offload"] = false;
  q["llm_int8_has_fp16_weight"] = false;
  q["llm_int8_skip_modules"] = nullptr;
  q["llm_int8_threshold"] = 6.0;
  q["load_in_4bit"] = true;
  q["load_in_8bit"] = false;
  q["quant_method"] = "bitsandbytes";
  return q.dump();
}

}  // namespace models
