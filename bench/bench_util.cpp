#include "bench/bench_util.h"

#include "engine/device_info.h"
#include "engine/philox.h"

namespace bench {

bool require_cuda(benchmark::State& state) {
  if (engine::cuda_device_count() > 0) return true;
  state.SkipWithError("no CUDA device on this machine");
  return false;
}

double CudaEventTimer::stop_seconds(cudaStream_t s) {
  stop_.record(s);
  stop_.synchronize();
  return engine::Event::elapsed_ms(start_, stop_) * 1e-3;
}

L2Flush::L2Flush(Engine& eng) {
  buf_ = eng.empty({std::max<int64_t>(eng.props().l2CacheSize, 1 << 20)}, DType::kU8);
}
void L2Flush::operator()(cudaStream_t s) { CUDA_CHECK(cudaMemsetAsync(buf_.data(), 0, buf_.nbytes(), s)); }

Tensor random_tensor(Engine& eng, Shape shape, DType dtype, uint64_t seed, double scale) {
  Tensor host = eng.empty_host(shape, dtype);
  for (int64_t i = 0; i < host.numel(); ++i)
    engine::store_f64(host.data(), dtype, i, scale * engine::philox_normal(seed, 0, uint64_t(i)));
  Tensor dev = eng.empty(shape, dtype);
  eng.copy(dev, host);
  eng.synchronize();
  return dev;
}

// Moved to engine/device_info.cpp (tools report MFU too).
double peak_dram_bytes_per_s() { return engine::peak_dram_bytes_per_s(); }
double peak_dense_flops_per_s() { return engine::peak_dense_flops_per_s(); }

void report_bytes(benchmark::State& state, double bytes) {
  using benchmark::Counter;
  state.counters["GB/s"] = Counter(bytes * 1e-9, Counter::kIsIterationInvariantRate);
  state.counters["%peak"] = Counter(100.0 * bytes / peak_dram_bytes_per_s(), Counter::kIsIterationInvariantRate);
}

void report_flops(benchmark::State& state, double flops) {
  using benchmark::Counter;
  state.counters["TFLOP/s"] = Counter(flops * 1e-12, Counter::kIsIterationInvariantRate);
  state.counters["%peak"] = Counter(100.0 * flops / peak_dense_flops_per_s(), Counter::kIsIterationInvariantRate);
}

}  // namespace bench
