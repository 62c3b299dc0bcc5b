// tests/autograd/dequant_stage_cpu_test.cpp (label cpu): DequantStage on the CPU backend (prefetch hints are
// no-ops there; groups are dequantized on demand): tests/autograd/dequant_stage_test.h.
#include "tests/autograd/dequant_stage_test.h"

namespace {

TEST(DequantStageCpu, HandsOutTheDequantizedWeights) {
  test::Engine eng({engine::Backend::kCPU});
  test::check_dequant_stage(eng);
}

}  // namespace
