// tests/models/gemma2_cpu_test.cpp (label cpu): the whole Gemma-2 model on the CPU backend.
//   Full-model finite-difference check of every parameter gradient in f64 (full fine-tuning is the
//   strongest test of backward), checkpointing equivalence, config and checkpoint error paths.
#include <unistd.h>

#include <cmath>
#include <fstream>

#include "engine/safetensors.h"
#include "models/gemma2.h"
#include "models/gemma2_random.h"
#include "tests/test_util.h"

namespace {

using namespace models;
using test::Tol;

class Gemma2Cpu : public ::testing::Test {
 protected:
  test::TempDir tmp_;
  std::string dir_ = tmp_.path();

  // B=2, T=5; the second row is right-padded by 2 (mask 0, labels -100).
  static Batch batch(Engine& eng, int64_t vocab) {
    const std::vector<int32_t> ids = {2, 7, 3, 9, 1, 2, 5, 8, 0, 0};
    std::vector<int32_t> ids_v(ids);
    for (auto& v : ids_v) v = int32_t(v % vocab);
    const std::vector<int32_t> mask = {1, 1, 1, 1, 1, 1, 1, 1, 0, 0};
    std::vector<int32_t> labels = ids_v;
    labels[8] = labels[9] = -100;
    return make_batch(eng, 2, 5, ids_v, mask, labels);
  }
};

TEST_F(Gemma2Cpu, FullModelGradientsMatchFiniteDifferences) {
  // Odd sizes, GQA 2, head_dim != hidden/heads, window 3 < T on the sliding layer 0; layer 1 full.
  Gemma2Config c = tiny_config(/*D*/ 6, /*F*/ 10, /*L*/ 2, /*H*/ 2, /*KV*/ 1, /*HD*/ 4, /*V*/ 11);
  c.sliding_window = 3;
  c.attn_logit_softcapping = 2.0;   // small caps keep tanh in its curved region
  c.final_logit_softcapping = 3.0;
  write_random_checkpoint(dir_, c, DType::kF32, RandomInit{3, 0.5, 0.3});
  Engine eng({engine::Backend::kCPU});
  Gemma2Options o;
  o.compute_dtype = DType::kF64;
  o.train_base = true;
  Gemma2Model m = Gemma2Model::load(dir_, eng, o);
  const Batch b = batch(eng, c.vocab_size);
  Tensor loss = eng.empty({1}, DType::kF64), nv = eng.empty({1}, DType::kI32);
  eng.zero(loss);
  eng.zero(nv);
  m.forward_backward(b, 1.f, loss, nv);
  EXPECT_EQ(nv.ptr<int32_t>()[0], 4 + 2);  // shifted targets: 4 in row 0, 2 in row 1 (padding ignored)
  EXPECT_NEAR(loss.ptr<double>()[0], m.loss_sum(b), 1e-12);
  for (Param* p : m.parameters()) {
    std::vector<double> num(size_t(p->value.numel()));
    for (int64_t i = 0; i < p->value.numel(); ++i) {
      double* v = p->value.ptr<double>() + i;
      const double orig = *v, h = 1e-5;
      *v = orig + h;
      const double fp = m.loss_sum(b);
      *v = orig - h;
      const double fm = m.loss_sum(b);
      *v = orig;
      num[size_t(i)] = (fp - fm) / (2 * h);
    }
    std::vector<double> ana(num.size());
    for (size_t i = 0; i < ana.size(); ++i) ana[i] = p->grad.ptr<double>()[i];
    EXPECT_CLOSE(ana, num, (Tol{1e-6, 1e-5})) << p->name;
    double mx = 0;
    for (double g : ana) mx = std::max(mx, std::fabs(g));
    EXPECT_GT(mx, 1e-4) << p->name << ": a zero gradient would make the check vacuous";
  }
}

TEST_F(Gemma2Cpu, CheckpointingGivesIdenticalGradients) {
  // Every memory mode computes the same values: none, all layers recomputed, the first of two only, and
  // attention probabilities recomputed in backward (alone and with partial checkpointing).
  Gemma2Config c = tiny_config(8, 12, 2, 4, 2, 4, 13);
  write_random_checkpoint(dir_, c, DType::kF32, RandomInit{5, 0.3, 0.2});
  Engine eng({engine::Backend::kCPU});
  struct Mode { bool ckpt; int64_t layers; bool recompute_probs; };
  const Mode modes[] = {{false, -1, false}, {true, -1, false}, {true, 1, false}, {false, -1, true}, {true, 1, true}};
  std::vector<std::vector<double>> grads[5];
  double losses[5];
  for (int mi = 0; mi < 5; ++mi) {
    Gemma2Options o;
    o.compute_dtype = DType::kF32;
    o.train_base = true;
    o.gradient_checkpointing = modes[mi].ckpt;
    o.checkpoint_layers = modes[mi].layers;
    o.recompute_attention_probs = modes[mi].recompute_probs;
    Gemma2Model m = Gemma2Model::load(dir_, eng, o);
    const Batch b = batch(eng, c.vocab_size);
    Tensor loss = eng.empty({1}, DType::kF32);
    eng.zero(loss);
    m.forward_backward(b, 0.25f, loss, TensorView{});
    losses[mi] = loss.ptr<float>()[0];
    for (Param* p : m.parameters()) {
      std::vector<double> g(size_t(p->grad.numel()));
      for (size_t i = 0; i < g.size(); ++i) g[i] = p->grad.ptr<float>()[i];
      grads[mi].push_back(g);
    }
  }
  for (int mi = 1; mi < 5; ++mi) {
    EXPECT_EQ(losses[0], losses[mi]) << "mode " << mi;
    for (size_t i = 0; i < grads[0].size(); ++i) EXPECT_EQ(grads[0][i], grads[mi][i]) << "mode " << mi << " param " << i;
  }
  Gemma2Options bad;
  bad.gradient_checkpointing = true;
  bad.checkpoint_layers = 3;  // the model has 2
  try {
    Gemma2Model::load(dir_, eng, bad);
    ADD_FAILURE() << "checkpoint_layers = 3 of 2 layers accepted";
  } catch (const engine::Error& e) {
    EXPECT_NE(std::string(e.what()).find("checkpoint_layers must be -1 (all) or in [0, 2]"), std::string::npos)
        << e.what();
  }
}

TEST_F(Gemma2Cpu, CheckpointingReplaysLoraDropout) {
  // QLoRA with dropout: the recomputed layer must use the masks of the first pass.
  Gemma2Config c = tiny_config(16, 24, 2, 2, 1, 8, 13);
  write_random_checkpoint(dir_, c, DType::kF32, RandomInit{6, 0.3, 0.2});
  Engine eng({engine::Backend::kCPU});
  std::vector<float> grads[2];
  for (int ck = 0; ck < 2; ++ck) {
    Gemma2Options o;
    o.quantize_nf4 = true;
    o.gradient_checkpointing = ck == 1;
    Gemma2Model m = Gemma2Model::load(dir_, eng, o);
    LoraSpec ls;
    ls.dropout = 0.3;
    LoraAdapters lora(m.config(), ls, eng);
    for (int64_t i = 0; i < lora.num_params(); ++i) lora.params().ptr<float>()[i] = 0.01f * float(i % 17) - 0.05f;
    m.attach_lora(&lora, 5);
    m.set_micro_step(2);
    const Batch b = batch(eng, c.vocab_size);
    Tensor loss = eng.empty({1}, DType::kF32);
    eng.zero(loss);
    m.forward_backward(b, 0.5f, loss, TensorView{});
    grads[ck].assign(lora.grads().ptr<float>(), lora.grads().ptr<float>() + lora.num_params());
  }
  EXPECT_EQ(grads[0], grads[1]);
}

TEST_F(Gemma2Cpu, CheckpointErrorsNameTheTensor) {
  Gemma2Config c = tiny_config(8, 12, 1, 2, 1, 4, 13);
  write_random_checkpoint(dir_, c, DType::kBF16, RandomInit{});
  Engine eng({engine::Backend::kCPU});
  auto expect_error = [&](const std::string& needle) {
    try {
      Gemma2Model::load(dir_, eng, Gemma2Options{});
      ADD_FAILURE() << "no error; expected: " << needle;
    } catch (const engine::Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  // Wrong shape: config says 2 heads of 4, checkpoint has them; now claim 3 heads.
  Gemma2Config wrong = c;
  wrong.num_attention_heads = 3;
  wrong.num_key_value_heads = 1;
  engine::write_file_atomic(dir_ + "/config.json", wrong.to_json());
  expect_error("model.layers.0.self_attn.q_proj.weight has shape (8,8), expected (12,8)");
  // Unknown architecture and missing fields: one error listing all of them.
  engine::write_file_atomic(dir_ + "/config.json", R"({"model_type": "llama", "hidden_size": 8})");
  expect_error("model_type is \"llama\"");
  expect_error("missing or non-integer \"vocab_size\"");
  // Missing tensor.
  engine::write_file_atomic(dir_ + "/config.json", c.to_json());
  {
    engine::SafetensorsFile f(dir_ + "/model.safetensors");
    std::vector<std::pair<std::string, TensorView>> keep;
    for (const auto& n : f.names())
      if (n != "model.norm.weight") keep.emplace_back(n, f.view(n));
    engine::write_safetensors(dir_ + "/model2.safetensors", keep);
  }
  std::rename((dir_ + "/model2.safetensors").c_str(), (dir_ + "/model.safetensors").c_str());
  expect_error("missing tensor model.norm.weight");
}

}  // namespace
