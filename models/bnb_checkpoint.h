// models/bnb_checkpoint.h: HF checkpoints whose linear weights bitsandbytes has already quantized to 4 bits, as
// transformers' save_pretrained writes a model loaded with BitsAndBytesConfig(load_in_4bit=True,
// bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True): Linear4bit._save_to_state_dict stores the packed
// weight and QuantState.as_dict(packed=True) beside it. For each quantized weight W (model.layers.i.self_attn.
// {q,k,v,o}_proj.weight, model.layers.i.mlp.{gate,up,down}_proj.weight; n = rows*cols, nb, nb2 as in ops/nf4.h):
//   W                                  u8  (ceil(n/2), 1)  packed codes, even index in the high nibble  -> packed
//   W.absmax                           u8  (nb)            8-bit absmax codes                           -> absmax_q
//   W.quant_map                        f32 (16)            the NF4 table (must equal kNf4CodeBits)
//   W.nested_absmax                    f32 (nb2)                                                        -> absmax2
//   W.nested_quant_map                 f32 (256)           the dynamic map (must equal kDynamicMapBits)
//   W.quant_state.bitsandbytes__nf4    u8  (bytes)         UTF-8 JSON {"quant_type": "nf4", "blocksize": 64,
//       "dtype": "bfloat16", "shape": [rows, cols], "nested_blocksize": 256, "nested_dtype": "float32",
//       "nested_offset": <f32 as a JSON number>}                                                      -> offset
// and config.json has a "quantization_config" with quant_method "bitsandbytes" (models/gemma2_config.h).
// That is exactly ops::Nf4Storage's layout, so the loader copies the arrays as they are: no dequantization and
// no requantization, and a model loaded from them computes what bnb's Linear4bit computes (SPEC.md §3.5).
// Supported: quant_type nf4, blocksize 64, double quant with nested_blocksize 256, uint8 quant storage: the only
// layout ops/nf4.h implements. Anything else (fp4, other block sizes, no double quant, a missing or malformed
// tensor or JSON, a shape that disagrees with config.json) is an engine::Error naming the tensor.
#pragma once
#include <string>
#include <vector>

#include "engine/engine.h"
#include "engine/safetensors.h"
#include "ops/nf4.h"

namespace models {

// The JSON of W.quant_state.bitsandbytes__<quant_type>.
struct BnbQuantState {
  std::string quant_type;          // "nf4" / "fp4"
  int64_t blocksize = 0;
  std::string dtype;               // the dtype bnb quantized from and dequantizes to ("bfloat16", ...)
  std::vector<int64_t> shape;      // the unpacked weight's shape
  bool nested = false;             // double quant: the three fields below are set
  int64_t nested_blocksize = 0;
  std::string nested_dtype;
  float nested_offset = 0;
};

// Parses the bytes of a quant_state tensor; `what` (the tensor's name) starts every error message.
BnbQuantState parse_bnb_quant_state(const std::string& bytes, const std::string& what);
// The JSON bitsandbytes writes for this state (key order of QuantState.as_dict).
std::string bnb_quant_state_json(const BnbQuantState& s);

// True when the checkpoint stores `weight` in bitsandbytes 4-bit form: the weight is uint8 or any of its
// quant-state tensors is present (then load_bnb_nf4 reports what is missing).
bool bnb_quantized(const engine::SafetensorsCheckpoint& ck, const std::string& weight);
// Every tensor name a bnb nf4 weight consists of, the weight itself first.
std::vector<std::string> bnb_tensor_names(const std::string& weight);
// The validated quant state of `weight` (the fp4 / non-nested / blocksize checks included).
BnbQuantState read_bnb_quant_state(const engine::SafetensorsCheckpoint& ck, const std::string& weight);
// Validates every array of `weight` against (rows, cols) and copies them into a new Nf4Storage on the engine's
// device (one host-to-device copy per array; the mapping stays valid, so no synchronization).
ops::Nf4Storage load_bnb_nf4(engine::Engine& eng, const engine::SafetensorsCheckpoint& ck, const std::string& weight,
                             int64_t rows, int64_t cols);

// "bfloat16" / "float16" / "float32" for f32/f16/bf16 (torch's names, as bnb and config.json write them).
const char* torch_dtype_name(engine::DType t);

// Writes `out_dir` (created; must not be src_dir nor hold a sharded checkpoint's index) as a bitsandbytes 4-bit checkpoint of the Gemma-2 in src_dir:
// each linear weight quantized exactly as Gemma2Model::load quantizes it (materialised in quant_dtype, f32/f16/
// bf16, then ops::nf4_quantize on the engine's device), written in the layout above with quant_state dtype
// quant_dtype; every other tensor copied as stored; config.json = src's with "quantization_config" added
// (bnb_4bit_compute_dtype = quant_dtype); tokenizer and generation files copied. transformers loads the result
// with from_pretrained (pre-quantized, no quantization_config argument needed). A source that is already bnb
// 4-bit is rewritten with its own arrays. Files are written atomically (temp + rename), one at a time.
void write_bnb_checkpoint(const std::string& src_dir, const std::string& out_dir, engine::DType quant_dtype,
                          engine::Engine& eng);

}  // namespace models
