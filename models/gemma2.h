// models/gemma2.h: the Gemma-2 decoder exactly as transformers computes it (SPEC.md §1), on the tape.
//   h = embed(ids) * sqrt(D)
//   per layer: h += post_attn_norm(o_proj(attn(rope(q), rope(k), v)(input_norm(h))))
//              h += post_ff_norm(down(gelu_tanh(gate(x)) * up(x))),  x = pre_ff_norm(h)
//   hidden = final_norm(h); logits = softcap(hidden @ E^T, 30); loss = shifted CE, ignore -100.
// Shapes: N = B*T tokens; activations are (N, C) row-major in the compute dtype; norm weights f32.
#pragma once
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "autograd/functions.h"
#include "engine/step_timer.h"
#include "models/gemma2_config.h"
#include "models/gemma2_random.h"
#include "models/lora.h"
#include "ops/lm_head_ce.h"
#include "ops/nf4.h"

namespace models {

using autograd::Tape;
using autograd::Var;
using engine::DType;
using engine::Engine;
using engine::Tensor;
using engine::TensorView;

// One micro-batch, already on the engine's device. Labels are shifted: labels[i] is the target of
// position i (the next token), -100 where there is none.
struct Batch {
  int64_t batch = 0, seq = 0;  // B, T
  Tensor ids;                  // (N) i32
  Tensor positions;            // (N) i32
  Tensor key_mask;             // (B, T) i32, 1 = real token; undefined = no padding
  Tensor labels;               // (N) i32
};

// Builds a batch on the engine's device from host data laid out (B, T): positions 0..T-1 per row (HF does
// not shift them for padding), labels shifted left by one with -100 at the end of each row (SPEC.md §1.7).
// attention_mask empty = no padding; labels use -100 for ignored tokens.
Batch make_batch(Engine& eng, int64_t B, int64_t T, const std::vector<int32_t>& ids,
                 const std::vector<int32_t>& attention_mask, const std::vector<int32_t>& labels);

struct KvCache;  // models/generate.h

struct Gemma2Options {
  DType compute_dtype = DType::kF32;  // activations and dense weights: f32, bf16 or f16
  bool train_base = false;            // full fine-tuning: every parameter trainable (f32 grads)
  bool quantize_nf4 = false;          // QLoRA: linear weights stored as NF4 + double quant (SPEC.md §3)
  bool gradient_checkpointing = false;
  // With gradient_checkpointing: the first checkpoint_layers layers are recomputed in backward, the others
  // keep their activations (speed for memory); -1 = every layer. 0..num_hidden_layers, else load()/random()
  // throw.
  int64_t checkpoint_layers = -1;
  // No layer keeps its (B, H, T, T) attention probabilities for backward, which recomputes them (one row
  // pass per layer): most of a layer's saved activations at long sequences.
  bool recompute_attention_probs = false;
  int64_t lora_fuse_max_rank = autograd::kLoraFuseMaxRank;  // LoraBranch::fuse_max_rank of every adapter
  // Notes from load() (a bitsandbytes 4-bit checkpoint dequantized for a dense model); unset: one line on stderr.
  std::function<void(const std::string&)> log;
};

// The layers Gemma2Model::forward recomputes in backward under `o` (0 without gradient checkpointing).
inline int64_t recomputed_layers(const Gemma2Options& o, int64_t num_layers) {
  return !o.gradient_checkpointing ? 0 : o.checkpoint_layers < 0 ? num_layers : o.checkpoint_layers;
}

struct Param {
  std::string name;  // the HF tensor name
  Tensor value;
  Tensor grad;       // f32 (f64 when computing in f64), defined when trainable
};

class Gemma2Model {
 public:
  // Loads config.json and the safetensors weights of an HF checkpoint folder. A linear weight that the checkpoint
  // stores bitsandbytes-4-bit quantized (models/bnb_checkpoint.h) is taken as it is into NF4 storage with
  // quantize_nf4; without quantize_nf4 it is dequantized (SPEC.md §3.5) to the compute dtype (noted via opts.log).
  static Gemma2Model load(const std::string& dir, Engine& eng, const Gemma2Options& opts);
  // Builds the model from random weights on the engine's device, no file: the weights load() gives for
  // write_random_checkpoint(dir, cfg, ck, init) with ck = the compute dtype (f32 when computing in f64).
  // The same Philox streams, filled on the device by ops::random_normal_fill (CPU: bit-identical; CUDA: up
  // to the libm ulp of engine/philox.h). With quantize_nf4, each linear weight is filled into one scratch
  // buffer and quantized from there, so one dense weight is resident at a time.
  static Gemma2Model random(const Gemma2Config& cfg, Engine& eng, const Gemma2Options& opts,
                            const RandomInit& init);

  const Gemma2Config& config() const { return cfg_; }
  const Gemma2Options& options() const { return opts_; }
  Engine& engine() const { return *eng_; }

