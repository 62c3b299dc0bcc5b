// tests/ops/nf4_test_util.h: a quantized weight in guarded test tensors, and small helpers shared by the NF4
// CPU and GPU tests.
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

#include "ops/nf4.h"
#include "tests/test_util.h"

namespace test {

struct TestNf4 {
  TestTensor packed, absmax_q, absmax2, offset;
  int64_t rows, cols;
  TestNf4(Engine& eng, Device dev, int64_t r, int64_t c)
      : packed(eng, dev, {ops::nf4_packed_bytes(r * c)}, DType::kU8),
        absmax_q(eng, dev, {ops::nf4_blocks(r * c)}, DType::kU8),
        absmax2(eng, dev, {ops::nf4_blocks2(r * c)}, DType::kF32),
        offset(eng, dev, {1}, DType::kF32),
        rows(r),
        cols(c) {}
  ops::Nf4Weight view() const { return {packed, absmax_q, absmax2, offset, rows, cols}; }
  bool guards_intact() const {
    return packed.guards_intact() && absmax_q.guards_intact() && absmax2.guards_intact() && offset.guards_intact();
  }
  // Copies every array of `o` (same shape, any device).
  void set_from(const TestNf4& o) {
    packed.set(o.packed.values());
    absmax_q.set(o.absmax_q.values());
    absmax2.set(o.absmax2.values());
    offset.set(o.offset.values());
  }
};

inline float f32(uint32_t bits) { return engine::bits_f32(bits); }

// NF4 codes (one per element, length n) unpacked from the packed bytes: even index in the high nibble.
inline std::vector<int> unpack_codes(const std::vector<double>& packed, int64_t n) {
  std::vector<int> c(n);
  for (int64_t e = 0; e < n; ++e) {
    const int byte = int(packed[e / 2]);
    c[e] = (e & 1) ? byte & 0xF : byte >> 4;
  }
  return c;
}

// Reconstructed absmax of every block (SPEC.md §3.5), written out with two explicit f32 roundings.
inline std::vector<float> reconstructed_absmax(const TestNf4& q) {
  const auto aq = q.absmax_q.values(), a2 = q.absmax2.values();
  const float off = float(q.offset.values()[0]);
  std::vector<float> out(aq.size());
  for (size_t b = 0; b < aq.size(); ++b) {
    volatile float a8 = f32(ops::kDynamicMapBits[int(aq[b])]) * float(a2[b / ops::kNf4Block2]);
    out[b] = a8 + off;
  }
  return out;
}

// One block with absmax exactly 1, so x_n = x: the threshold rule is visible directly.
inline std::vector<double> threshold_block(std::vector<int>* want) {
  std::vector<double> x(64, 0.0);
  want->assign(64, 7);
  x[0] = 1.0;  (*want)[0] = 15;
  x[1] = -1.0; (*want)[1] = 0;
  x[2] = 0.0;  (*want)[2] = 7;
  for (int t = 0; t < 15; ++t) {
    const float th = f32(ops::kNf4ThresholdBits[t]);
    x[3 + 3 * t] = th;                       (*want)[3 + 3 * t] = t;      // tie: the lower code
    x[4 + 3 * t] = std::nextafter(th, 2.f);  (*want)[4 + 3 * t] = t + 1;  // strictly above
    x[5 + 3 * t] = std::nextafter(th, -2.f); (*want)[5 + 3 * t] = t;
  }
  for (int i = 0; i < 16; ++i) {  // elements 48..63: the code values themselves
    x[48 + i] = f32(ops::kNf4CodeBits[i]);
    (*want)[48 + i] = i;
  }
  return x;
}

}  // namespace test
