// tests/autograd/dequant_stage_gpu_test.cpp (label gpu): DequantStage on CUDA, with its side-stream
// dequantizations (prefetched groups, members 1.. beside member 0, hints that turn out wrong):
// tests/autograd/dequant_stage_test.h.
#include "tests/autograd/dequant_stage_test.h"

namespace {

TEST(DequantStageGpu, HandsOutTheDequantizedWeights) {
  REQUIRE_CUDA();
  test::Engine eng;
  test::check_dequant_stage(eng);
}

}  // namespace
