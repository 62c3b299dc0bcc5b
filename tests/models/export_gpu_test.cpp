// tests/models/export_gpu_test.cpp (label gpu): the export on CUDA (dequantize and merge on the device)
// against the CPU export, and the CUDA export's logits against the CUDA base + adapter.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <memory>

#include "engine/safetensors.h"
#include "models/export.h"
#include "models/gemma2.h"
#include "models/gemma2_random.h"
#include "tests/models/model_test_util.h"
#include "tests/test_util.h"

namespace {

namespace fs = std::filesystem;
using namespace models;
using test::Tol;

class ExportGpu : public ::testing::Test {
 protected:
  void SetUp() override {
    if (engine::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device on this machine";
    // Gemma-2's real inner sizes are multiples of 64; cols % 64 == 0 keeps the NF4 rows kernel's alignment.
    cfg_ = tiny_config(/*D*/ 128, /*F*/ 256, /*L*/ 2, /*H*/ 4, /*KV*/ 2, /*HD*/ 32, /*V*/ 61);
    fs::create_directories(base_);
    write_random_checkpoint(base_, cfg_, DType::kBF16, RandomInit{9, 0.05, 0.2});
    LoraSpec s;
    s.r = 8;
    s.alpha = 16;
    test::write_random_adapter(cfg_, s, 5, 0.1f, adapter_, base_);
  }

  ExportOptions opts(MergeBase b, DType out, const std::string& dir) const {
    ExportOptions o;
    o.model_dir = base_;
    o.adapter_dir = adapter_;
    o.out_dir = dir;
    o.base = b;
    o.out_dtype = out;
    o.compute_dtype = DType::kBF16;
    return o;
  }

  std::vector<double> logits(Engine& eng, const std::string& dir, bool nf4, bool adapter) {
    Gemma2Options o;
    o.compute_dtype = DType::kF32;
    o.quantize_nf4 = nf4;
    Gemma2Model m = Gemma2Model::load(dir, eng, o);
    std::unique_ptr<LoraAdapters> l;
    if (adapter) {
      l = std::make_unique<LoraAdapters>(m.config(), lora_spec_from_peft(adapter_), eng);
      l->load_peft(adapter_);
      m.attach_lora(l.get(), 0);
    }
    const std::vector<int32_t> ids = {2, 17, 3, 9, 60, 2, 5, 48, 30, 36, 1, 4}, mask(12, 1);
    Tensor lg = m.logits(make_batch(eng, 2, 6, ids, mask, ids));
    Tensor h = eng.empty_host(lg.shape(), lg.dtype());
    eng.copy(h, lg);
    eng.synchronize();
    std::vector<double> v(size_t(h.numel()));
    for (size_t i = 0; i < v.size(); ++i) v[i] = engine::load_f64(h.data(), h.dtype(), int64_t(i));
    return v;
  }

  // Every tensor of two exports: all elements within `tol`, and at most `max_off` of them not bit-equal.
  void compare_exports(const std::string& a, const std::string& b, Tol tol, double max_off) {
    engine::SafetensorsCheckpoint x(a), y(b);
    ASSERT_EQ(x.names(), y.names());
    for (const std::string& n : x.names()) {
      const engine::TensorView u = x.view(n), v = y.view(n);
      ASSERT_EQ(u.dtype, v.dtype) << n;
      ASSERT_EQ(u.shape, v.shape) << n;
      std::vector<double> p(size_t(u.numel())), q(p.size());
      int64_t off = 0;
      for (int64_t i = 0; i < u.numel(); ++i) {
        p[size_t(i)] = engine::load_f64(u.data, u.dtype, i);
        q[size_t(i)] = engine::load_f64(v.data, v.dtype, i);
        off += p[size_t(i)] != q[size_t(i)];
      }
      EXPECT_CLOSE(p, q, tol) << n;
      EXPECT_LE(double(off), max_off * double(u.numel())) << n << ": " << off << " elements differ";
    }
  }

  Engine cpu_{{engine::Backend::kCPU}};
  test::TempDir tmp_;
  std::string base_ = tmp_.file("base"), adapter_ = tmp_.file("adapter");
  Gemma2Config cfg_;
};

TEST_F(ExportGpu, SixteenBitMatchesTheCpuExport) {
  Engine gpu({engine::Backend::kCUDA});
  export_merged(opts(MergeBase::k16Bit, DType::kBF16, tmp_.file("gpu")), gpu);
  export_merged(opts(MergeBase::k16Bit, DType::kBF16, tmp_.file("cpu")), cpu_);
  // cuBLASLt sums B@A in f32 (the CPU in f64): W' can differ by an f32 ulp, which flips a bf16 rounding only
  // for values within an f32 ulp of a bf16 midpoint; then they differ by one bf16 ulp (2^-8 relative).
  compare_exports(tmp_.file("gpu"), tmp_.file("cpu"), Tol{1e-6, 1.0 / 128}, 1e-3);
}

TEST_F(ExportGpu, Nf4MatchesTheCpuExport) {
  Engine gpu({engine::Backend::kCUDA});
  export_merged(opts(MergeBase::kNf4, DType::kF32, tmp_.file("gpu")), gpu);
  export_merged(opts(MergeBase::kNf4, DType::kF32, tmp_.file("cpu")), cpu_);
  // Dequantization is bit-identical, but CUDA's approximate reciprocal can move a 4-bit code (one element) or
  // an 8-bit absmax code (a whole block of 64) by one step in rare ties (ops/nf4.h; nf4_gpu_test allows
  // < 1e-4 of the codes and < 1e-3 of the absmax codes). Outside such blocks only f32 merge sums differ.
  engine::SafetensorsCheckpoint x(tmp_.file("gpu")), y(tmp_.file("cpu"));
  for (const std::string& n : x.names()) {
    const engine::TensorView u = x.view(n), v = y.view(n);
    const int64_t nb = ops::nf4_blocks(u.numel());
    std::vector<bool> off(size_t(nb), false);
    for (int64_t i = 0; i < u.numel(); ++i) {
      const double p = u.ptr<float>()[i], q = v.ptr<float>()[i];
      if (std::fabs(p - q) > 1e-6 + 1e-5 * std::fabs(q)) off[size_t(i / ops::kNf4Block)] = true;
    }
    const int64_t blocks = std::count(off.begin(), off.end(), true);
    EXPECT_LE(blocks, 2 + nb / 100) << n << ": " << blocks << " of " << nb << " blocks differ beyond f32 sums";
  }
}

TEST_F(ExportGpu, ExportLogitsMatchBasePlusAdapterOnCuda) {
  Engine gpu({engine::Backend::kCUDA});
  for (MergeBase b : {MergeBase::k16Bit, MergeBase::kNf4}) {
    const std::string dir = tmp_.file(b == MergeBase::kNf4 ? "nf4" : "16bit");
    ExportOptions o = opts(b, DType::kF32, dir);
    o.compute_dtype = DType::kF32;  // as logits() loads the NF4 base
    o.shard_bytes = 100000;         // several shards through the GPU path too
    export_merged(o, gpu);
    EXPECT_TRUE(fs::exists(dir + "/model.safetensors.index.json"));
    const std::vector<double> want = logits(gpu, base_, b == MergeBase::kNf4, true), got = logits(gpu, dir, false, false);
    EXPECT_CLOSE(got, want, (Tol{1e-4, 1e-3})) << (b == MergeBase::kNf4 ? "nf4" : "16bit");
  }
}

}  // namespace
