// bench/ops/softcap_bench.cpp: inference logit soft-capping over (tokens, V=256000) bf16 logits.
#include "bench/bench_util.h"
#include "ops/softcap.h"

namespace {

using namespace bench;

void BM_Softcap(benchmark::State& state) {
  if (!require_cuda(state)) return;
  Engine eng;
  const int64_t n = state.range(0) * 256000;
  Tensor x = random_tensor(eng, {n}, DType::kBF16, 1, 20.0), y = eng.empty({n}, DType::kBF16);
  L2Flush flush(eng);
  CudaEventTimer timer;
  for (auto _ : state) {
    flush(eng.stream());
    timer.start(eng.stream());
    ops::cuda::softcap(y, x, 30.f, eng.stream());
    state.SetIterationTime(timer.stop_seconds(eng.stream()));
  }
  report_bytes(state, 2.0 * double(n) * 2);
}

}  // namespace

BENCHMARK(BM_Softcap)->Arg(1)->Arg(64)->UseManualTime()->Unit(benchmark::kMicrosecond);
