// ops/dropout_cpu.cpp: reference dropout. Forward and backward are the same diagonal linear map
// (keep_i * scale), so one loop serves both: y = x * keep * scale, dx (+)= dy * keep * scale.
// The product (and the add) is rounded to f32 first, then to the output dtype, as the CUDA kernel and torch's
// f32 opmath do: rounding the exact product straight to bf16/f16 can differ where the f32 product lands on a
// 16-bit midpoint (bf16 x = 1.2890625, p = 0.4: 2.15625, not 2.140625).
#include "ops/dropout.h"

#include "engine/philox.h"

namespace ops {

void dropout_check(TensorView out, TensorView in, const DropoutParams& p) {
  check_float(out, "dropout output");
  check_float(in, "dropout input");
  ENGINE_CHECK(out.numel() == p.n && in.numel() == p.n, "dropout: output ", out.str(), " / input ", in.str(),
               " must hold n=", p.n, " elements");
  ENGINE_CHECK(p.p >= 0.0f && p.p < 1.0f, "dropout: p=", p.p, " must be in [0, 1)");
}

namespace cpu {
namespace {

// CUDA computes in f32 for every output dtype it has; f64 (CPU only, for gradient checks) stays exact.
double opmath(double v, DType out) { return out == DType::kF64 ? v : double(float(v)); }

void dropout_apply(TensorView out, bool accumulate, TensorView in, const DropoutParams& p) {
  const float scale = 1.0f / (1.0f - p.p);
  engine::Philox4 block{};  // one Philox call gives the 16-bit randoms of 8 consecutive indices
  uint64_t block_id = ~uint64_t(0);
  for (int64_t i = 0; i < p.n; ++i) {
    const uint64_t idx = p.offset + uint64_t(i);
    if (p.p != 0.0f && idx >> 3 != block_id) block = engine::philox4x32_10(p.seed, block_id = idx >> 3, p.stream);
    const bool keep = p.p == 0.0f || engine::dropout_keep(engine::philox_half(block, int(idx & 7)), p.p);
    double v = keep ? opmath(engine::load_f64(in.data, in.dtype, i) * double(scale), out.dtype) : 0.0;
    if (accumulate) v = opmath(v + engine::load_f64(out.data, out.dtype, i), out.dtype);
    engine::store_f64(out.data, out.dtype, i, v);
  }
}

}  // namespace

void dropout_forward(TensorView y, TensorView x, const DropoutParams& p) {
  dropout_check(y, x, p);
  dropout_apply(y, false, x, p);
}

void dropout_backward(TensorView dx, Accum dx_mode, TensorView dy, const DropoutParams& p) {
  dropout_check(dx, dy, p);
  dropout_apply(dx, dx_mode == Accum::kAdd, dy, p);
}

}  // namespace cpu
}  // namespace ops
