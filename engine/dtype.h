// engine/dtype.h: element types, and host-side conversions that round exactly like CUDA's
// __float2half_rn / __float2bfloat16_rn (round to nearest even), so the CPU backend rounds where the GPU does.
//   kF64 exists for the CPU backend only: finite-difference gradient checks run the CPU reference in f64.
#pragma once
#include <cstdint>
#include <cstring>

#include "engine/check.h"

namespace engine {

enum class DType : uint8_t { kF32, kF16, kBF16, kU8, kI32, kF64 };

inline size_t dtype_size(DType t) {
  switch (t) {
    case DType::kF32: return 4;
    case DType::kF16: return 2;
    case DType::kBF16: return 2;
    case DType::kU8: return 1;
    case DType::kI32: return 4;
    case DType::kF64: return 8;
  }
  return 0;
}

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::kF32: return "f32";
    case DType::kF16: return "f16";
    case DType::kBF16: return "bf16";
    case DType::kU8: return "u8";
    case DType::kI32: return "i32";
    case DType::kF64: return "f64";
  }
  return "?";
}

inline bool is_float(DType t) {
  return t == DType::kF32 || t == DType::kF16 || t == DType::kBF16 || t == DType::kF64;
}

// ---- bit-exact host conversions -----------------------------------------------------------------
inline uint32_t f32_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float bits_f32(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

inline float bf16_to_f32(uint16_t h) { return bits_f32(uint32_t(h) << 16); }
inline uint16_t f32_to_bf16(float f) {
  uint32_t x = f32_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return uint16_t(((x >> 16) & 0x8000u) | 0x7fc0u);  // quiet NaN
  x += 0x7fffu + ((x >> 16) & 1u);  // round to nearest even
  return uint16_t(x >> 16);
}

inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  if (exp == 0x1f) return bits_f32(sign | 0x7f800000u | (man << 13));     // inf / NaN
  if (exp == 0) {
    if (man == 0) return bits_f32(sign);                                   // +-0
    int e = -1;                                                            // subnormal: normalise
    do { man <<= 1; ++e; } while ((man & 0x400u) == 0);
    return bits_f32(sign | uint32_t(127 - 15 - e) << 23 | (man & 0x3ffu) << 13);
  }
  return bits_f32(sign | (exp + 127 - 15) << 23 | man << 13);
}
inline uint16_t f32_to_f16(float f) {
  const uint32_t x = f32_bits(f), sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return uint16_t(sign | 0x7e00u);                  // NaN
  if (ax >= 0x47800000u) return uint16_t(sign | 0x7c00u);                 // >= 65536: inf
  if (ax < 0x38800000u) {                                                 // below 2^-14: subnormal or zero
    if (ax < 0x33000000u) return uint16_t(sign);                          // <= 2^-25 rounds to 0
    const uint32_t e = ax >> 23, m = (ax & 0x7fffffu) | 0x800000u, shift = 126 - e;
    uint32_t r = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1u))) ++r;
    return uint16_t(sign | r);
  }
  uint32_t h = (((ax >> 23) - 112) << 10) | ((ax & 0x7fffffu) >> 13);
  const uint32_t rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;                 // may carry into inf: correct
  return uint16_t(sign | h);
}

// Round a value to what `t` can hold (identity for f32 storage of floats, f64).
inline double round_to(DType t, double v) {
  switch (t) {
    case DType::kF32: return double(float(v));
    case DType::kF16: return f16_to_f32(f32_to_f16(float(v)));
    case DType::kBF16: return bf16_to_f32(f32_to_bf16(float(v)));
    default: return v;
  }
}

// Element access for the CPU backend: every float dtype is read and written through double.
inline double load_f64(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::kF32: return static_cast<const float*>(p)[i];
    case DType::kF16: return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case DType::kBF16: return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case DType::kF64: return static_cast<const double*>(p)[i];
    case DType::kU8: return static_cast<const uint8_t*>(p)[i];
    case DType::kI32: return static_cast<const int32_t*>(p)[i];
  }
  return 0;
}
inline void store_f64(void* p, DType t, int64_t i, double v) {
  switch (t) {
    case DType::kF32: static_cast<float*>(p)[i] = float(v); return;
    case DType::kF16: static_cast<uint16_t*>(p)[i] = f32_to_f16(float(v)); return;
    case DType::kBF16: static_cast<uint16_t*>(p)[i] = f32_to_bf16(float(v)); return;
    case DType::kF64: static_cast<double*>(p)[i] = v; return;
    case DType::kU8: static_cast<uint8_t*>(p)[i] = uint8_t(v); return;
    case DType::kI32: static_cast<int32_t*>(p)[i] = int32_t(v); return;
  }
}

}  // namespace engine
