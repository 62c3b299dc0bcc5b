// models/export.h: merge a trained LoRA adapter into the base weights and write an HF checkpoint folder that
// transformers' AutoModelForCausalLM.from_pretrained loads (no peft needed), one tensor at a time.
//   For every linear the adapter targets (SPEC.md §4: y = W x + scaling * B A x):
//     W' = round_out(W + scaling * (B @ A))    B: (out, r), A: (r, in); f32 throughout, one rounding at the end
//   Every other tensor (embedding, norms) is copied, cast to the output dtype.
// Which W (MergeBase):
//   kNf4 (default): W = dequant(nf4(W16)), the 4-bit weights the adapter was trained against in QLoRA: the NF4
//     quantization of the checkpoint weight as training materialised it (in `compute_dtype`, as Gemma2Model
//     does), dequantized in f32 (SPEC.md §3.5). The export then computes what the trained QLoRA model computed
//     (up to the rounding of W' to the output dtype), but it bakes the 4-bit quantization error into a 16-bit
//     checkpoint: every base weight moves to the nearest of 16 levels per block of 64.
//   k16Bit: W = the original checkpoint weight. Full precision is kept, but the adapter was fitted to the
//     quantized base, not to this one, so the merged model is not exactly the model that was trained; the
//     adapter's correction of quantization error becomes a small error itself.
//   (The same trade-off is discussed for peft's merge_and_unload on bnb models: huggingface/peft #2105, #2321.)
//   A bitsandbytes 4-bit base (models/bnb_checkpoint.h): W = dequant(the checkpoint's own NF4 arrays) for either
//     MergeBase (there is no 16-bit original; compute_dtype plays no part); its linears the adapter does not target
//     are written dequantized too, its quant-state tensors are dropped and config.json loses quantization_config.
//   Rule of thumb: kNf4 to reproduce the evaluated QLoRA model exactly; k16Bit when the adapter is small next to
//   the quantization noise and full-precision base weights matter more (compare both on held-out data).
// Output folder: config.json (the base's, with torch_dtype set to the output dtype), model.safetensors, or
// model-0000k-of-0000n.safetensors shards plus model.safetensors.index.json ({"metadata": {"total_size": N},
// "weight_map": {tensor: file}}; a shard closes when the next tensor would pass shard_bytes, as transformers'
// save_pretrained does), and copies of the tokenizer and generation files the base folder has.
// Atomic: everything goes to a temporary sibling folder that is renamed onto out_dir at the end; a failure
// removes it. An existing non-empty out_dir is refused unless `force` (then replaced, never merged into).
// Memory: host memory holds at most one tensor (plus the read-only mappings of the inputs); on CUDA the device
// holds one linear weight in f32, its NF4 form and the adapter.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "models/lora.h"

namespace models {

enum class MergeBase { kNf4, k16Bit };

struct ExportOptions {
  std::string model_dir;    // HF Gemma-2 folder the adapter was trained on
  std::string adapter_dir;  // peft LoRA adapter folder (adapter_config.json + adapter_model.safetensors)
  std::string out_dir;
  MergeBase base = MergeBase::kNf4;
  engine::DType out_dtype = engine::DType::kBF16;      // f32, f16 or bf16
  engine::DType compute_dtype = engine::DType::kBF16;  // kNf4: the dtype the weight was quantized from
                                                       // (training's compute dtype); f32, f16 or bf16
  int64_t shard_bytes = 5'000'000'000;  // max tensor bytes per shard (HF's "5GB"); one shard = model.safetensors
  bool force = false;                   // replace an existing non-empty out_dir
  // Called before each tensor is written (index in [0, count)): progress output. An exception thrown here
  // aborts the export like any other failure (nothing is left behind).
  std::function<void(const std::string& name, int64_t index, int64_t count)> on_tensor;
};

struct ExportResult {
  std::vector<std::string> files;  // written, relative to out_dir, sorted
  int64_t num_tensors = 0, num_merged = 0;
  int64_t total_bytes = 0;         // tensor data bytes (the index's total_size)
};

// Reads a peft adapter_config.json into a LoraSpec (dropout 0: merging is inference). Refuses what the merge
// cannot express: use_dora, rank_pattern/alpha_pattern, layers_to_transform, modules_to_save, bias other than
// "none", fan_in_fan_out, unknown target modules (a list of names or "all-linear").
LoraSpec lora_spec_from_peft(const std::string& adapter_dir);

ExportResult export_merged(const ExportOptions& opts, engine::Engine& eng);

// Copies the tokenizer and generation files (tokenizer.model, tokenizer.json, tokenizer_config.json,
// special_tokens_map.json, generation_config.json) that `from` has into `to`, each atomically; returns their names.
std::vector<std::string> copy_side_files(const std::string& from, const std::string& to);

}  // namespace models
