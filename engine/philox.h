// engine/philox.h: counter-based RNG (Philox4x32-10, Salmon et al., SC'11), the same code on host and
// device, so the CPU and CUDA backends draw identical streams for the same (seed, stream, index).
//   Element i of stream s under seed k is word i%4 of philox(key=k, counter={i/4, s}) (philox_u32); dropout
//   masks use 16-bit halves instead, 8 elements per counter (philox_u16, below).
//   uniform(): 24 random bits -> [0, 1), bit-identical on host and device. normal(): Box-Muller on two
//   uniforms of one counter; logf/cosf may differ by an ulp between host libm and device math.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define ENGINE_HD __host__ __device__ __forceinline__
#else
#define ENGINE_HD inline
#endif

namespace engine {

struct Philox4 { uint32_t v[4]; };

ENGINE_HD Philox4 philox4x32_10(uint64_t seed, uint64_t counter_lo, uint64_t counter_hi) {
  uint32_t c0 = uint32_t(counter_lo), c1 = uint32_t(counter_lo >> 32);
  uint32_t c2 = uint32_t(counter_hi), c3 = uint32_t(counter_hi >> 32);
  uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
  for (int r = 0; r < 10; ++r) {
    const uint64_t p0 = uint64_t(0xD2511F53u) * c0, p1 = uint64_t(0xCD9E8D57u) * c2;
    const uint32_t hi0 = uint32_t(p0 >> 32), lo0 = uint32_t(p0), hi1 = uint32_t(p1 >> 32), lo1 = uint32_t(p1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// One 32-bit word: element `index` of stream `stream`.
ENGINE_HD uint32_t philox_u32(uint64_t seed, uint64_t stream, uint64_t index) {
  const Philox4 r = philox4x32_10(seed, index >> 2, stream);
  return r.v[index & 3];
}

// 24 random bits of a word -> [0, 1).
ENGINE_HD float philox_unit(uint32_t word) { return float(word >> 8) * (1.0f / 16777216.0f); }

ENGINE_HD float philox_uniform(uint64_t seed, uint64_t stream, uint64_t index) {
  return philox_unit(philox_u32(seed, stream, index));
}

// Standard normal: Box-Muller on words 0/1 (even index) or 2/3 (odd index) of counter index/2.
ENGINE_HD float philox_normal(uint64_t seed, uint64_t stream, uint64_t index) {
  const Philox4 r = philox4x32_10(seed, index >> 1, stream ^ 0x6e6f726d616cull);  // "normal" stream tag
  const int w = int(index & 1) * 2;
  const float u1 = (float(r.v[w] >> 8) + 1.0f) * (1.0f / 16777216.0f);  // (0, 1]: log is finite
  const float u2 = float(r.v[w + 1] >> 8) * (1.0f / 16777216.0f);
  return sqrtf(-2.0f * logf(u1)) * cosf(6.2831853071795864f * u2);
}

// Dropout masks (ops/dropout.h, ops/lora_down.h): 16 random bits per element, so one Philox call serves 8
// elements: element i of stream s is half-word i % 8 (low half of word (i % 8) / 2 first) of counter i / 8.
// keep = h / 65536 >= p: the drop probability is ceil(65536 p) / 65536, within 1.6e-5 of p.
ENGINE_HD uint32_t philox_half(const Philox4& r, int k) {
  const uint32_t w = r.v[k >> 1];
  return (k & 1) ? w >> 16 : w & 0xFFFFu;
}
ENGINE_HD uint32_t philox_u16(uint64_t seed, uint64_t stream, uint64_t index) {
  return philox_half(philox4x32_10(seed, index >> 3, stream), int(index & 7));
}
ENGINE_HD bool dropout_keep(uint32_t h16, float p) { return float(h16) * (1.0f / 65536.0f) >= p; }

// Keep bits (bit k: element first + k) of the 8 consecutive elements first .. first + 7, where
// first % 8 == SH (a template parameter, so the half-word selection compiles to register moves): one Philox
// call when SH == 0, two otherwise.
template <int SH>
ENGINE_HD unsigned dropout_keep8(uint64_t seed, uint64_t stream, uint64_t first, float p) {
  const uint64_t c = first >> 3;
  const Philox4 r0 = philox4x32_10(seed, c, stream);
  Philox4 r1 = r0;
  if (SH != 0) r1 = philox4x32_10(seed, c + 1, stream);
  unsigned keep = 0;
  for (int k = 0; k < 8; ++k) {
    const uint32_t h = SH + k < 8 ? philox_half(r0, SH + k) : philox_half(r1, SH + k - 8);
    keep |= unsigned(dropout_keep(h, p)) << k;
  }
  return keep;
}

}  // namespace engine
