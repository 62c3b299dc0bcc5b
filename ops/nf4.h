// ops/nf4.h: bitsandbytes NF4 4-bit quantization with double quantization (SPEC.md §3, Appendix A), i.e.
// quantize_4bit(W, blocksize=64, quant_type="nf4", compress_statistics=True) and dequantize_4bit.
//   W: (rows, cols) row-major, flattened to n = rows*cols values; nb = ceil(n/64) blocks of 64,
//   nb2 = ceil(nb/256) chunks of 256 blocks. A partial last block/chunk is zero-filled (§3.2).
// Quantize (§3.2-§3.4):
//   absmax[b] = max |W| over block b (f32)
//   code = #{t in NF4 thresholds : x_n > t}, x_n = W * (1/absmax[b])   strict >, ties go to the lower code;
//          NaN (an all-zero block: 0 * inf) gives code 0
//   packed[e/2] = code[e] << 4 | code[e+1]                               even flat index in the HIGH nibble
//   offset = mean(absmax); c = absmax - offset; absmax2[k] = max |c| over chunk k;
//   absmax_q[b] = dQuantize<0>(dynamic map, c[b] * (1/absmax2[b/256]))   bnb's exact pivot search (§3.4)
// Dequantize (§3.5):  absmax_b = (code8[absmax_q[b]] * absmax2[b/256]) + offset   two f32 roundings, no FMA
//                     W[e] = round_to_out_dtype(NF4[nib(e)] * absmax_b)           one f32 multiply, one rounding
// Floating-point mode: bnb is built with --use_fast_math, so 1/x is an approximate reciprocal
// (rcp.approx.ftz.f32) and abs/max/multiply flush subnormals to zero. CUDA uses the same instructions.
// The CPU uses the IEEE reciprocal (the approximate one is not specified bit for bit) and flushes subnormals
// like FTZ, so CPU and CUDA codes can differ where x_n lands within an ulp of a threshold: rare (measured in
// tests/ops/nf4_gpu_test.cpp), and then by one code. Dequantization is bit-identical on CPU and CUDA.
// Deviation (SPEC.md §3.8): bnb's offset is torch's absmax.mean() (torch's reduction order). Here it is an f64
// sum in a fixed order (spelled out in ops/nf4_cpu.cpp) rounded once to f32: identical on CPU and CUDA, possibly
// an ulp from bnb's. For bit parity with a bnb checkpoint, load bnb's arrays (offset included), or
// quantize with Nf4QuantParams::offset_given and bnb's offset in `offset`.
// Gradients: none (frozen base weights). Tests: tests/ops/nf4_cpu_test.cpp, nf4_gpu_test.cpp,
// tests/parity/nf4_bnb_parity.py   Bench: bench/ops/nf4_bench.cpp
#pragma once
#include <cstdint>

#include "ops/common.h"

