// ops/softcap_cpu.cpp: reference soft-capping with HF's rounding points (f32 math like torch's opmath).
#include <cmath>

#include "ops/softcap.h"

namespace ops {

void softcap_check(TensorView y, TensorView x, float cap) {
  check_float(x, "softcap x");
  ENGINE_CHECK(y.dtype == x.dtype && y.numel() == x.numel(), "softcap: y ", y.str(), " must match x ", x.str());
  ENGINE_CHECK(cap > 0.f, "softcap: cap must be positive, got ", cap);
}

namespace cpu {
void softcap(TensorView y, TensorView x, float cap) {
  softcap_check(y, x, cap);
  const DType t = x.dtype;
  if (t == DType::kF64) {  // the f64 path (finite differences): exact math
    for (int64_t i = 0; i < x.numel(); ++i)
      engine::store_f64(y.data, t, i, double(cap) * std::tanh(engine::load_f64(x.data, t, i) / double(cap)));
    return;
  }
  const float inv = 1.0f / cap;
  for (int64_t i = 0; i < x.numel(); ++i) {
    const float a = float(engine::round_to(t, float(engine::load_f64(x.data, t, i)) * inv));
    const float th = float(engine::round_to(t, std::tanh(a)));
    engine::store_f64(y.data, t, i, th * cap);
  }
}
}  // namespace cpu

}  // namespace ops
