#include "bench/bench_util.h"

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

double peak_dram_bytes_per_s() {
  int dev = 0, clock_khz = 0, bus_bits = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, dev));
  return 2.0 * clock_khz * 1e3 * bus_bits / 8.0;  // double data rate
}

double peak_dense_flops_per_s() {
  int dev = 0, clock_khz = 0, sms = 0, major = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  // Dense f16/bf16 tensor-core FLOP per clock per SM: Hopper 4096 (989 TFLOP/s on H100 SXM), Ampere 2048.
  const double per_clk = major >= 9 ? 4096.0 : 2048.0;
  return per_clk * sms * clock_khz * 1e3;
}

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