namespace ops {

constexpr int64_t kNf4Block = 64;    // values per absmax (blocksize)
constexpr int64_t kNf4Block2 = 256;  // absmax values per absmax2 (nested_blocksize)

// constexpr so kernels can call them too.
constexpr int64_t nf4_blocks(int64_t n) { return (n + kNf4Block - 1) / kNf4Block; }                // nb
constexpr int64_t nf4_blocks2(int64_t n) { return (nf4_blocks(n) + kNf4Block2 - 1) / kNf4Block2; }  // nb2
constexpr int64_t nf4_packed_bytes(int64_t n) { return (n + 1) / 2; }

// A quantized weight: views only (the storage belongs to the caller; see nf4_empty).
//   packed:   u8  (ceil(n/2))   the state dict's `weight` ([n/2, 1] there)
//   absmax_q: u8  (nb)          `weight.absmax`
//   absmax2:  f32 (nb2)         `weight.nested_absmax`
//   offset:   f32 (1)           `nested_offset` of the quant_state JSON
struct Nf4Weight {
  TensorView packed, absmax_q, absmax2, offset;
  int64_t rows = 0, cols = 0;
  int64_t numel() const { return rows * cols; }
};

struct Nf4QuantParams {
  // false: compute offset = mean(absmax) and write it. true: read `offset` as given (e.g. bnb's, for parity).
  bool offset_given = false;
};

// NF4 code values (§3.1) and the 15 decision thresholds between them (§3.2), fp32 bit patterns.
inline constexpr uint32_t kNf4CodeBits[16] = {
    0xbf800000, 0xbf3239b1, 0xbf066b30, 0xbeca32a0, 0xbe91a24d, 0xbe3d353f, 0xbdba7871, 0x00000000,
    0x3da2faff, 0x3e24cae3, 0x3e7c04dd, 0x3ead033a, 0x3ee1a4b8, 0x3f1007ab, 0x3f3913b3, 0x3f800000};
inline constexpr uint32_t kNf4ThresholdBits[15] = {
    0xbf591cd8, 0xbf1c5270, 0xbeeb8480, 0xbeadea76, 0xbe703cec, 0xbe0d38bc, 0xbd3a7871, 0x3d22faff,
    0x3df64862, 0x3e5067e0, 0x3e9582d4, 0x3ec753f9, 0x3f006d04, 0x3f248daf, 0x3f5c89da};
// bnb's signed dynamic 8-bit map create_dynamic_map(signed=True) (Appendix A), ascending; [127] = 0, [255] = 1.
inline constexpr uint32_t kDynamicMapBits[256] = {
    0xbf7e3333, 0xbf7a999a, 0xbf770000, 0xbf736666, 0xbf6fcccd, 0xbf6c3333, 0xbf68999a, 0xbf650000,
    0xbf616666, 0xbf5dcccd, 0xbf5a3333, 0xbf56999a, 0xbf530000, 0xbf4f6666, 0xbf4bcccd, 0xbf483333,
    0xbf44999a, 0xbf410000, 0xbf3d6666, 0xbf39cccd, 0xbf363334, 0xbf32999a, 0xbf2f0000, 0xbf2b6666,
    0xbf27cccd, 0xbf243334, 0xbf20999a, 0xbf1d0000, 0xbf196666, 0xbf15cccd, 0xbf123334, 0xbf0e999a,
    0xbf0b0000, 0xbf076666, 0xbf03cccc, 0xbf003333, 0xbef93332, 0xbef20000, 0xbeeacccc, 0xbee3999a,
    0xbedc6666, 0xbed53333, 0xbece0000, 0xbec6cccc, 0xbebf999a, 0xbeb86666, 0xbeb13333, 0xbeaa0000,
    0xbea2cccc, 0xbe9b999a, 0xbe946666, 0xbe8d3334, 0xbe860000, 0xbe7d9999, 0xbe6f3333, 0xbe60cccd,
    0xbe526666, 0xbe440000, 0xbe35999a, 0xbe273333, 0xbe18cccd, 0xbe0a6666, 0xbdf80000, 0xbddb3334,
    0xbdc9eb85, 0xbdc428f7, 0xbdbe6667, 0xbdb8a3d7, 0xbdb2e148, 0xbdad1eb8, 0xbda75c2a, 0xbda1999a,
    0xbd9bd70a, 0xbd96147b, 0xbd9051eb, 0xbd8a8f5d, 0xbd84cccd, 0xbd7e147b, 0xbd728f5d, 0xbd670a3d,
    0xbd5b851f, 0xbd500000, 0xbd447ae1, 0xbd38f5c3, 0xbd2d70a3, 0xbd21eb85, 0xbd166667, 0xbd0ae148,
    0xbcfeb852, 0xbce7ae15, 0xbcd0a3d7, 0xbcb9999a, 0xbca28f5d, 0xbc8b851f, 0xbc68f5c3, 0xbc3ae148,
    0xbc1f3b64, 0xbc160418, 0xbc0ccccd, 0xbc039581, 0xbbf4bc6a, 0xbbe24dd3, 0xbbcfdf3b, 0xbbbd70a4,
    0xbbab020d, 0xbb989374, 0xbb8624dd, 0xbb676c8a, 0xbb428f5c, 0xbb1db22d, 0xbaf1a9fc, 0xbaa7ef9d,
    0xba7765ff, 0xba59e83e, 0xba3c6a80, 0xba1eecc1, 0xba016f01, 0xb9c7e283, 0xb98ce705, 0xb923d70b,
    0xb8ba1f4b, 0xb88aefb3, 0xb8378034, 0xb7b24206, 0xb70205ff, 0xb65a1a94, 0xb513a3b7, 0x00000000,
    0x3513a3b7, 0x365a1a94, 0x370205ff, 0x37b24206, 0x38378034, 0x388aefb3, 0x38ba1f4b, 0x3923d70b,
    0x398ce705, 0x39c7e283, 0x3a016f01, 0x3a1eecc1, 0x3a3c6a80, 0x3a59e83e, 0x3a7765ff, 0x3aa7ef9d,
    0x3af1a9fc, 0x3b1db22d, 0x3b428f5c, 0x3b676c8a, 0x3b8624dd, 0x3b989374, 0x3bab020d, 0x3bbd70a4,
    0x3bcfdf3b, 0x3be24dd3, 0x3bf4bc6a, 0x3c039581, 0x3c0ccccd, 0x3c160418, 0x3c1f3b64, 0x3c3ae148,
    0x3c68f5c3, 0x3c8b851f, 0x3ca28f5d, 0x3cb9999a, 0x3cd0a3d7, 0x3ce7ae15, 0x3cfeb852, 0x3d0ae148,
    0x3d166667, 0x3d21eb85, 0x3d2d70a3, 0x3d38f5c3, 0x3d447ae1, 0x3d500000, 0x3d5b851f, 0x3d670a3d,
    0x3d728f5d, 0x3d7e147b, 0x3d84cccd, 0x3d8a8f5d, 0x3d9051eb, 0x3d96147b, 0x3d9bd70a, 0x3da1999a,
    0x3da75c2a, 0x3dad1eb8, 0x3db2e148, 0x3db8a3d7, 0x3dbe6667, 0x3dc428f7, 0x3dc9eb85, 0x3ddb3334,
    0x3df80000, 0x3e0a6666, 0x3e18cccd, 0x3e273333, 0x3e35999a, 0x3e440000, 0x3e526666, 0x3e60cccd,
    0x3e6f3333, 0x3e7d9999, 0x3e860000, 0x3e8d3334, 0x3e946666, 0x3e9b999a, 0x3ea2cccc, 0x3eaa0000,
    0x3eb13333, 0x3eb86666, 0x3ebf999a, 0x3ec6cccc, 0x3ece0000, 0x3ed53333, 0x3edc6666, 0x3ee3999a,
    0x3eeacccc, 0x3ef20000, 0x3ef93332, 0x3f003333, 0x3f03cccc, 0x3f076666, 0x3f0b0000, 0x3f0e999a,
    0x3f123334, 0x3f15cccd, 0x3f196666, 0x3f1d0000, 0x3f20999a, 0x3f243334, 0x3f27cccd, 0x3f2b6666,
    0x3f2f0000, 0x3f32999a, 0x3f363334, 0x3f39cccd, 0x3f3d6666, 0x3f410000, 0x3f44999a, 0x3f483333,
    0x3f4bcccd, 0x3f4f6666, 0x3f530000, 0x3f56999a, 0x3f5a3333, 0x3f5dcccd, 0x3f616666, 0x3f650000,
    0x3f68999a, 0x3f6c3333, 0x3f6fcccd, 0x3f736666, 0x3f770000, 0x3f7a999a, 0x3f7e3333, 0x3f800000,
};

// Shapes and dtypes of q's arrays (against its rows/cols), and of `dense` (f32/f16/bf16; f64 on CPU), which holds
// rows [r0, r1) of the weight: (r1 - r0, cols).
void nf4_check(const Nf4Weight& q, TensorView dense, int64_t r0, int64_t r1);

namespace cpu {
// The specification. Deterministic; codes may differ from CUDA's in rare reciprocal-rounding cases (above).
void nf4_quantize(const Nf4Weight& q, TensorView w, const Nf4QuantParams& p);
// out: (rows, cols) f32/f16/bf16/f64. Bit-identical to cuda::nf4_dequantize.
void nf4_dequantize(TensorView out, const Nf4Weight& q);
// Rows [r0, r1) of the weight into out: (r1 - r0, cols).
void nf4_dequantize_rows(TensorView out, const Nf4Weight& q, int64_t r0, int64_t r1);
// One dQuantize<0> search (§3.4) of a normalized value in the dynamic map: exposed for tests.
uint8_t dynamic_map_quantize(float x);
}  // namespace cpu

namespace cuda {
// Scratch for nf4_quantize: the f32 absmax (nb) and one f64 partial sum per chunk (nb2).
size_t nf4_quantize_workspace_bytes(int64_t rows, int64_t cols);
// Every pointer 16-byte aligned (the engine's allocators give 256).
void nf4_quantize(const Nf4Weight& q, TensorView w, TensorView workspace, const Nf4QuantParams& p,
                  cudaStream_t stream);
// out 16-byte aligned. Reads packed (n/2 bytes) and writes out once: bandwidth-bound.
void nf4_dequantize(TensorView out, const Nf4Weight& q, cudaStream_t stream);
// Rows [r0, r1); r0*cols must be a multiple of 8 (true for every Gemma-2 linear: cols % 64 == 0).
void nf4_dequantize_rows(TensorView out, const Nf4Weight& q, int64_t r0, int64_t r1, cudaStream_t stream);
}  // namespace cuda

// Owning storage for one quantized weight, on the engine's device.
struct Nf4Storage {
  engine::Tensor packed, absmax_q, absmax2, offset;
  int64_t rows = 0, cols = 0;
  Nf4Weight view() const { return {packed, absmax_q, absmax2, offset, rows, cols}; }
};
inline Nf4Storage nf4_empty(int64_t rows, int64_t cols, Engine& eng) {
  const int64_t n = rows * cols;
  return {eng.empty({nf4_packed_bytes(n)}, DType::kU8), eng.empty({nf4_blocks(n)}, DType::kU8),
          eng.empty({nf4_blocks2(n)}, DType::kF32), eng.empty({1}, DType::kF32), rows, cols};
}

inline void nf4_quantize(const Nf4Weight& q, TensorView w, const Nf4QuantParams& p, Engine& eng) {
  if (on_cuda({q.packed, q.absmax_q, q.absmax2, q.offset, w})) {
    engine::Tensor ws = eng.empty({int64_t(cuda::nf4_quantize_workspace_bytes(q.rows, q.cols))}, DType::kU8);
    cuda::nf4_quantize(q, w, ws, p, eng.stream());
  } else {
    cpu::nf4_quantize(q, w, p);
  }
}
inline void nf4_dequantize(TensorView out, const Nf4Weight& q, Engine& eng) {
  if (on_cuda({out, q.packed, q.absmax_q, q.absmax2, q.offset})) cuda::nf4_dequantize(out, q, eng.stream());
  else cpu::nf4_dequantize(out, q);
}
inline void nf4_dequantize_rows(TensorView out, const Nf4Weight& q, int64_t r0, int64_t r1, Engine& eng) {
  if (on_cuda({out, q.packed, q.absmax_q, q.absmax2, q.offset})) cuda::nf4_dequantize_rows(out, q, r0, r1, eng.stream());
  else cpu::nf4_dequantize_rows(out, q, r0, r1);
}

}  // namespace ops
