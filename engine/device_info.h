// engine/device_info.h: peak rates of the current CUDA device, for roofline and MFU figures.
//   (Moved here from bench/bench_util.cpp so tools can use them; bench:: forwards to these.)
#pragma once
#include <string>

namespace engine {

// Dense (no 2:4 sparsity) 16-bit tensor-core peak in FLOP/s. Datasheet figures for the cards the
// benchmarks name (ANCHORS.md §3: H100/H200 SXM 989.4 TFLOP/s, H100 PCIe 756, H100/H200 NVL 835, A100 312),
// else SM count x boost clock x FLOP/clk/SM (Hopper 4096, Ampere 2048), which overestimates cards whose
// tensor-core clock is below the boost clock (1,070 instead of 989.4 on H100 SXM).
double peak_dense_flops_per_s();
// Where the figure came from: "datasheet (<name>)" or "SMs x clock".
std::string peak_dense_flops_source();
// DRAM bandwidth from memory clock and bus width (double data rate).
double peak_dram_bytes_per_s();

}  // namespace engine
