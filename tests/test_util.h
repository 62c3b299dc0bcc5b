// tests/test_util.h: what every op test needs.
//   TestTensor: a tensor in a chosen place and dtype with guard bytes on both sides (to catch out-of-bounds
//   writes) and poison (all-ones bytes: NaN in every float dtype) inside until written.
//   Random inputs come from the engine's Philox, never zeros. all_close / all_finite report the worst
//   element. numeric_grad: central finite differences on CPU f64 tensors.
#pragma once
#include <gtest/gtest.h>

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "engine/engine.h"

namespace test {

using engine::Device;
using engine::DType;
using engine::Engine;
using engine::Shape;
using engine::TensorView;

std::vector<double> random_normal(int64_t n, uint64_t seed, double scale = 1.0);
std::vector<double> random_uniform(int64_t n, uint64_t seed, double lo, double hi);

// A fresh folder under /tmp, removed with everything in it when the object goes.
class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/engine_testXXXXXX";
    path_ = mkdtemp(tmpl);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  std::string write(const std::string& name, const std::string& bytes) const {
    std::ofstream(file(name), std::ios::binary) << bytes;
    return file(name);
  }

 private:
  std::string path_;
};

class TestTensor {
 public:
  static constexpr size_t kGuard = 256;  // bytes on each side; keeps the data 256-byte aligned
  TestTensor(Engine& eng, Device dev, Shape shape, DType dtype);                // poisoned
  TestTensor(Engine& eng, Device dev, Shape shape, DType dtype, const std::vector<double>& values);
  ~TestTensor();
  TestTensor(const TestTensor&) = delete;
  TestTensor& operator=(const TestTensor&) = delete;
  TestTensor(TestTensor&& o) noexcept;

  TensorView view() const { return view_; }
  operator TensorView() const { return view_; }  // NOLINT
  std::vector<double> values() const;           // read back as double (synchronizes)
  void set(const std::vector<double>& v);       // rounded to dtype
  void poison();
  bool guards_intact() const;

 private:
  Engine* eng_;
  char* base_ = nullptr;
  size_t bytes_ = 0;
  TensorView view_;
};

// A view of n f32 elements starting `off` elements into t (off = 1 breaks 16-byte alignment, so kernels
// take their scalar path).
inline TensorView f32_at(const TestTensor& t, int64_t off, int64_t n) {
  TensorView v = t.view();
  v.data = static_cast<float*>(v.data) + off;
  v.shape = Shape{n};
  return v;
}

struct Tol {
  double atol, rtol;
};
// Tolerance for comparing a CUDA result with the CPU reference in the same output dtype: f32 allows for
// summation-order differences; f16/bf16 allow two ulps of the output format (a value near a rounding
// boundary can round either way after a differently ordered f32 sum).
Tol tol_for(DType t);

::testing::AssertionResult all_close(const std::vector<double>& got, const std::vector<double>& want, Tol tol);
::testing::AssertionResult all_finite(const std::vector<double>& v);
::testing::AssertionResult guards_intact(const TestTensor& t);

// d loss / d x by central differences; x must be a CPU tensor (use f64 for precise checks).
std::vector<double> numeric_grad(const std::function<double()>& loss, TestTensor& x, double step = 1e-5);
double dot(const std::vector<double>& a, const std::vector<double>& b);

// Skip a GPU test with a visible reason when there is no device.
#define REQUIRE_CUDA()                                                                 \
  do {                                                                                 \
    if (::engine::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device on this machine"; \
  } while (0)

}  // namespace test

#define EXPECT_CLOSE(got, want, tol) EXPECT_TRUE(::test::all_close((got), (want), (tol)))
#define EXPECT_ALL_FINITE(v) EXPECT_TRUE(::test::all_finite(v))
#define EXPECT_GUARDS_INTACT(t) EXPECT_TRUE(::test::guards_intact(t))
