#include "models/gemma2.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>

#include "engine/safetensors.h"
#include "models/bnb_checkpoint.h"
#include "models/generate.h"
#include "ops/attention_decode.h"
#include "ops/elementwise.h"
#include "ops/lm_head_ce.h"
#include "ops/matmul.h"
#include "ops/random_fill.h"
#include "ops/softcap.h"

namespace models {
namespace {

// Copies a checkpoint tensor (host, any float dtype) into a new engine tensor of `dtype`, casting on the
// device when there is one, one tensor at a time so host memory stays bounded by the mapping.
Tensor load_tensor(Engine& eng, const engine::SafetensorsCheckpoint& ck, const std::string& name,
                   engine::Shape want, DType dtype) {
  ENGINE_CHECK(ck.contains(name), "checkpoint: missing tensor ", name, " (expected shape ", want.str(), ")");
  const TensorView src = ck.view(name);
  ENGINE_CHECK(src.shape == want, "checkpoint: tensor ", name, " has shape ", src.shape.str(), ", expected ",
               want.str());
  ENGINE_CHECK(src.dtype == DType::kF32 || src.dtype == DType::kF16 || src.dtype == DType::kBF16,
               "checkpoint: tensor ", name, " has dtype ", engine::dtype_name(src.dtype),
               ", expected bf16, f16 or f32");
  Tensor dst = eng.empty(want, dtype);
  if (!eng.is_cuda()) {
    ops::cpu::cast(dst, src);
    return dst;
  }
  Tensor staged = eng.empty(want, src.dtype);
  eng.copy(staged, src);
  ops::cast(dst, staged, eng);
  eng.synchronize();  // the mapping's pages must stay valid until the copy is done
  return dst;
}

// The dequantize workspace: the largest group of linears that share an input (q/k/v or gate/up), so that a
// group's weights are dequantized side by side (autograd::lora_linear_group); o and down fit in it too.
int64_t dequant_group_elems(const Gemma2Config& c) {
  const int64_t D = c.hidden_size, F = c.intermediate_size, H = c.num_attention_heads, KV = c.num_key_value_heads,
                HD = c.head_dim;
  return std::max({(H + 2 * KV) * HD * D, 2 * F * D, D * H * HD});
}

}  // namespace

Batch make_batch(Engine& eng, int64_t B, int64_t T, const std::vector<int32_t>& ids,
                 const std::vector<int32_t>& attention_mask, const std::vector<int32_t>& labels) {
  const int64_t N = B * T;
  ENGINE_CHECK(int64_t(ids.size()) == N && int64_t(labels.size()) == N &&
                   (attention_mask.empty() || int64_t(attention_mask.size()) == N),
               "make_batch: ids/labels/attention_mask must hold B*T = ", N, " entries");
  Batch b;
  b.batch = B;
  b.seq = T;
  auto upload = [&](const std::vector<int32_t>& v, engine::Shape s) {
    Tensor h = eng.empty_host(s, DType::kI32), d = eng.empty(s, DType::kI32);
    std::copy(v.begin(), v.end(), h.ptr<int32_t>());
    eng.copy(d, h);  // pageable source: staged at once, so h may go (no device sync)
    return d;
  };
  std::vector<int32_t> pos(static_cast<size_t>(N)), shifted(static_cast<size_t>(N));
  for (int64_t r = 0; r < B; ++r)
    for (int64_t t = 0; t < T; ++t) {
      pos[size_t(r * T + t)] = int32_t(t);
      shifted[size_t(r * T + t)] = t + 1 < T ? labels[size_t(r * T + t + 1)] : ops::kIgnoreIndex;
    }
  b.ids = upload(ids, {N});
  b.positions = upload(pos, {N});
  b.labels = upload(shifted, {N});
  if (!attention_mask.empty()) b.key_mask = upload(attention_mask, {B, T});
  return b;
}

Gemma2Model Gemma2Model::load(const std::string& dir, Engine& eng, const Gemma2Options& opts) {
  Gemma2Config cfg = Gemma2Config::from_json_file(dir + "/config.json");
  engine::SafetensorsCheckpoint ck(dir);
  Gemma2Model m(cfg, eng, opts);
  const int64_t D = cfg.hidden_size, F = cfg.intermediate_size, H = cfg.num_attention_heads,
                KV = cfg.num_key_value_heads, HD = cfg.head_dim, V = cfg.vocab_size;
  std::set<std::string> expected;
  // Norm weights and gradients are f32 (SPEC.md §0.2: norms cast to fp32), or f64 for f64 checks.
  const DType wide = opts.compute_dtype == DType::kF64 ? DType::kF64 : DType::kF32;
  auto load = [&](Param& p, const std::string& name, engine::Shape shape, bool norm) {
    p.name = name;
    p.value = load_tensor(eng, ck, name, shape, norm ? wide : opts.compute_dtype);
    if (opts.train_base) {
      p.grad = eng.empty(shape, wide);
      eng.zero(p.grad);
    }
    expected.insert(name);
  };
  ENGINE_CHECK(!(opts.train_base && opts.quantize_nf4), "full fine-tuning of an NF4-quantized model is not supported");
  int64_t max_linear = 0, n_dequantized = 0;
  auto load_linear = [&](Linear& l, const std::string& name, const char* target, int64_t out, int64_t in) {
    l.target = target;
    l.out = out;
    l.in = in;
    max_linear = std::max(max_linear, out * in);
    if (bnb_quantized(ck, name)) {  // already NF4: the arrays as they are
      for (const std::string& n : bnb_tensor_names(name)) expected.insert(n);
      ops::Nf4Storage q = load_bnb_nf4(eng, ck, name, out, in);
      if (opts.quantize_nf4) {
        l.nf4 = std::move(q);
        return;
      }
      l.dense.name = name;
      l.dense.value = eng.empty({out, in}, opts.compute_dtype);
      ops::nf4_dequantize(l.dense.value, q.view(), eng);
      if (opts.train_base) {
        l.dense.grad = eng.empty({out, in}, wide);
        eng.zero(l.dense.grad);
      }
      ++n_dequantized;
      return;
    }
    if (!opts.quantize_nf4) {
      load(l.dense, name, {out, in}, false);
      return;
    }
    // Quantize from the weight as materialised in the compute dtype (SPEC.md §3.2), then drop it.
    Tensor w = load_tensor(eng, ck, name, {out, in}, opts.compute_dtype);
    l.nf4 = ops::nf4_empty(out, in, eng);
    ops::nf4_quantize(l.nf4.view(), w, ops::Nf4QuantParams{}, eng);
    expected.insert(name);
  };
  load(m.embed_, "model.embed_tokens.weight", {V, D}, false);
  m.layers_.resize(size_t(cfg.num_hidden_layers));
  for (int64_t i = 0; i < cfg.num_hidden_layers; ++i) {
    Layer& L = m.layers_[size_t(i)];
    const std::string pre = "model.layers." + std::to_string(i) + ".";
    load(L.input_norm, pre + "input_layernorm.weight", {D}, true);
    load(L.post_attn_norm, pre + "post_attention_layernorm.weight", {D}, true);
    load(L.pre_ff_norm, pre + "pre_feedforward_layernorm.weight", {D}, true);
    load(L.post_ff_norm, pre + "post_feedforward_layernorm.weight", {D}, true);
    load_linear(L.q, pre + "self_attn.q_proj.weight", "q_proj", H * HD, D);
    load_linear(L.k, pre + "self_attn.k_proj.weight", "k_proj", KV * HD, D);
    load_linear(L.v, pre + "self_attn.v_proj.weight", "v_proj", KV * HD, D);
    load_linear(L.o, pre + "self_attn.o_proj.weight", "o_proj", D, H * HD);
    load_linear(L.gate, pre + "mlp.gate_proj.weight", "gate_proj", F, D);
    load_linear(L.up, pre + "mlp.up_proj.weight", "up_proj", F, D);
    load_linear(L.down, pre + "mlp.down_proj.weight", "down_proj", D, F);
  }
  load(m.final_norm_, "model.norm.weight", {D}, true);
  if (opts.quantize_nf4) {
    m.dequant_ws_ = eng.empty({std::max(max_linear, dequant_group_elems(cfg))}, opts.compute_dtype);
    m.stage_ = std::make_unique<autograd::DequantStage>(m.dequant_ws_, eng);
  }
  if (n_dequantized > 0) {
    const std::string note = engine::str_cat(dir, ": bitsandbytes 4-bit checkpoint: ", n_dequantized, " NF4 linear ",
                                             "weights dequantized to ", engine::dtype_name(opts.compute_dtype),
                                             " (a dense model was asked for; quantize_nf4 keeps them 4-bit)");
    if (opts.log) opts.log(note);
    else std::fprintf(stderr, "%s\n", note.c_str());
  }
  std::vector<std::string> unexpected;
  for (const auto& n : ck.names())
    if (!expected.count(n) && n != "lm_head.weight") unexpected.push_back(n);  // a tied copy is harmless
  if (!unexpected.empty()) {
    std::string msg = dir + ": unexpected tensors in the checkpoint:";
    for (size_t i = 0; i < unexpected.size() && i < 10; ++i) msg += " " + unexpected[i];
    if (unexpected.size() > 10) msg += " ... (" + std::to_string(unexpected.size()) + " in all)";
    throw engine::Error(msg);
  }
  return m;
}

Gemma2Model Gemma2Model::random(const Gemma2Config& cfg, Engine& eng, const Gemma2Options& opts,
                                const RandomInit& init) {
  const int64_t D = cfg.hidden_size, F = cfg.intermediate_size, H = cfg.num_attention_heads,
                KV = cfg.num_key_value_heads, HD = cfg.head_dim, V = cfg.vocab_size, L = cfg.num_hidden_layers;
  ENGINE_CHECK(D > 0 && F > 0 && H > 0 && KV > 0 && HD > 0 && V > 0 && L > 0 && H % KV == 0 && HD % 2 == 0 &&
                   int64_t(cfg.sliding.size()) == L,
               "Gemma2Model::random: invalid config (D=", D, " F=", F, " H=", H, " KV=", KV, " HD=", HD, " V=", V,
               " L=", L, ", ", cfg.sliding.size(), " sliding flags): sizes must be positive, H a multiple of KV, "
               "HD even, one sliding flag per layer");
  ENGINE_CHECK(!(opts.train_base && opts.quantize_nf4), "full fine-tuning of an NF4-quantized model is not supported");
  ENGINE_CHECK(std::isfinite(init.std) && init.std >= 0 && std::isfinite(init.norm_std) && init.norm_std >= 0,
               "Gemma2Model::random: std ", init.std, " and norm_std ", init.norm_std, " must be finite and >= 0");
  Gemma2Model m(cfg, eng, opts);
  const DType wide = opts.compute_dtype == DType::kF64 ? DType::kF64 : DType::kF32;
  // The dtype write_random_checkpoint would have stored (load() reads f32/f16/bf16 only).
  const DType ck = opts.compute_dtype == DType::kF64 ? DType::kF32 : opts.compute_dtype;
  uint64_t stream = 0;  // one Philox stream per tensor, in write_random_checkpoint's order
  // The next tensor's values as a `ck` checkpoint holds them, cast to dst's dtype as load() casts.
  auto fill = [&](TensorView dst, double sd) {
    const ops::RandomFillParams p{init.seed, ++stream, 0, sd};
    if (dst.dtype == ck) {
      ops::random_normal_fill(dst, p, eng);
      return;
    }
    Tensor tmp = eng.empty(dst.shape, ck);  // freed in stream order after the cast
    ops::random_normal_fill(tmp, p, eng);
    ops::cast(dst, tmp, eng);
  };
  auto dense = [&](Param& p, const std::string& name, engine::Shape shape, bool norm, double sd) {
    p.name = name;
    p.value = eng.empty(shape, norm ? wide : opts.compute_dtype);
    fill(p.value, sd);
    if (opts.train_base) {
      p.grad = eng.empty(shape, wide);
      eng.zero(p.grad);
    }
  };
  // QLoRA: the dequant workspace doubles as the one dense weight being filled and quantized.
  if (opts.quantize_nf4) {
    m.dequant_ws_ = eng.empty({dequant_group_elems(cfg)}, opts.compute_dtype);
    m.stage_ = std::make_unique<autograd::DequantStage>(m.dequant_ws_, eng);
  }
  auto linear = [&](Linear& l, const std::string& name, const char* target, int64_t out, int64_t in) {
    l.target = target;
    l.out = out;
    l.in = in;
    if (!opts.quantize_nf4) {
      dense(l.dense, name, {out, in}, false, init.std);
      return;
    }
    const TensorView w{m.dequant_ws_.data(), opts.compute_dtype, {out, in}, m.dequant_ws_.device()};
    fill(w, init.std);
    l.nf4 = ops::nf4_empty(out, in, eng);
    ops::nf4_quantize(l.nf4.view(), w, ops::Nf4QuantParams{}, eng);  // stream-ordered before the next fill
  };
  dense(m.embed_, "model.embed_tokens.weight", {V, D}, false, init.std);
  m.layers_.resize(size_t(L));
  for (int64_t i = 0; i < L; ++i) {
    Layer& ly = m.layers_[size_t(i)];
    const std::string pre = "model.layers." + std::to_string(i) + ".";
    dense(ly.input_norm, pre + "input_layernorm.weight", {D}, true, init.norm_std);
    linear(ly.q, pre + "self_attn.q_proj.weight", "q_proj", H * HD, D);
    linear(ly.k, pre + "self_attn.k_proj.weight", "k_proj", KV * HD, D);
    linear(ly.v, pre + "self_attn.v_proj.weight", "v_proj", KV * HD, D);
    linear(ly.o, pre + "self_attn.o_proj.weight", "o_proj", D, H * HD);
    dense(ly.post_attn_norm, pre + "post_attention_layernorm.weight", {D}, true, init.norm_std);
    dense(ly.pre_ff_norm, pre + "pre_feedforward_layernorm.weight", {D}, true, init.norm_std);
    linear(ly.gate, pre + "mlp.gate_proj.weight", "gate_proj", F, D);
    linear(ly.up, pre + "mlp.up_proj.weight", "up_proj", F, D);
    linear(ly.down, pre + "mlp.down_proj.weight", "down_proj", D, F);
    dense(ly.post_ff_norm, pre + "post_feedforward_layernorm.weight", {D}, true, init.norm_std);
  }
  dense(m.final_norm_, "model.norm.weight", {D}, true, init.norm_std);
  return m;
}

Var Gemma2Model::var(Tape& tape, Param& p) {
  if (p.grad.defined()) return tape.param(p.value, p.grad, p.name);
  return tape.constant(p.value, p.name);
}

void Gemma2Model::attach_lora(const LoraAdapters* lora, uint64_t dropout_seed) {
  lora_ = lora;
  dropout_seed_ = dropout_seed;
}

void Gemma2Model::refresh_lora_compute() {
  if (lora_ == nullptr) return;
  const Tensor& p = lora_->params();
  if (!lora_compute_.defined() || lora_compute_.numel() != p.numel() || lora_compute_.dtype() != opts_.compute_dtype)
    lora_compute_ = eng_->empty(p.shape(), opts_.compute_dtype);
  ops::cast(lora_compute_, p, *eng_);
}

// The compute-dtype twin of an A or B view into the adapters' flat f32 parameters.
engine::TensorView Gemma2Model::lora_compute_view(engine::TensorView master) const {
  const int64_t off = master.ptr<const float>() - lora_->params().view().ptr<const float>();
  engine::TensorView v = lora_compute_.view();
  v.data = static_cast<char*>(v.data) + size_t(off) * engine::dtype_size(v.dtype);
  v.shape = master.shape;
  return v;
}

std::vector<autograd::FrozenLinear> Gemma2Model::frozen(const std::vector<Linear*>& ws) {
  std::vector<autograd::FrozenLinear> bases;
  for (Linear* w : ws) {
    autograd::FrozenLinear base;
    base.out = w->out;
    base.in = w->in;
    if (w->dense.value.defined()) {
      base.dense = w->dense.value;
    } else {
      base.nf4 = w->nf4.view();
      base.stage = stage_.get();
    }
    bases.push_back(base);
  }
  return bases;
}

std::vector<Var> Gemma2Model::linears(Tape& tape, const Var& x, const std::vector<Linear*>& ws, int64_t layer,
                                      const std::vector<Linear*>& next, const std::vector<Linear*>& prev) {
  std::vector<Var> ys;
  if (ws.front()->dense.grad.defined()) {  // full fine-tuning
    for (Linear* w : ws) ys.push_back(autograd::linear(tape, x, var(tape, w->dense)));
    return ys;
  }
  std::vector<autograd::LoraBranch> brs(ws.size());  // outlive the call; lora_linear_group copies them
  std::vector<const autograd::LoraBranch*> loras;
  for (Linear* w : ws) {
    const LoraModule* m = lora_ ? lora_->find(layer, w->target) : nullptr;
    if (m == nullptr) {
      loras.push_back(nullptr);
      continue;
    }
    autograd::LoraBranch& br = brs[loras.size()];
    br.A = m->A; br.B = m->B; br.dA = m->dA; br.dB = m->dB;
    br.Ac = lora_compute_view(m->A);
    br.Bc = lora_compute_view(m->B);
    br.scaling = m->scaling;
    br.dropout = train_ ? m->dropout : 0.f;  // nn.Dropout is the identity in eval mode
    br.seed = dropout_seed_;
    // A's initialisation drew from (init seed, m->stream): a tagged stream keeps the masks independent of it
    // when both seeds are training.seed.
    br.stream = m->stream ^ 0x64726f706f7574ull;  // "dropout"
    br.offset = micro_step_ << 32;  // N*in < 2^32 elements per call: masks never overlap
    br.fuse_max_rank = opts_.lora_fuse_max_rank;
    loras.push_back(&br);
  }
  return autograd::lora_linear_group(tape, x, frozen(ws), loras, frozen(next), frozen(prev));
}

autograd::ResidualNorm Gemma2Model::layer_forward(Tape& tape, const Var& h, const Var& x_in, int64_t i,
                                                  const Batch& b, const Var& w_next) {
  Layer& L = layers_[size_t(i)];
  const Gemma2Config& c = cfg_;
  const float eps = float(c.rms_norm_eps);
  Var pos = tape.constant(b.positions, "positions");
  Var mask = b.key_mask.defined() ? tape.constant(b.key_mask, "key_mask") : Var();

  const Var x = x_in.defined() ? x_in : autograd::rmsnorm(tape, h, var(tape, L.input_norm), eps);
  std::vector<Linear*> before;  // the group before q/k/v: the previous layer's down_proj
  if (i > 0) before = {&layers_[size_t(i - 1)].down};
  const std::vector<Var> qkv = linears(tape, x, L.qkv(), i, {&L.o}, before);
  ops::AttentionParams ap;
  ap.batch = b.batch; ap.seq = b.seq; ap.heads = c.num_attention_heads; ap.kv_heads = c.num_key_value_heads;
  ap.head_dim = c.head_dim; ap.scale = c.attn_scale(); ap.softcap = float(c.attn_logit_softcapping);
  ap.window = c.sliding[size_t(i)] ? c.sliding_window : 0;
  const Var attn = autograd::attention(tape, qkv[0], qkv[1], qkv[2], pos, mask, ap, float(c.rope_theta),
                                       !opts_.recompute_attention_probs);
  return layer_tail(tape, h, attn, i, w_next);
}

autograd::ResidualNorm Gemma2Model::layer_tail(Tape& tape, const Var& h, const Var& attn, int64_t i,
                                               const Var& w_next) {
  Layer& L = layers_[size_t(i)];
  const float eps = float(cfg_.rms_norm_eps);
  Var o = linears(tape, attn, {&L.o}, i, {&L.gate, &L.up}, L.qkv())[0];
  const autograd::ResidualNorm attn_exit =
      autograd::residual_rmsnorm(tape, h, o, var(tape, L.post_attn_norm), var(tape, L.pre_ff_norm), eps);
  const Var h1 = attn_exit.sum, x2 = attn_exit.normed;
  const std::vector<Var> gu = linears(tape, x2, {&L.gate, &L.up}, i, {&L.down}, {&L.o});
  // The next layer's q/k/v are needed next, except in a checkpointed layer's recompute (its backward follows).
  const int64_t layers = cfg_.num_hidden_layers;
  const bool recompute = tape.recording() && i < recomputed_layers(opts_, layers);
  std::vector<Linear*> after;
  if (i + 1 < layers && !recompute) after = layers_[size_t(i + 1)].qkv();
  Var d = linears(tape, autograd::geglu(tape, gu[0], gu[1]), {&L.down}, i, after, {&L.gate, &L.up})[0];
  return autograd::residual_rmsnorm(tape, h1, d, var(tape, L.post_ff_norm), w_next, eps);
}

Var Gemma2Model::forward(Tape& tape, const Batch& b, bool train) {
  train_ = train;
  refresh_lora_compute();
  Var ids = tape.constant(b.ids, "ids");
  Var h = autograd::embedding(tape, ids, var(tape, embed_), std::sqrt(float(cfg_.hidden_size)),
                              opts_.compute_dtype);
  const int64_t L = cfg_.num_hidden_layers;
  const int64_t recomputed = recomputed_layers(opts_, L);
  Var x;  // input_norm(h) of the next layer, when the layer before computed it in its last kernel
  for (int64_t i = 0; i < L; ++i) {
    if (i < recomputed && tape.recording()) {  // the recompute starts from h alone
      h = autograd::checkpoint(tape, h, [this, i, &b](Tape& t, const Var& hh) {
        return layer_forward(t, hh, Var(), i, b, Var()).sum;
      });
      x = Var();
    } else {  // recomputed layers come first, so the next one is not: its input norm (or the final one) fuses
      const Var w_next = var(tape, i + 1 < L ? layers_[size_t(i + 1)].input_norm : final_norm_);
      const autograd::ResidualNorm r = layer_forward(tape, h, x, i, b, w_next);
      h = r.sum;
      x = r.normed;
    }
  }
  return x.defined() ? x : autograd::rmsnorm(tape, h, var(tape, final_norm_), float(cfg_.rms_norm_eps));
}

ops::LmHeadCeParams Gemma2Model::head_params(const Var& hidden, float grad_scale) const {
  ops::LmHeadCeParams p;
  p.rows = hidden.rows();
  p.dim = hidden.cols();
  p.vocab = cfg_.vocab_size;
  p.softcap = float(cfg_.final_logit_softcapping);
  p.grad_scale = grad_scale;
  return p;
}

void Gemma2Model::forward_backward(const Batch& b, float grad_scale, TensorView loss_sum, TensorView n_valid,
                                   engine::StepTimer* timer) {
  if (timer) timer->mark(engine::StepMark::kForwardStart);
  Tape tape(*eng_);
  Var hidden = forward(tape, b, /*train=*/true);
  if (timer) timer->mark(engine::StepMark::kForwardEnd);
  Tensor dhidden = eng_->empty(hidden.shape(), hidden.dtype());
  // The tied head's gradient (full fine-tuning only) comes from the fused op; the gather side comes
  // from the embedding node during backward.
  ops::lm_head_ce(loss_sum, n_valid, dhidden, ops::Accum::kSet, embed_.grad, hidden.t(), embed_.value, b.labels,
                  head_params(hidden, grad_scale), *eng_);
  if (timer) timer->mark(engine::StepMark::kBackwardStart);
  if (tape.num_nodes() > 0) tape.backward(hidden, dhidden);
  if (timer) timer->mark(engine::StepMark::kBackwardEnd);
}

double Gemma2Model::loss_sum(const Batch& b) {
  Tape tape(*eng_, /*recording=*/false);
  Var hidden = forward(tape, b, /*train=*/false);
  const DType wide = hidden.dtype() == DType::kF64 ? DType::kF64 : DType::kF32;
  Tensor loss = eng_->empty({1}, wide), host = eng_->empty_host({1}, wide);
  eng_->zero(loss);
  ops::lm_head_ce(loss, TensorView{}, TensorView{}, ops::Accum::kSet, TensorView{}, hidden.t(), embed_.value,
                  b.labels, head_params(hidden, 1.f), *eng_);
  eng_->copy(host, loss);
  eng_->synchronize();
  return engine::load_f64(host.data(), wide, 0);
}

Tensor Gemma2Model::logits(const Batch& b) {
  Tape tape(*eng_, /*recording=*/false);
  Var hidden = forward(tape, b, /*train=*/false);
  const int64_t N = hidden.rows(), V = cfg_.vocab_size;
  Tensor out = eng_->empty({N, V}, hidden.dtype());
  ops::MatmulParams p;
  p.m = N; p.n = V; p.k = hidden.cols(); p.trans_b = true;
  ops::matmul(out, hidden.t(), embed_.value, p, *eng_);
  if (cfg_.final_logit_softcapping > 0) ops::softcap(out, out, float(cfg_.final_logit_softcapping), *eng_);
  return out;
}

Tensor Gemma2Model::forward_cached(const std::vector<int32_t>& ids, KvCache& cache) {
  const Gemma2Config& c = cfg_;
  const int64_t n = int64_t(ids.size()), p0 = cache.len, V = c.vocab_size;
  const int64_t H = c.num_attention_heads, KV = c.num_key_value_heads, HD = c.head_dim;
  const float eps = float(c.rms_norm_eps);
  ENGINE_CHECK(n > 0, "forward_cached: no new tokens");
  ENGINE_CHECK(int64_t(cache.k.size()) == c.num_hidden_layers && int64_t(cache.v.size()) == c.num_hidden_layers &&
                   cache.dtype == opts_.compute_dtype && cache.k[0].shape() == engine::Shape({cache.max_len, KV * HD}),
               "forward_cached: the cache (", cache.k.size(), " layers, ", engine::dtype_name(cache.dtype),
               ") was not made for this model (", c.num_hidden_layers, " layers, KV*HD=", KV * HD, ", ",
               engine::dtype_name(opts_.compute_dtype), ")");
  ENGINE_CHECK(p0 + n <= cache.max_len, "forward_cached: ", p0, " cached + ", n, " new tokens exceed the cache's ",
               cache.max_len, " positions");
  refresh_lora_compute();
  for (int64_t t = 0; t < n; ++t)  // CUDA's embedding cannot throw: check here
    ENGINE_CHECK(ids[size_t(t)] >= 0 && ids[size_t(t)] < V, "forward_cached: token id ", ids[size_t(t)],
                 " at index ", t, " is outside the vocab [0, ", V, ")");
  auto upload = [&](const std::vector<int32_t>& v) {
    Tensor h = eng_->empty_host({int64_t(v.size())}, DType::kI32), d = eng_->empty({int64_t(v.size())}, DType::kI32);
    std::copy(v.begin(), v.end(), h.ptr<int32_t>());
    eng_->copy(d, h);  // pageable source: staged at once
    return d;
  };
  std::vector<int32_t> pos(static_cast<size_t>(n));
  for (int64_t t = 0; t < n; ++t) pos[size_t(t)] = int32_t(p0 + t);
  train_ = false;  // inference: LoRA dropout off, whatever ran before
  Tape tape(*eng_, /*recording=*/false);
  Var vpos = tape.constant(upload(pos), "positions");
  Var h = autograd::embedding(tape, tape.constant(upload(ids), "ids"), var(tape, embed_),
                              std::sqrt(float(c.hidden_size)), opts_.compute_dtype);
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {  // layer_forward with the attention on the cache
    Layer& L = layers_[size_t(i)];
    Var x = autograd::rmsnorm(tape, h, var(tape, L.input_norm), eps);
    const std::vector<Var> qkv = linears(tape, x, L.qkv(), i, {&L.o});
    Var q = qkv[0], k = qkv[1], v = qkv[2];
    q = autograd::rope(tape, q, vpos, H, HD, float(c.rope_theta));
    k = autograd::rope(tape, k, vpos, KV, HD, float(c.rope_theta));
    eng_->copy(cache.k[size_t(i)].view().slice_rows(p0, p0 + n), k.t());
    eng_->copy(cache.v[size_t(i)].view().slice_rows(p0, p0 + n), v.t());
    ops::AttentionDecodeParams ap;
    ap.queries = n; ap.past = p0; ap.heads = H; ap.kv_heads = KV; ap.head_dim = HD;
    ap.scale = c.attn_scale(); ap.softcap = float(c.attn_logit_softcapping);
    ap.window = c.sliding[size_t(i)] ? c.sliding_window : 0;
    Var a = tape.output({n, H * HD}, opts_.compute_dtype, "attention", false);
    ops::attention_decode_forward(a.t(), q.t(), cache.k[size_t(i)], cache.v[size_t(i)], ap, *eng_);
    h = layer_tail(tape, h, a, i, Var()).sum;
  }
  cache.len = p0 + n;
  // Only the last token's hidden state is needed: final norm and head on one row.
  const TensorView last = h.t().slice_rows(n - 1, n);
  Tensor hn = eng_->empty(last.shape, last.dtype), rstd = eng_->empty({1}, DType::kF32);
  ops::rmsnorm_forward(hn, rstd, last, final_norm_.value, ops::RmsNormParams{1, c.hidden_size, eps}, *eng_);
  Tensor out = eng_->empty({1, V}, hn.dtype());
  ops::MatmulParams p;
  p.m = 1; p.n = V; p.k = c.hidden_size; p.trans_b = true;
  ops::matmul(out, hn, embed_.value, p, *eng_);
  if (c.final_logit_softcapping > 0) ops::softcap(out, out, float(c.final_logit_softcapping), *eng_);
  return out;
}

std::vector<Param*> Gemma2Model::parameters() {
  std::vector<Param*> ps{&embed_};
  for (Layer& L : layers_) {
    for (Param* p : {&L.input_norm, &L.post_attn_norm, &L.pre_ff_norm, &L.post_ff_norm}) ps.push_back(p);
    for (Linear* l : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down})
      if (l->dense.value.defined()) ps.push_back(&l->dense);
  }
  ps.push_back(&final_norm_);
  return ps;
}

std::vector<std::pair<std::string, const ops::Nf4Storage*>> Gemma2Model::nf4_weights() const {
  std::vector<std::pair<std::string, const ops::Nf4Storage*>> out;
  for (size_t i = 0; i < layers_.size(); ++i) {
    const Layer& L = layers_[i];
    for (const Linear* l : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) {
      if (!l->nf4.packed.defined()) continue;
      const bool mlp = l == &L.gate || l == &L.up || l == &L.down;
      out.emplace_back("model.layers." + std::to_string(i) + (mlp ? ".mlp." : ".self_attn.") + l->target + ".weight",
                       &l->nf4);
    }
  }
  return out;
}

int64_t Gemma2Model::num_base_params() const {
  int64_t n = embed_.value.numel() + final_norm_.value.numel();
  for (const Layer& L : layers_) {
    for (const Param* p : {&L.input_norm, &L.post_attn_norm, &L.pre_ff_norm, &L.post_ff_norm}) n += p->value.numel();
    for (const Linear* l : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) n += l->out * l->in;
  }
  return n;
}

void Gemma2Model::zero_grads() {
  for (Param* p : parameters())
    if (p->grad.defined()) eng_->zero(p->grad);
}

}  // namespace models
