// tests/models/bnb_checkpoint_gpu_test.cpp (label gpu): bitsandbytes 4-bit checkpoints on CUDA. Loading copies
// the arrays (bit-identical to the CPU load), the model's logits match the CPU's, the dense (dequantized) load
// matches the NF4 one, the writer on CUDA stores what the CUDA loader quantizes, and the export from a bnb base
// on CUDA matches the CPU export.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "engine/safetensors.h"
#include "models/bnb_checkpoint.h"
#include "models/export.h"
#include "models/gemma2.h"
#include "models/gemma2_random.h"
#include "tests/models/model_test_util.h"
#include "tests/test_util.h"

namespace {

namespace fs = std::filesystem;
using namespace models;
using test::Tol;

// max |a - b| / max |b|
double rel_max(const std::vector<double>& a, const std::vector<double>& b) {
  double d = 0, m = 0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, std::fabs(a[i] - b[i])), m = std::max(m, std::fabs(b[i]));
  return d / std::max(m, 1e-30);
}

class BnbGpu : public ::testing::Test {
 protected:
  void SetUp() override {
    if (engine::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device on this machine";
    // cols % 64 == 0, as every Gemma-2 linear (the NF4 rows kernel's alignment); F*D = 40960: 640 blocks,
    // three absmax2 chunks, the last partial.
    cfg_ = tiny_config(/*D*/ 128, /*F*/ 320, /*L*/ 2, /*H*/ 4, /*KV*/ 2, /*HD*/ 32, /*V*/ 61);
    fs::create_directories(dense_);
    write_random_checkpoint(dense_, cfg_, DType::kBF16, RandomInit{9, 0.05, 0.2});
    write_bnb_checkpoint(dense_, bnb_, DType::kBF16, cpu_);
  }

  static Gemma2Options opts(DType dt, bool nf4) {
    Gemma2Options o;
    o.compute_dtype = dt;
    o.quantize_nf4 = nf4;
    o.log = [](const std::string&) {};
    return o;
  }

  std::vector<double> logits(Engine& eng, Gemma2Model& m) {
    const std::vector<int32_t> ids = {2, 17, 3, 9, 60, 2, 5, 48, 30, 36, 1, 4}, mask(12, 1);
    return test::host_values(eng, m.logits(make_batch(eng, 2, 6, ids, mask, ids)));
  }


  Engine cpu_{{engine::Backend::kCPU}};
  test::TempDir tmp_;
  std::string dense_ = tmp_.file("dense"), bnb_ = tmp_.file("bnb");
  Gemma2Config cfg_;
};

TEST_F(BnbGpu, LoadCopiesTheArraysAndMatchesTheCpuModel) {
  Engine gpu({engine::Backend::kCUDA});
  Gemma2Model g = Gemma2Model::load(bnb_, gpu, opts(DType::kF32, true));
  Gemma2Model c = Gemma2Model::load(bnb_, cpu_, opts(DType::kF32, true));
  test::expect_same_nf4_arrays(gpu, g, cpu_, c);
  // Dequantization is bit-identical; cuBLASLt's f32 sums differ from the CPU's (as in gemma2_gpu_test).
  EXPECT_LT(rel_max(logits(gpu, g), logits(cpu_, c)), 2e-4);
  Gemma2Model gb = Gemma2Model::load(bnb_, gpu, opts(DType::kBF16, true));
  Gemma2Model cb = Gemma2Model::load(bnb_, cpu_, opts(DType::kBF16, true));
  // bf16: each op rounds to 8 bits, the backends round different f32 values near boundaries (gemma2_gpu_test).
  EXPECT_LT(rel_max(logits(gpu, gb), logits(cpu_, cb)), 5e-2);
}

TEST_F(BnbGpu, DenseLoadMatchesTheNf4Model) {
  Engine gpu({engine::Backend::kCUDA});
  Gemma2Model dense = Gemma2Model::load(bnb_, gpu, opts(DType::kF32, false));
  Gemma2Model nf4 = Gemma2Model::load(bnb_, gpu, opts(DType::kF32, true));
  EXPECT_TRUE(dense.nf4_weights().empty());
  // The same dequantized f32 weights, multiplied once at load or per call.
  EXPECT_CLOSE(logits(gpu, dense), logits(gpu, nf4), (Tol{1e-5, 1e-5}));
}

TEST_F(BnbGpu, WriterOnCudaStoresWhatTheCudaLoaderQuantizes) {
  Engine gpu({engine::Backend::kCUDA});
  write_bnb_checkpoint(dense_, tmp_.file("bnb_gpu"), DType::kBF16, gpu);
  Gemma2Model from_bnb = Gemma2Model::load(tmp_.file("bnb_gpu"), gpu, opts(DType::kBF16, true));
  Gemma2Model from_dense = Gemma2Model::load(dense_, gpu, opts(DType::kBF16, true));
  test::expect_same_nf4_arrays(gpu, from_bnb, gpu, from_dense);
}

TEST_F(BnbGpu, ExportFromABnbBaseMatchesTheCpuExport) {
  LoraSpec s;
  s.r = 8;
  s.alpha = 16;
  test::write_random_adapter(cfg_, s, 5, 0.1f, tmp_.file("adapter"), dense_);
  Engine gpu({engine::Backend::kCUDA});
  ExportOptions o;
  o.model_dir = bnb_;
  o.adapter_dir = tmp_.file("adapter");
  o.out_dtype = DType::kF32;
  o.out_dir = tmp_.file("gpu");
  export_merged(o, gpu);
  o.out_dir = tmp_.file("cpu");
  export_merged(o, cpu_);
  engine::SafetensorsCheckpoint x(tmp_.file("gpu")), y(tmp_.file("cpu"));
  ASSERT_EQ(x.names(), y.names());
  for (const std::string& n : x.names()) {
    const engine::TensorView u = x.view(n), v = y.view(n);
    ASSERT_EQ(u.shape, v.shape) << n;
    std::vector<double> p(size_t(u.numel())), q(p.size());
    for (int64_t i = 0; i < u.numel(); ++i) p[size_t(i)] = u.ptr<float>()[i], q[size_t(i)] = v.ptr<float>()[i];
    EXPECT_CLOSE(p, q, (Tol{1e-6, 1e-5})) << n;  // the same dequantized base; only f32 merge sums differ
  }
}

}  // namespace
