// engine/tensor.h: Shape, TensorView (non-owning, row-major, contiguous) and Tensor (owning).
//   A view is {data, dtype, shape, device}; ops take views. A Tensor keeps its storage alive through a
//   shared owner that hands the bytes back to the allocator that gave them.
#pragma once
#include <array>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>

#include "engine/check.h"
#include "engine/dtype.h"

namespace engine {

enum class Device : uint8_t { kCPU, kCUDA };
inline const char* device_name(Device d) { return d == Device::kCPU ? "cpu" : "cuda"; }

struct Shape {
  static constexpr int kMaxDims = 5;
  std::array<int64_t, kMaxDims> dims{};
  int ndim = 0;

  Shape() = default;
  Shape(std::initializer_list<int64_t> d) {
    ENGINE_CHECK(int(d.size()) <= kMaxDims, "Shape: at most ", kMaxDims, " dims, got ", d.size());
    for (int64_t v : d) dims[ndim++] = v;
  }
  int64_t operator[](int i) const { return dims[i < 0 ? ndim + i : i]; }
  int64_t numel() const { int64_t n = 1; for (int i = 0; i < ndim; ++i) n *= dims[i]; return n; }
  int64_t cols() const { return ndim == 0 ? 1 : dims[ndim - 1]; }   // innermost extent
  int64_t rows() const { return ndim == 0 ? 1 : numel() / cols(); }  // product of the others
  bool operator==(const Shape& o) const {
    if (ndim != o.ndim) return false;
    for (int i = 0; i < ndim; ++i) if (dims[i] != o.dims[i]) return false;
    return true;
  }
  bool operator!=(const Shape& o) const { return !(*this == o); }
  std::string str() const {
    std::string s = "(";
    for (int i = 0; i < ndim; ++i) s += (i ? "," : "") + std::to_string(dims[i]);
    return s + ")";
  }
};

struct TensorView {
  void* data = nullptr;
  DType dtype = DType::kF32;
  Shape shape;
  Device device = Device::kCPU;

  bool defined() const { return data != nullptr; }
  int64_t numel() const { return shape.numel(); }
  int64_t rows() const { return shape.rows(); }
  int64_t cols() const { return shape.cols(); }
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype); }
  bool is_cuda() const { return device == Device::kCUDA; }
  template <typename T> T* ptr() const { return static_cast<T*>(data); }
  // Same bytes, another shape (element count must match).
  TensorView reshape(Shape s) const {
    ENGINE_CHECK(s.numel() == numel(), "reshape ", shape.str(), " -> ", s.str(), ": element count differs");
    TensorView v = *this; v.shape = s; return v;
  }
  // Rows [begin, end) of the outermost dimension.
  TensorView slice_rows(int64_t begin, int64_t end) const {
    ENGINE_CHECK(shape.ndim >= 1 && 0 <= begin && begin <= end && end <= shape[0],
                 "slice_rows [", begin, ",", end, ") of ", shape.str());
    TensorView v = *this;
    v.data = static_cast<char*>(data) + size_t(begin) * size_t(numel() / shape[0]) * dtype_size(dtype);
    v.shape.dims[0] = end - begin;
    return v;
  }
  std::string str() const {
    return str_cat(dtype_name(dtype), shape.str(), "@", device_name(device));
  }
};

class Allocator;

// Owning tensor: a view plus a share of its storage. Copies share the storage.
class Tensor {
 public:
  Tensor() = default;
  Tensor(TensorView v, std::shared_ptr<void> owner) : view_(v), owner_(std::move(owner)) {}
  static Tensor empty(Shape shape, DType dtype, Allocator& alloc);

  const TensorView& view() const { return view_; }
  operator TensorView() const { return view_; }  // NOLINT: tensors pass wherever a view is taken
  void* data() const { return view_.data; }
  DType dtype() const { return view_.dtype; }
  const Shape& shape() const { return view_.shape; }
  Device device() const { return view_.device; }
  int64_t numel() const { return view_.numel(); }
  size_t nbytes() const { return view_.nbytes(); }
  bool defined() const { return view_.defined(); }
  template <typename T> T* ptr() const { return view_.ptr<T>(); }

 private:
  TensorView view_;
  std::shared_ptr<void> owner_;
};

// Preconditions shared by ops: all defined views live on one device; returns it.
inline Device common_device(std::initializer_list<TensorView> ts) {
  const TensorView* first = nullptr;
  for (const TensorView& t : ts) {
    if (!t.defined()) continue;
    if (first == nullptr) { first = &t; continue; }
    ENGINE_CHECK(t.device == first->device, "tensors on different devices: ", first->str(), " and ", t.str());
  }
  ENGINE_CHECK(first != nullptr, "no defined tensor");
  return first->device;
}

}  // namespace engine
