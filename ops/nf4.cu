// ops/nf4.cu: NF4 quantize (three kernels: codes + absmax + chunk sums, offset, double quant) and dequantize.
// Floating-point instructions are spelled in PTX where bnb's --use_fast_math build chooses them (SPEC.md §3.8):
// this file is compiled without fast math, so `1.0f/x` would otherwise be the IEEE division.
#include <cstdint>

#include "ops/cuda_common.cuh"
#include "ops/nf4.h"

namespace ops {
namespace {

constexpr int kThreads = 256;

// The constant tables, passed by value (kernel parameter space, __grid_constant__ so indexing them makes no
// local copy) so ops/nf4.h stays their one definition.
struct Nf4Tables {
  float nf4[16];
  float threshold[15];
  float map[256];
};

Nf4Tables make_tables() {
  Nf4Tables t{};
  for (int i = 0; i < 16; ++i) t.nf4[i] = engine::bits_f32(kNf4CodeBits[i]);
  for (int i = 0; i < 15; ++i) t.threshold[i] = engine::bits_f32(kNf4ThresholdBits[i]);
  for (int i = 0; i < 256; ++i) t.map[i] = engine::bits_f32(kDynamicMapBits[i]);
  return t;
}

// nvcc --use_fast_math emits rcp.approx.ftz.f32 for 1.0f/x; the explicit .rn on the multiply keeps ptxas from
// fusing it into an FMA (mul.ftz.f32 in bnb, whose products feed compares or conversions, never an add).
__device__ __forceinline__ float rcp_approx_ftz(float x) {
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
}
__device__ __forceinline__ float mul_ftz(float a, float b) {
  float r;
  asm("mul.rn.ftz.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
}
__device__ __forceinline__ float abs_ftz(float x) {
  float r;
  asm("abs.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
}

__device__ __forceinline__ uint32_t nf4_code(float xn, const Nf4Tables& tab) {
  uint32_t c = 0;
#pragma unroll
  for (int t = 0; t < 15; ++t) c += xn > tab.threshold[t] ? 1u : 0u;  // NaN -> 0
  return c;
}

// bnb's dQuantize<0> (SPEC.md §3.4), literally; `code` is the dynamic map in shared memory.
__device__ __forceinline__ uint8_t dynamic_map_quantize(const float* code, float x) {
  int pivot = 127, upper_pivot = 255, lower_pivot = 0;
  float lower = -1.0f, upper = 1.0f;
  float val = code[pivot];
  for (int i = 64; i > 0; i >>= 1) {
    if (x > val) {
      lower_pivot = pivot;
      lower = val;
      pivot += i;
    } else {
      upper_pivot = pivot;
      upper = val;
      pivot -= i;
    }
    val = code[pivot];
  }
  if (upper_pivot == 255) upper = code[upper_pivot];
  if (lower_pivot == 0) lower = code[lower_pivot];
  if (x > val) return uint8_t(x > (upper + val) * 0.5f ? upper_pivot : pivot);
  return uint8_t(x < (lower + val) * 0.5f ? lower_pivot : pivot);
}

// 16 bytes of T <-> kE floats.
template <typename T, int kE>
__device__ __forceinline__ void load16(float (&v)[kE], const T* p) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const T* t = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int j = 0; j < kE; ++j) v[j] = to_f32(t[j]);
}
template <typename T, int kE>
__device__ __forceinline__ void store16(T* p, const float (&v)[kE]) {
  uint4 raw;
  T* t = reinterpret_cast<T*>(&raw);
#pragma unroll
  for (int j = 0; j < kE; ++j) t[j] = from_f32<T>(v[j]);
  *reinterpret_cast<uint4*>(p) = raw;
}

// One CUDA block per chunk of 256 NF4 blocks. kG threads share an NF4 block, each loading 16 bytes (kE
// values): coalesced loads, a kG-lane shuffle max, kE/2 packed bytes stored per thread. Also writes the chunk's
// absmax sum (f64 halving tree over the chunk, zero-padded) for the offset; nf4_cpu.cpp sums in the same order.
template <typename T>
__global__ void nf4_quantize_kernel(uint8_t* __restrict__ packed, float* __restrict__ absmax,
                                    double* __restrict__ chunk_sum, const T* __restrict__ w, int64_t n,
                                    const __grid_constant__ Nf4Tables tab) {
  constexpr int kE = 16 / sizeof(T), kG = kNf4Block / kE, kBlocksPerStep = kThreads / kG;
  __shared__ double sums[kNf4Block2];
  const int64_t nb = nf4_blocks(n), packed_bytes = nf4_packed_bytes(n);
  const int g = threadIdx.x % kG;
  for (int step = 0; step < kG; ++step) {
    const int local = step * kBlocksPerStep + threadIdx.x / kG;  // NF4 block within the chunk
    const int64_t b = int64_t(blockIdx.x) * kNf4Block2 + local;
    const int64_t e = b * kNf4Block + g * kE;  // first of this thread's kE values
    float v[kE];
    if (e + kE <= n) {
      load16<T, kE>(v, w + e);
    } else {
#pragma unroll
      for (int j = 0; j < kE; ++j) v[j] = e + j < n ? to_f32(w[e + j]) : 0.f;  // zero-filled tail (§3.2)
    }
    float m = 0.f;
#pragma unroll
    for (int j = 0; j < kE; ++j) m = fmaxf(m, abs_ftz(v[j]));
#pragma unroll
    for (int o = kG / 2; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    const float inv = rcp_approx_ftz(m);
    uint8_t bytes[kE / 2];
#pragma unroll
    for (int j = 0; j < kE / 2; ++j)
      bytes[j] = uint8_t(nf4_code(mul_ftz(v[2 * j], inv), tab) << 4 | nf4_code(mul_ftz(v[2 * j + 1], inv), tab));
    const int64_t pb = e / 2;
    if (pb + kE / 2 <= packed_bytes) {
      if constexpr (kE == 8) {
        *reinterpret_cast<uint32_t*>(packed + pb) = uint32_t(bytes[0]) | uint32_t(bytes[1]) << 8 |
                                                    uint32_t(bytes[2]) << 16 | uint32_t(bytes[3]) << 24;
      } else {
        *reinterpret_cast<uint16_t*>(packed + pb) = uint16_t(bytes[0] | bytes[1] << 8);
      }
    } else {
      for (int j = 0; j < kE / 2 && pb + j < packed_bytes; ++j) packed[pb + j] = bytes[j];
    }
    if (g == 0) {
      if (b < nb) absmax[b] = m;
      sums[local] = b < nb ? double(m) : 0.0;
    }
  }
  __syncthreads();
  for (int s = kNf4Block2 / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) sums[threadIdx.x] += sums[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) chunk_sum[blockIdx.x] = sums[0];
}

// offset = mean(absmax), summing the chunk sums in the order nf4_cpu.cpp spells out: lane t adds chunks
// t, t + 1024, ... in turn, then a halving tree over the 1024 lanes.
constexpr int kOffsetThreads = 1024;
__global__ void nf4_offset_kernel(float* __restrict__ offset, const double* __restrict__ chunk_sum, int64_t nb2,
                                  int64_t nb) {
  __shared__ double part[kOffsetThreads];
  double s = 0;
  for (int64_t k = threadIdx.x; k < nb2; k += kOffsetThreads) s += chunk_sum[k];
  part[threadIdx.x] = s;
  __syncthreads();
  for (int h = kOffsetThreads / 2; h > 0; h >>= 1) {
    if (threadIdx.x < h) part[threadIdx.x] += part[threadIdx.x + h];
    __syncthreads();
  }
  if (threadIdx.x == 0) offset[0] = __double2float_rn(part[0] / double(nb));
}

// One CUDA block per chunk of 256 absmax values: center, chunk max, 8-bit dynamic-map code (§3.4).
__global__ void nf4_double_quant_kernel(uint8_t* __restrict__ absmax_q, float* __restrict__ absmax2,
                                        const float* __restrict__ absmax, const float* __restrict__ offset,
                                        int64_t nb, const __grid_constant__ Nf4Tables tab) {
  __shared__ float code[256];
  __shared__ float red[32];
  code[threadIdx.x] = tab.map[threadIdx.x];
  __syncthreads();
  const int64_t b = int64_t(blockIdx.x) * kNf4Block2 + threadIdx.x;
  const float c = b < nb ? __fsub_rn(absmax[b], offset[0]) : 0.f;  // torch's `absmax -= offset` (IEEE)
  const float m = block_max(abs_ftz(c), red);                      // flushed, so fmaxf acts as max.ftz
  const float xn = mul_ftz(c, rcp_approx_ftz(m));
  if (b < nb) absmax_q[b] = dynamic_map_quantize(code, xn);
  if (threadIdx.x == 0) absmax2[blockIdx.x] = m;
}

// Each thread handles 16 packed bytes = 32 outputs, as kUnits units of kE outputs (one 16-byte store each).
// Unit j of a warp's lane is warp_base + j*32 + lane, so both the packed loads (kE/2 bytes) and the 16-byte
// stores are contiguous across the warp. Every unit lies inside one NF4 block; its absmax is rebuilt from the
// (L1-resident) absmax_q/absmax2 with the two f32 roundings of §3.5.
// e0: global index of out[0]; count: outputs. e0 % kE == 0, so the vector accesses are aligned.
template <typename T>
__global__ void nf4_dequantize_kernel(T* __restrict__ out, const uint8_t* __restrict__ packed,
                                      const uint8_t* __restrict__ absmax_q, const float* __restrict__ absmax2,
                                      const float* __restrict__ offset, int64_t e0, int64_t count,
                                      const __grid_constant__ Nf4Tables tab) {
  constexpr int kE = 16 / sizeof(T), kUnits = 32 / kE;
  // The 16 NF4 values in shared memory (indexed per element). The 8-bit absmax code is looked up in the
  // parameter bank directly: a warp's units span at most 5 NF4 blocks, so that read diverges at most 5 ways,
  // where copying all 256 entries per block cost 256 divergent reads.
  __shared__ float nf4[16];
  if (threadIdx.x < 16) nf4[threadIdx.x] = tab.nf4[threadIdx.x];
  __syncthreads();
  const float off = offset[0];
  const int lane = threadIdx.x % 32;
  const int64_t warp = (int64_t(blockIdx.x) * kThreads + threadIdx.x) / 32;
  if ((warp + 1) * 32 * kUnits * kE <= count) {
    // Every unit of the warp is whole (all but the last warp): all loads first, so that a thread's kUnits
    // packed words and absmax codes are in flight together (the loop below waits for each unit in turn).
    uint32_t bits[kUnits];
    uint8_t aq[kUnits];
    float a2[kUnits];
#pragma unroll
    for (int j = 0; j < kUnits; ++j) {
      const int64_t e = e0 + (warp * 32 * kUnits + j * 32 + lane) * kE, b = e / kNf4Block;
      if constexpr (kE == 8) bits[j] = *reinterpret_cast<const uint32_t*>(packed + e / 2);
      else bits[j] = *reinterpret_cast<const uint16_t*>(packed + e / 2);
      aq[j] = absmax_q[b];
      a2[j] = absmax2[b / kNf4Block2];
    }
#pragma unroll
    for (int j = 0; j < kUnits; ++j) {
      const float absmax = __fadd_rn(mul_ftz(tab.map[aq[j]], a2[j]), off);
      float v[kE];
#pragma unroll
      for (int k = 0; k < kE / 2; ++k) {
        const uint32_t byte = (bits[j] >> (8 * k)) & 0xFFu;
        v[2 * k] = mul_ftz(nf4[byte >> 4], absmax);
        v[2 * k + 1] = mul_ftz(nf4[byte & 0xFu], absmax);
      }
      store16<T, kE>(out + (warp * 32 * kUnits + j * 32 + lane) * kE, v);
    }
    return;
  }
#pragma unroll
  for (int j = 0; j < kUnits; ++j) {
    const int64_t local = (warp * 32 * kUnits + j * 32 + lane) * kE;  // first output of this unit
    if (local >= count) break;
    const int64_t e = e0 + local, b = e / kNf4Block;
    const float absmax = __fadd_rn(mul_ftz(tab.map[absmax_q[b]], absmax2[b / kNf4Block2]), off);
    if (local + kE <= count) {
      uint32_t bits;  // kE nibbles, first element in the high nibble of the first byte
      if constexpr (kE == 8) bits = *reinterpret_cast<const uint32_t*>(packed + e / 2);
      else bits = *reinterpret_cast<const uint16_t*>(packed + e / 2);
      float v[kE];
#pragma unroll
      for (int k = 0; k < kE / 2; ++k) {
        const uint32_t byte = (bits >> (8 * k)) & 0xFFu;
        v[2 * k] = mul_ftz(nf4[byte >> 4], absmax);
        v[2 * k + 1] = mul_ftz(nf4[byte & 0xFu], absmax);
      }
      store16<T, kE>(out + local, v);
    } else {
      for (int64_t i = local; i < count; ++i) {
        const int64_t ei = e0 + i;
        const uint8_t byte = packed[ei / 2];
        out[i] = from_f32<T>(mul_ftz(nf4[(ei & 1) ? byte & 0xF : byte >> 4], absmax));
      }
    }
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

size_t round_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

}  // namespace

namespace cuda {

size_t nf4_quantize_workspace_bytes(int64_t rows, int64_t cols) {
  const int64_t n = rows * cols;
  return round_up(size_t(nf4_blocks(n)) * sizeof(float), 256) + size_t(nf4_blocks2(n)) * sizeof(double);
}

void nf4_quantize(const Nf4Weight& q, TensorView w, TensorView workspace, const Nf4QuantParams& p,
                  cudaStream_t stream) {
  nf4_check(q, w, 0, q.rows);
  ENGINE_CHECK(w.dtype != DType::kF64, "nf4_quantize (cuda): f64 input is CPU-only");
  const size_t ws_bytes = nf4_quantize_workspace_bytes(q.rows, q.cols);
  ENGINE_CHECK(workspace.nbytes() >= ws_bytes, "nf4_quantize: workspace ", workspace.str(), " has ",
               workspace.nbytes(), " bytes, needs ", ws_bytes);
  ENGINE_CHECK(aligned16(w.data) && aligned16(q.packed.data) && aligned16(workspace.data),
               "nf4_quantize: w, packed and workspace must be 16-byte aligned");
  const int64_t n = q.numel(), nb = nf4_blocks(n), nb2 = nf4_blocks2(n);
  if (n == 0) return;
  float* absmax = workspace.ptr<float>();  // (nb)
  double* chunk_sum = reinterpret_cast<double*>(workspace.ptr<char>() + round_up(size_t(nb) * sizeof(float), 256));
  const Nf4Tables tab = make_tables();
  OPS_DISPATCH_FLOAT(w.dtype, T,
    nf4_quantize_kernel<T><<<unsigned(nb2), kThreads, 0, stream>>>(
        q.packed.ptr<uint8_t>(), absmax, chunk_sum, w.ptr<const T>(), n, tab));
  CUDA_CHECK_LAST();
  if (!p.offset_given) {
    nf4_offset_kernel<<<1, kOffsetThreads, 0, stream>>>(q.offset.ptr<float>(), chunk_sum, nb2, nb);
    CUDA_CHECK_LAST();
  }
  nf4_double_quant_kernel<<<unsigned(nb2), kThreads, 0, stream>>>(q.absmax_q.ptr<uint8_t>(), q.absmax2.ptr<float>(),
                                                                  absmax, q.offset.ptr<const float>(), nb, tab);
  CUDA_CHECK_LAST();
}

void nf4_dequantize_rows(TensorView out, const Nf4Weight& q, int64_t r0, int64_t r1, cudaStream_t stream) {
  nf4_check(q, out, r0, r1);
  ENGINE_CHECK(out.dtype != DType::kF64, "nf4_dequantize (cuda): f64 output is CPU-only");
  ENGINE_CHECK(aligned16(out.data) && aligned16(q.packed.data), "nf4_dequantize: out and packed must be 16-byte aligned");
  const int64_t e0 = r0 * q.cols, count = (r1 - r0) * q.cols;
  ENGINE_CHECK(e0 % 8 == 0, "nf4_dequantize_rows: r0*cols=", e0, " must be a multiple of 8");
  if (count == 0) return;
  const Nf4Tables tab = make_tables();
  const int64_t outputs_per_block = int64_t(kThreads) * 32;  // 32 outputs per thread
  const int64_t grid = (count + outputs_per_block - 1) / outputs_per_block;
  OPS_DISPATCH_FLOAT(out.dtype, T,
    nf4_dequantize_kernel<T><<<unsigned(grid), kThreads, 0, stream>>>(
        out.ptr<T>(), q.packed.ptr<const uint8_t>(), q.absmax_q.ptr<const uint8_t>(), q.absmax2.ptr<const float>(),
        q.offset.ptr<const float>(), e0, count, tab));
  CUDA_CHECK_LAST();
}

void nf4_dequantize(TensorView out, const Nf4Weight& q, cudaStream_t stream) {
  nf4_dequantize_rows(out, q, 0, q.rows, stream);
}

}  // namespace cuda
}  // namespace ops
