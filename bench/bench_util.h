// bench/bench_util.h: GPU timing for Google Benchmark (UseManualTime): CUDA events around the kernel,
// L2 flushed before each iteration (llm.c), rates against the device's peak.
#pragma once
#include <benchmark/benchmark.h>

#include <vector>

#include "engine/engine.h"

namespace bench {

using engine::DType;
using engine::Engine;
using engine::Shape;
using engine::Tensor;

// Skips the benchmark (with a reason) when there is no CUDA device; returns false then.
bool require_cuda(benchmark::State& state);

class CudaEventTimer {
 public:
  void start(cudaStream_t s) { start_.record(s); }
  double stop_seconds(cudaStream_t s);

 private:
  engine::Event start_, stop_;
};

// Writes a buffer as large as the L2 so the next kernel starts cold.
class L2Flush {
 public:
  explicit L2Flush(Engine& eng);
  void operator()(cudaStream_t s);

 private:
  Tensor buf_;
};

// Device tensor filled with N(0, scale^2) values (never zeros: zeros can run faster than real data).
Tensor random_tensor(Engine& eng, Shape shape, DType dtype, uint64_t seed, double scale = 1.0);

double peak_dram_bytes_per_s();   // from memory clock and bus width
double peak_dense_flops_per_s();  // 16-bit tensor-core dense peak (SM count x clock x FLOP/clk/SM)

// Sets GB/s and %peak (bytes moved per iteration) counters.
void report_bytes(benchmark::State& state, double bytes_per_iter);
// Sets TFLOP/s and %peak counters.
void report_flops(benchmark::State& state, double flops_per_iter);

// Times `op` (launches on the engine's stream) per iteration with a cold L2.
template <typename Op>
void time_loop(benchmark::State& state, Engine& eng, Op op) {
  L2Flush flush(eng);
  CudaEventTimer timer;
  op();  // untimed: the first launch of a kernel loads its module (lazy loading), ~50 ms
  for (auto _ : state) {
    flush(eng.stream());
    timer.start(eng.stream());
    op();
    state.SetIterationTime(timer.stop_seconds(eng.stream()));
  }
}

}  // namespace bench
