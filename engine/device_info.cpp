#include "engine/device_info.h"

#include <cuda_runtime.h>


#include "engine/check.h"

namespace engine {
namespace {

struct Peak {
  double flops;
  std::string source;
};

Peak dense_peak() {
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  cudaDeviceProp props{};
  CUDA_CHECK(cudaGetDeviceProperties(&props, dev));
  const std::string name(props.name);
  auto has = [&](const char* s) { return name.find(s) != std::string::npos; };
  const std::string ds = "datasheet (" + name + ")";
  if (has("H100") || has("H200") || has("H800")) {
    if (has("PCIe")) return {756e12, ds};
    if (has("NVL")) return {835e12, ds};
    return {989.4e12, ds};  // SXM5 / HBM3 boards, GH200
  }
  if (has("A100") || has("A800")) return {312e12, ds};
  int clock_khz = 0, sms = 0, major = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  const double per_clk = major >= 9 ? 4096.0 : 2048.0;
  return {per_clk * sms * clock_khz * 1e3, "SMs x clock"};
}

}  // namespace

double peak_dense_flops_per_s() { return dense_peak().flops; }
std::string peak_dense_flops_source() { return dense_peak().source; }

double peak_dram_bytes_per_s() {
  int dev = 0, clock_khz = 0, bus_bits = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, dev));
  return 2.0 * clock_khz * 1e3 * bus_bits / 8.0;  // double data rate
}

}  // namespace engine