  // The final-normed hidden states (N, D). `train`: LoRA dropout active (nn.Module.train()); a recomputed
  // (checkpointed) layer replays the same masks.
  Var forward(Tape& tape, const Batch& b, bool train);
  // Forward, fused LM head + softcap + CE, and backward. loss_sum (f32 scalar) += sum of token CE;
  // n_valid (i32 scalar) += label count. Gradients are scaled by grad_scale (the trainer's
  // loss_scale / N_total) and accumulate into the trainable parameters' grads.
  // timer (optional): marks forward start/end (end = before the head), backward start/end.
  void forward_backward(const Batch& b, float grad_scale, TensorView loss_sum, TensorView n_valid,
                        engine::StepTimer* timer = nullptr);
  // Sum of token CE over the batch (no gradients); synchronizes. For evaluation and tests.
  double loss_sum(const Batch& b);
  // softcapped logits (N, V) in the compute dtype, as HF's model(...).logits (inference; no tape).
  Tensor logits(const Batch& b);
  // Generation (models/generate.h): runs the new tokens `ids` at positions cache.len.., appends their keys
  // (after RoPE) and values to the cache, attends over the whole cache (ops/attention_decode.h) and returns
  // the softcapped logits (1, V) of the LAST new token in the compute dtype. No tape; LoRA adapters apply
  // (dropout off). Throws when the cache cannot hold them or an id is outside the vocab.
  Tensor forward_cached(const std::vector<int32_t>& ids, KvCache& cache);

  // Adapters to apply (nullptr: none); `seed` keys their dropout masks. The model does not own them.
  void attach_lora(const LoraAdapters* lora, uint64_t dropout_seed);
  // Selects fresh dropout masks: call once per micro-batch with a new index (a recomputed layer reuses it).
  void set_micro_step(uint64_t step) { micro_step_ = step; }

  std::vector<Param*> parameters();  // dense parameters (NF4 weights are not Params)
  // The NF4-stored linear weights with their HF names, in layer order (empty without quantize_nf4).
  std::vector<std::pair<std::string, const ops::Nf4Storage*>> nf4_weights() const;
  int64_t num_base_params() const;   // every base weight, quantized ones counted unpacked
  void zero_grads();

 private:
  struct Linear {
    std::string target;     // "q_proj", ...
    int64_t out = 0, in = 0;
    Param dense;            // (out, in) in the compute dtype; empty when quantized
    ops::Nf4Storage nf4;    // when quantized
  };
  struct Layer {
    Param input_norm, post_attn_norm, pre_ff_norm, post_ff_norm;
    Linear q, k, v, o, gate, up, down;
    std::vector<Linear*> qkv() { return {&q, &k, &v}; }
  };
  // Linear layers that read the same x (q/k/v, gate/up): one autograd::lora_linear_group. next / prev: the
  // groups that run after / before it in forward (the dequantize stage's prefetch hints).
  std::vector<Var> linears(Tape& tape, const Var& x, const std::vector<Linear*>& ws, int64_t layer,
                           const std::vector<Linear*>& next = {}, const std::vector<Linear*>& prev = {});
  std::vector<autograd::FrozenLinear> frozen(const std::vector<Linear*>& ws);
  Gemma2Model(Gemma2Config cfg, Engine& eng, Gemma2Options opts) : cfg_(std::move(cfg)), eng_(&eng), opts_(opts) {
    ENGINE_CHECK(opts_.checkpoint_layers >= -1 && opts_.checkpoint_layers <= cfg_.num_hidden_layers,
                 "checkpoint_layers must be -1 (all) or in [0, ", cfg_.num_hidden_layers,
                 "] (the model's num_hidden_layers), got ", opts_.checkpoint_layers);
  }
  // Layer i on the residual stream h. x: input_norm(h) when the previous layer's exit computed it (undefined:
  // computed here). w_next: the norm that follows the layer (the next layer's input norm, or the final norm),
  // applied in the layer's last kernel; undefined: none (.normed is then undefined).
  autograd::ResidualNorm layer_forward(Tape& tape, const Var& h, const Var& x, int64_t i, const Batch& b,
                                       const Var& w_next);
  // o_proj, post-attention norm and residual, then the MLP block with its norms and residual (and w_next).
  autograd::ResidualNorm layer_tail(Tape& tape, const Var& h, const Var& attn, int64_t i, const Var& w_next);
  Var var(Tape& tape, Param& p);
  void refresh_lora_compute();
  engine::TensorView lora_compute_view(engine::TensorView master) const;
  ops::LmHeadCeParams head_params(const Var& hidden, float grad_scale) const;

  Gemma2Config cfg_;
  Engine* eng_;
  Gemma2Options opts_;
  Param embed_, final_norm_;
  std::vector<Layer> layers_;
  Tensor dequant_ws_;                  // one group's dequantized weights at a time (QLoRA)
  std::unique_ptr<autograd::DequantStage> stage_;  // what dequant_ws_ holds, and its prefetches
  Tensor lora_compute_;                // the adapters' f32 parameters in the compute dtype, cast once per
                                       // forward (one kernel instead of two casts per linear)
  const LoraAdapters* lora_ = nullptr;
  uint64_t dropout_seed_ = 0, micro_step_ = 0;
  bool train_ = false;                 // set by forward(): dropout on in training, off in eval
};

}  // namespace models
