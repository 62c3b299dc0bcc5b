// ops/nf4_cpu.cpp: reference NF4 quantize/dequantize with double quantization (SPEC.md §3.2-§3.5).
//   f32 arithmetic is spelled as f64 operations with an explicit cast back to f32: a product of two floats is
//   exact in f64 and a sum rounds innocuously twice (53 >= 2*24 + 2), so each line is one f32 rounding, and the
//   casts keep the compiler from contracting a multiply and an add into an FMA (bnb rounds twice, §3.5).
#include "ops/nf4.h"

#include <cfloat>
#include <cmath>
#include <vector>

namespace ops {
namespace {

float bits(uint32_t u) { return engine::bits_f32(u); }
// What bnb's --use_fast_math kernels do to subnormal operands and results: flush to a signed zero.
float ftz(float x) { return std::fabs(x) < FLT_MIN ? std::copysign(0.f, x) : x; }
float mul_f32(float a, float b) { return float(double(a) * double(b)); }
float add_f32(float a, float b) { return float(double(a) + double(b)); }

// Number of thresholds strictly below x; NaN compares false everywhere and gets code 0 (§3.2).
uint8_t nf4_code(float xn) {
  uint8_t c = 0;
  for (uint32_t t : kNf4ThresholdBits) c += xn > bits(t) ? 1 : 0;
  return c;
}

}  // namespace

void nf4_check(const Nf4Weight& q, TensorView dense, int64_t r0, int64_t r1) {
  ENGINE_CHECK(q.rows >= 0 && q.cols >= 0, "nf4: bad shape rows=", q.rows, " cols=", q.cols);
  const int64_t n = q.numel();
  ENGINE_CHECK(q.packed.dtype == DType::kU8 && q.packed.numel() == nf4_packed_bytes(n), "nf4: packed ",
               q.packed.str(), " must be u8 with ceil(n/2)=", nf4_packed_bytes(n), " elements");
  ENGINE_CHECK(q.absmax_q.dtype == DType::kU8 && q.absmax_q.numel() == nf4_blocks(n), "nf4: absmax_q ",
               q.absmax_q.str(), " must be u8 with nb=", nf4_blocks(n), " elements");
  ENGINE_CHECK(q.absmax2.dtype == DType::kF32 && q.absmax2.numel() == nf4_blocks2(n), "nf4: absmax2 ",
               q.absmax2.str(), " must be f32 with nb2=", nf4_blocks2(n), " elements");
  ENGINE_CHECK(q.offset.dtype == DType::kF32 && q.offset.numel() == 1, "nf4: offset ", q.offset.str(),
               " must be one f32");
  check_float(dense, "nf4 dense weight");
  ENGINE_CHECK(0 <= r0 && r0 <= r1 && r1 <= q.rows, "nf4: rows [", r0, ",", r1, ") outside 0..", q.rows);
  ENGINE_CHECK(dense.numel() == (r1 - r0) * q.cols, "nf4: dense ", dense.str(), " does not hold rows [", r0, ",",
               r1, ") x cols=", q.cols);
}

namespace cpu {

uint8_t dynamic_map_quantize(float x) {
  // bnb csrc/kernels.cu dQuantize<0>, literally (§3.4): the tie and edge rules matter.
  const auto code = [](int i) { return bits(kDynamicMapBits[i]); };
  int pivot = 127, upper_pivot = 255, lower_pivot = 0;
  float lower = -1.0f, upper = 1.0f;
  float val = code(pivot);
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
    val = code(pivot);
  }
  if (upper_pivot == 255) upper = code(upper_pivot);
  if (lower_pivot == 0) lower = code(lower_pivot);
  if (x > val) return uint8_t(x > (upper + val) * 0.5f ? upper_pivot : pivot);
  return uint8_t(x < (lower + val) * 0.5f ? lower_pivot : pivot);
}

void nf4_quantize(const Nf4Weight& q, TensorView w, const Nf4QuantParams& p) {
  nf4_check(q, w, 0, q.rows);
  const int64_t n = q.numel(), nb = nf4_blocks(n), nb2 = nf4_blocks2(n);
  if (n == 0) return;
  uint8_t* packed = q.packed.ptr<uint8_t>();
  std::vector<float> absmax(nb);
  for (int64_t b = 0; b < nb; ++b) {
    // Zero-fill past n (§3.2); the pad value after an odd n lands in the last byte's low nibble, as in bnb.
    float x[kNf4Block];
    float m = 0.f;
    for (int64_t j = 0; j < kNf4Block; ++j) {
      const int64_t e = b * kNf4Block + j;
      x[j] = e < n ? ftz(float(engine::load_f64(w.data, w.dtype, e))) : 0.f;
      m = std::max(m, std::fabs(x[j]));
    }
    absmax[b] = m;
    const float inv = ftz(1.0f / m);  // IEEE here, rcp.approx on CUDA; inf for an all-zero block
    for (int64_t j = 0; j < kNf4Block; j += 2) {
      const int64_t byte = (b * kNf4Block + j) / 2;
      if (byte >= q.packed.numel()) break;
      packed[byte] = uint8_t(nf4_code(ftz(mul_f32(x[j], inv))) << 4 | nf4_code(ftz(mul_f32(x[j + 1], inv))));
    }
  }

  float offset;
  if (p.offset_given) {
    offset = q.offset.ptr<float>()[0];
  } else {
    // mean(absmax) in f64, in a fixed order shared with CUDA (one rounding to f32 at the end):
    // 1. each chunk of 256 absmax values (zero-padded) by a halving tree: t[i] += t[i + s], s = 128, 64, ..., 1;
    // 2. lane l of 1024 adds the chunk sums l, l + 1024, ... in turn; 3. a halving tree over the 1024 lanes.
    constexpr int64_t kLanes = 1024;
    std::vector<double> lane(kLanes, 0.0);
    for (int64_t k = 0; k < nb2; ++k) {
      double t[kNf4Block2];
      for (int64_t i = 0; i < kNf4Block2; ++i) t[i] = k * kNf4Block2 + i < nb ? absmax[k * kNf4Block2 + i] : 0.0;
      for (int64_t s = kNf4Block2 / 2; s > 0; s >>= 1)
        for (int64_t i = 0; i < s; ++i) t[i] += t[i + s];
      lane[k % kLanes] += t[0];
    }
    for (int64_t s = kLanes / 2; s > 0; s >>= 1)
      for (int64_t i = 0; i < s; ++i) lane[i] += lane[i + s];
    const double total = lane[0];
    offset = float(total / double(nb));
    q.offset.ptr<float>()[0] = offset;
  }

  uint8_t* absmax_q = q.absmax_q.ptr<uint8_t>();
  float* absmax2 = q.absmax2.ptr<float>();
  for (int64_t k = 0; k < nb2; ++k) {
    const int64_t b0 = k * kNf4Block2, b1 = std::min(nb, b0 + kNf4Block2);
    float m = 0.f;
    for (int64_t b = b0; b < b1; ++b) {
      absmax[b] = ftz(add_f32(absmax[b], -offset));  // torch's `absmax -= offset`, then FTZ operand
      m = std::max(m, std::fabs(absmax[b]));
    }
    absmax2[k] = m;
    const float inv = ftz(1.0f / m);
    for (int64_t b = b0; b < b1; ++b) absmax_q[b] = dynamic_map_quantize(ftz(mul_f32(absmax[b], inv)));
  }
}

void nf4_dequantize_rows(TensorView out, const Nf4Weight& q, int64_t r0, int64_t r1) {
  nf4_check(q, out, r0, r1);
  const uint8_t* packed = q.packed.ptr<const uint8_t>();
  const uint8_t* absmax_q = q.absmax_q.ptr<const uint8_t>();
  const float* absmax2 = q.absmax2.ptr<const float>();
  const float offset = q.offset.ptr<const float>()[0];
  const int64_t e0 = r0 * q.cols, e1 = r1 * q.cols;
  int64_t block = -1;
  float absmax = 0.f;
  for (int64_t e = e0; e < e1; ++e) {
    if (e / kNf4Block != block) {
      block = e / kNf4Block;
      const float a8 = ftz(mul_f32(bits(kDynamicMapBits[absmax_q[block]]), absmax2[block / kNf4Block2]));
      absmax = add_f32(a8, offset);
    }
    const uint8_t byte = packed[e / 2];
    const int nib = (e & 1) ? byte & 0xF : byte >> 4;
    engine::store_f64(out.data, out.dtype, e - e0, ftz(mul_f32(bits(kNf4CodeBits[nib]), absmax)));
  }
}

void nf4_dequantize(TensorView out, const Nf4Weight& q) { nf4_dequantize_rows(out, q, 0, q.rows); }

}  // namespace cpu
}  // namespace ops
