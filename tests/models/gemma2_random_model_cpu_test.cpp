// tests/models/gemma2_random_model_cpu_test.cpp (label cpu): Gemma2Model::random builds, without a file,
// exactly the model write_random_checkpoint + load gives: bit-identical parameters (dense, f32/bf16/f16,
// f64 compute) and bit-identical logits (NF4, whose weights are not Params), and the precondition errors.
#include <cmath>

#include "models/gemma2.h"
#include "models/gemma2_random.h"
#include "tests/test_util.h"

namespace {

using namespace models;

Gemma2Config small_config() {
  Gemma2Config c = tiny_config(/*D*/ 16, /*F*/ 40, /*L*/ 2, /*H*/ 4, /*KV*/ 2, /*HD*/ 8, /*V*/ 37);
  return c;
}

Batch token_batch(Engine& eng, int64_t V) {
  std::vector<int32_t> ids(12);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t((7 * i + 3) % size_t(V));
  return make_batch(eng, 2, 6, ids, {}, ids);
}

std::vector<double> values(const Tensor& t) {
  std::vector<double> v(size_t(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) v[size_t(i)] = engine::load_f64(t.data(), t.dtype(), i);
  return v;
}

std::vector<double> logits(Gemma2Model& m, const Batch& b) { return values(m.logits(b)); }

TEST(Gemma2RandomCpu, DenseParametersEqualTheCheckpointPath) {
  const Gemma2Config c = small_config();
  const RandomInit init{9, 0.05, 0.2};
  Engine eng({engine::Backend::kCPU});
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF16, DType::kF64}) {
    test::TempDir tmp;
    write_random_checkpoint(tmp.path(), c, dt == DType::kF64 ? DType::kF32 : dt, init);
    Gemma2Options o;
    o.compute_dtype = dt;
    o.train_base = true;  // every weight a Param, with a zeroed gradient
    Gemma2Model loaded = Gemma2Model::load(tmp.path(), eng, o);
    Gemma2Model made = Gemma2Model::random(c, eng, o, init);
    const auto pl = loaded.parameters(), pm = made.parameters();
    ASSERT_EQ(pl.size(), pm.size());
    EXPECT_EQ(made.num_base_params(), loaded.num_base_params());
    for (size_t i = 0; i < pl.size(); ++i) {
      EXPECT_EQ(pm[i]->name, pl[i]->name);
      EXPECT_EQ(pm[i]->value.dtype(), pl[i]->value.dtype()) << pl[i]->name;
      EXPECT_EQ(pm[i]->value.shape(), pl[i]->value.shape()) << pl[i]->name;
      EXPECT_EQ(values(pm[i]->value), values(pl[i]->value)) << engine::dtype_name(dt) << " " << pl[i]->name;
      ASSERT_TRUE(pm[i]->grad.defined()) << pl[i]->name;
      for (double g : values(pm[i]->grad)) ASSERT_EQ(g, 0.0) << pl[i]->name;
    }
    const Batch b = token_batch(eng, c.vocab_size);
    EXPECT_EQ(made.loss_sum(b), loaded.loss_sum(b)) << engine::dtype_name(dt);
  }
}

TEST(Gemma2RandomCpu, QuantizedModelGivesIdenticalLogits) {
  const Gemma2Config c = small_config();
  const RandomInit init{4, 0.1, 0.1};
  Engine eng({engine::Backend::kCPU});
  for (DType dt : {DType::kF32, DType::kBF16}) {
    test::TempDir tmp;
    write_random_checkpoint(tmp.path(), c, dt, init);
    Gemma2Options o;
    o.compute_dtype = dt;
    o.quantize_nf4 = true;
    Gemma2Model loaded = Gemma2Model::load(tmp.path(), eng, o);
    Gemma2Model made = Gemma2Model::random(c, eng, o, init);
    EXPECT_EQ(made.parameters().size(), loaded.parameters().size());  // embed + norms: NF4 linears are not Params
    const Batch b = token_batch(eng, c.vocab_size);
    const auto want = logits(loaded, b), got = logits(made, b);
    EXPECT_EQ(got, want) << engine::dtype_name(dt);
    // A different seed gives a different model: the comparison is not vacuous.
    Gemma2Model other = Gemma2Model::random(c, eng, o, RandomInit{5, 0.1, 0.1});
    EXPECT_NE(logits(other, b), want);
  }
}

TEST(Gemma2RandomCpu, WeightsHaveTheRequestedStatistics) {
  Gemma2Config c = tiny_config(64, 128, 1, 4, 2, 16, 300);
  Engine eng({engine::Backend::kCPU});
  Gemma2Options o;
  o.compute_dtype = DType::kF32;
  Gemma2Model m = Gemma2Model::random(c, eng, o, RandomInit{1, 0.02, 0.1});
  for (Param* p : m.parameters()) {
    const auto v = values(p->value);
    double s2 = 0;
    for (double x : v) s2 += x * x;
    const double sd = std::sqrt(s2 / double(v.size()));
    const double want = p->name.find("norm") != std::string::npos ? 0.1 : 0.02;
    EXPECT_NEAR(sd, want, want * 6 / std::sqrt(double(v.size()))) << p->name;  // ~ 4 sigma of the estimate
  }
}

TEST(Gemma2RandomCpu, RejectsBadConfigAndOptions) {
  Engine eng({engine::Backend::kCPU});
  Gemma2Options o;
  Gemma2Config c = small_config();
  c.num_key_value_heads = 3;  // 4 heads are not a multiple of 3
  EXPECT_THROW(Gemma2Model::random(c, eng, o, RandomInit{}), engine::Error);
  c = small_config();
  c.head_dim = 7;
  EXPECT_THROW(Gemma2Model::random(c, eng, o, RandomInit{}), engine::Error);
  c = small_config();
  c.sliding.pop_back();
  EXPECT_THROW(Gemma2Model::random(c, eng, o, RandomInit{}), engine::Error);
  c = small_config();
  c.vocab_size = 0;
  EXPECT_THROW(Gemma2Model::random(c, eng, o, RandomInit{}), engine::Error);
  EXPECT_THROW(Gemma2Model::random(small_config(), eng, o, RandomInit{1, -0.1, 0.1}), engine::Error);
  EXPECT_THROW(Gemma2Model::random(small_config(), eng, o, RandomInit{1, 0.1, NAN}), engine::Error);
  Gemma2Options both;
  both.train_base = true;
  both.quantize_nf4 = true;
  EXPECT_THROW(Gemma2Model::random(small_config(), eng, both, RandomInit{}), engine::Error);
}

}  // namespace
