// tests/models/lora_cpu_test.cpp (label cpu): LoRA adapters: gradients against finite differences through
// the whole model (dense and NF4 base), peft's parameter count and file formats.
#include <unistd.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/philox.h"
#include "engine/safetensors.h"
#include "models/gemma2.h"
#include "models/gemma2_random.h"
#include "tests/test_util.h"

namespace {

using namespace models;
using test::Tol;

class LoraCpu : public ::testing::TestWithParam<bool> {
 protected:
  test::TempDir tmp_;
  std::string dir_ = tmp_.path();
};

TEST_P(LoraCpu, GradientsMatchFiniteDifferences) {
  const bool nf4 = GetParam();
  Gemma2Config c = tiny_config(/*D*/ 64, /*F*/ 64, /*L*/ 2, /*H*/ 2, /*KV*/ 1, /*HD*/ 8, /*V*/ 13);
  c.sliding_window = 3;
  c.attn_logit_softcapping = 2.0;
  c.final_logit_softcapping = 3.0;
  write_random_checkpoint(dir_, c, DType::kF32, RandomInit{4, 0.3, 0.2});
  Engine eng({engine::Backend::kCPU});
  Gemma2Options o;
  o.compute_dtype = DType::kF64;
  o.quantize_nf4 = nf4;
  Gemma2Model m = Gemma2Model::load(dir_, eng, o);
  LoraSpec ls;
  ls.r = 2;
  ls.alpha = 3;
  ls.dropout = 0;  // the FD loss runs without a tape, where dropout is off (eval mode)
  ls.targets = {"q_proj", "v_proj", "o_proj", "up_proj", "down_proj"};
  LoraAdapters lora(m.config(), ls, eng);
  for (int64_t i = 0; i < lora.num_params(); ++i)  // B = 0 would zero dA: use random adapters
    lora.params().ptr<float>()[i] = 0.3f * engine::philox_normal(3, 0, uint64_t(i));
  m.attach_lora(&lora, 1);
  const std::vector<int32_t> ids = {2, 7, 3, 9, 1, 2, 5, 8, 0, 0};
  const std::vector<int32_t> mask = {1, 1, 1, 1, 1, 1, 1, 1, 0, 0};
  std::vector<int32_t> labels = ids;
  labels[8] = labels[9] = -100;
  const Batch b = make_batch(eng, 2, 5, ids, mask, labels);
  Tensor loss = eng.empty({1}, DType::kF64);
  eng.zero(loss);
  m.forward_backward(b, 1.f, loss, engine::TensorView{});
  std::vector<double> ana(size_t(lora.num_params())), num(ana.size());
  for (size_t i = 0; i < ana.size(); ++i) ana[i] = lora.grads().ptr<float>()[i];
  for (size_t i = 0; i < num.size(); ++i) {
    float* p = lora.params().ptr<float>() + i;
    const float orig = *p, h = 1e-3f;
    *p = orig + h;
    const double fp = m.loss_sum(b);
    *p = orig - h;
    const double fm = m.loss_sum(b);
    *p = orig;
    num[i] = (fp - fm) / (double(orig + h) - double(orig - h));
  }
  // The adapters are f32: p +- h rounds by up to half an f32 ulp, a relative FD error of ~1e-4 at most.
  EXPECT_CLOSE(ana, num, (Tol{1e-5, 1e-3}));
  double mx = 0;
  for (double g : ana) mx = std::max(mx, std::fabs(g));
  EXPECT_GT(mx, 1e-3);
}

INSTANTIATE_TEST_SUITE_P(Base, LoraCpu, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& i) { return i.param ? "nf4" : "dense"; });

TEST(Lora, Gemma2bCountsLikePeft) {
  Engine eng({engine::Backend::kCPU});
  LoraAdapters lora(Gemma2Config::gemma2_2b(), LoraSpec{}, eng);
  EXPECT_EQ(lora.num_params(), 5191680);  // SPEC.md §4.4: r = 4 on the 7 linears of 26 layers
  EXPECT_EQ(lora.modules().size() * 2, 364u);
  EXPECT_EQ(lora.trainable_summary(2614341888),
            "trainable params: 5,191,680 || all params: 2,619,533,568 || trainable%: 0.1982");
  // kaiming_uniform(a=sqrt(5)): |A| <= 1/sqrt(in); B = 0.
  const LoraModule* down = lora.find(0, "down_proj");
  ASSERT_NE(down, nullptr);
  double amax = 0;
  for (int64_t i = 0; i < down->A.numel(); ++i) amax = std::max(amax, double(std::fabs(down->A.ptr<float>()[i])));
  EXPECT_LE(amax, 1.0 / 96);
  EXPECT_GT(amax, 0.9 / 96);
  for (int64_t i = 0; i < down->B.numel(); ++i) ASSERT_EQ(down->B.ptr<float>()[i], 0.f);
  LoraSpec bad;
  bad.targets = {"lm_head"};
  EXPECT_THROW(LoraAdapters(Gemma2Config::gemma2_2b(), bad, eng), engine::Error);
}

TEST(Lora, PeftFilesRoundTrip) {
  test::TempDir tmp;
  const std::string dir = tmp.path();
  Engine eng({engine::Backend::kCPU});
  const Gemma2Config c = tiny_config(16, 24, 2, 2, 1, 8, 11);
  LoraSpec ls;
  ls.r = 3;
  ls.alpha = 6;
  LoraAdapters a(c, ls, eng), b(c, ls, eng);
  for (int64_t i = 0; i < a.num_params(); ++i) a.params().ptr<float>()[i] = float(i) * 0.25f - 3.f;
  a.save_peft(dir, "/models/base");
  b.load_peft(dir);
  for (int64_t i = 0; i < a.num_params(); ++i) ASSERT_EQ(b.params().ptr<float>()[i], a.params().ptr<float>()[i]);
  engine::SafetensorsFile f(dir + "/adapter_model.safetensors");
  EXPECT_EQ(f.metadata().at("format"), "pt");
  const auto v = f.view("base_model.model.model.layers.1.mlp.down_proj.lora_A.weight");
  EXPECT_EQ(v.shape, (engine::Shape{3, 24}));
  EXPECT_EQ(v.dtype, DType::kF32);
  EXPECT_EQ(f.view("base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight").shape, (engine::Shape{8, 3}));
  std::ifstream in(dir + "/adapter_config.json");
  nlohmann::json j;
  in >> j;
  EXPECT_EQ(j["peft_type"], "LORA");
  EXPECT_EQ(j["task_type"], "CAUSAL_LM");
  EXPECT_EQ(j["r"], 3);
  EXPECT_EQ(j["lora_alpha"], 6);
  EXPECT_EQ(j["base_model_name_or_path"], "/models/base");
  EXPECT_EQ(j.size(), 24u);  // exactly peft 0.13.2's field set (SPEC.md §4.6)
  LoraSpec other = ls;
  other.r = 2;
  LoraAdapters wrong(c, other, eng);
  EXPECT_THROW(wrong.load_peft(dir), engine::Error);  // shapes differ: named error, not garbage
}

}  // namespace
