// tests/engine/managed_buffer_gpu_test.cpp (label gpu): the paged optimizer state (SPEC.md §5.6). AdamW
// with m and v in managed memory, forced to host residency between steps, gives bit-identical parameters
// to AdamW with plain device state.
#include "engine/managed_buffer.h"
#include "engine/philox.h"
#include "ops/adamw.h"
#include "tests/test_util.h"

namespace {

using namespace engine;

TEST(ManagedBuffer, PagedAdamWEqualsUnpagedUnderEviction) {
  REQUIRE_CUDA();
  Engine eng;
  const int64_t n = 1 << 20;
  Tensor host = eng.empty_host({n}, DType::kF32);
  auto fill = [&](Tensor& dst, uint64_t seed, float scale) {
    for (int64_t i = 0; i < n; ++i) host.ptr<float>()[i] = scale * philox_normal(seed, 0, uint64_t(i));
    eng.copy(dst, host);
    eng.synchronize();
  };
  std::vector<float> results[2];
  for (int paged = 0; paged < 2; ++paged) {
    Tensor p = eng.empty({n}, DType::kF32), g = eng.empty({n}, DType::kF32);
    fill(p, 1, 0.1f);
    std::unique_ptr<ManagedBuffer> buf;
    Tensor m, v;
    if (paged) {
      buf = std::make_unique<ManagedBuffer>(size_t(2 * n) * sizeof(float), 0);
      m = Tensor(TensorView{buf->data(), DType::kF32, {n}, Device::kCUDA}, nullptr);
      v = Tensor(TensorView{static_cast<float*>(buf->data()) + n, DType::kF32, {n}, Device::kCUDA}, nullptr);
    } else {
      m = eng.empty({n}, DType::kF32);
      v = eng.empty({n}, DType::kF32);
    }
    eng.zero(m);
    eng.zero(v);
    for (int step = 1; step <= 5; ++step) {
      fill(g, 100 + uint64_t(step), 0.01f);
      if (buf) buf->prefetch_to_device(eng.stream());
      ops::AdamWParams ap;
      ap.n = n;
      ap.lr = 1e-3f * float(step);
      ap.weight_decay = 0.001f;
      ap.step = step;
      ops::adamw_step(p, m, v, g, TensorView{}, TensorView{}, ap, eng);
      if (buf) buf->evict_to_host(eng.stream());  // the pages leave the GPU between steps
      eng.synchronize();
    }
    results[paged].resize(size_t(n));
    eng.copy(TensorView{results[paged].data(), DType::kF32, {n}, Device::kCPU}, p);
    eng.synchronize();
  }
  EXPECT_EQ(results[0], results[1]);
  EXPECT_NE(results[0][0], 0.f);
}

TEST(ManagedBuffer, RefusesMoreThanTheGpuHasFree) {
  REQUIRE_CUDA();
  size_t free_b = 0, total_b = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  EXPECT_THROW(ManagedBuffer(free_b + (size_t(1) << 30), 0), Error);  // never oversubscribe (it can hang the GPU)
}

}  // namespace
