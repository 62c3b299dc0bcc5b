// tests/engine/engine_gpu_test.cpp (label gpu): the caching allocator reaches a steady state.
#include "engine/engine.h"
#include "tests/test_util.h"

namespace {

using namespace engine;

TEST(CudaCachingAllocator, SteadyStateHasNoSystemAllocations) {
  REQUIRE_CUDA();
  Engine eng;
  auto step = [&] {  // the same allocation pattern as a training step would repeat
    Tensor a = eng.empty({1 << 20}, DType::kBF16), b = eng.empty({3000}, DType::kF32);
    Tensor c = eng.empty({1 << 18}, DType::kF16);
    eng.zero(a); eng.zero(b); eng.zero(c);
  };
  step();
  const int64_t after_warmup = eng.allocator().stats().num_system_allocs;
  const size_t in_use = eng.allocator().stats().current_bytes;
  for (int i = 0; i < 10; ++i) step();
  EXPECT_EQ(eng.allocator().stats().num_system_allocs, after_warmup);
  EXPECT_EQ(eng.allocator().stats().current_bytes, in_use);  // everything a step took came back
  EXPECT_GE(eng.allocator().stats().peak_bytes, size_t(2 << 20));
}

TEST(Engine, CopiesBetweenHostAndDevice) {
  REQUIRE_CUDA();
  Engine eng;
  Tensor h = eng.empty_host({100}, DType::kF32), d = eng.empty({100}, DType::kF32), back = eng.empty_host({100}, DType::kF32);
  for (int i = 0; i < 100; ++i) h.ptr<float>()[i] = float(i) * 0.5f;
  eng.copy(d, h);
  eng.copy(back, d);
  eng.synchronize();
  for (int i = 0; i < 100; ++i) ASSERT_EQ(back.ptr<float>()[i], float(i) * 0.5f);
  EXPECT_THROW(eng.copy(d, eng.empty_host({99}, DType::kF32)), Error);
}

}  // namespace
