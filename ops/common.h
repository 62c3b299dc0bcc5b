// ops/common.h: conventions shared by every op.
//   Argument order: outputs, then inputs, then a params struct, then the Engine (dispatch) or the
//   cudaStream_t (ops::cuda::) last. ops::cpu:: functions are the specification and the CPU backend.
//   Gradient semantics: each header says, per gradient, whether it is set (=) or accumulated (+=).
//   Activation gradients take an Accum mode so the tape can set the first contribution and add the rest;
//   parameter gradients always accumulate (+=) and are zeroed once per optimizer step.
#pragma once
#include "engine/engine.h"
#include "engine/tensor.h"

namespace ops {

using engine::Device;
using engine::DType;
using engine::Engine;
using engine::Shape;
using engine::TensorView;

enum class Accum : bool { kSet = false, kAdd = true };

// True when every defined view starts on an 8-element boundary (16 bytes of a 16-bit dtype, 32 of f32, 64 of
// f64): what the kernels that move 8-element vectors need, and what lora_linear checks before fusing.
inline bool vec8_aligned(std::initializer_list<TensorView> ts) {
  for (const TensorView& t : ts)
    if (t.defined() && reinterpret_cast<uintptr_t>(t.data) % (engine::dtype_size(t.dtype) * 8) != 0) return false;
  return true;
}

inline bool on_cuda(std::initializer_list<TensorView> ts) {
  return engine::common_device(ts) == Device::kCUDA;
}

inline void check_dtype(const TensorView& t, std::initializer_list<DType> allowed, const char* what) {
  for (DType d : allowed) if (t.dtype == d) return;
  ENGINE_CHECK(false, what, ": dtype ", engine::dtype_name(t.dtype), " not supported (", t.str(), ")");
}

inline void check_float(const TensorView& t, const char* what) {
  check_dtype(t, {DType::kF32, DType::kF16, DType::kBF16, DType::kF64}, what);
}

}  // namespace ops
