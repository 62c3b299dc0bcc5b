#include "tests/test_util.h"

#include <cmath>
#include <cstring>

#include "engine/philox.h"

namespace test {

std::vector<double> random_normal(int64_t n, uint64_t seed, double scale) {
  std::vector<double> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = scale * engine::philox_normal(seed, 0, uint64_t(i));
  return v;
}

std::vector<double> random_uniform(int64_t n, uint64_t seed, double lo, double hi) {
  std::vector<double> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = lo + (hi - lo) * engine::philox_uniform(seed, 1, uint64_t(i));
  return v;
}

namespace {
constexpr unsigned char kGuardByte = 0xA5;
}

TestTensor::TestTensor(Engine& eng, Device dev, Shape shape, DType dtype) : eng_(&eng) {
  view_.dtype = dtype;
  view_.shape = shape;
  view_.device = dev;
  bytes_ = view_.nbytes() + 2 * kGuard;
  engine::Allocator& a = dev == Device::kCUDA ? eng.allocator() : static_cast<engine::Allocator&>(eng.host_allocator());
  base_ = static_cast<char*>(a.allocate(bytes_));
  view_.data = base_ + kGuard;
  std::vector<unsigned char> guard(kGuard, kGuardByte);
  if (dev == Device::kCUDA) {
    CUDA_CHECK(cudaMemcpy(base_, guard.data(), kGuard, cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(base_ + kGuard + view_.nbytes(), guard.data(), kGuard, cudaMemcpyHostToDevice));
  } else {
    std::memcpy(base_, guard.data(), kGuard);
    std::memcpy(base_ + kGuard + view_.nbytes(), guard.data(), kGuard);
  }
  poison();
}

TestTensor::TestTensor(Engine& eng, Device dev, Shape shape, DType dtype, const std::vector<double>& values)
    : TestTensor(eng, dev, shape, dtype) {
  set(values);
}

TestTensor::TestTensor(TestTensor&& o) noexcept : eng_(o.eng_), base_(o.base_), bytes_(o.bytes_), view_(o.view_) {
  o.base_ = nullptr;
}

TestTensor::~TestTensor() {
  if (base_ == nullptr) return;
  if (view_.device == Device::kCUDA) {
    eng_->synchronize();
    eng_->allocator().deallocate(base_);
  } else {
    eng_->host_allocator().deallocate(base_);
  }
}

void TestTensor::poison() {
  if (view_.device == Device::kCUDA) {
    eng_->synchronize();
    CUDA_CHECK(cudaMemset(view_.data, 0xFF, view_.nbytes()));
  } else {
    std::memset(view_.data, 0xFF, view_.nbytes());
  }
}

void TestTensor::set(const std::vector<double>& v) {
  ENGINE_CHECK(int64_t(v.size()) == view_.numel(), "TestTensor::set: ", v.size(), " values for ", view_.str());
  std::vector<char> host(view_.nbytes());
  for (size_t i = 0; i < v.size(); ++i) engine::store_f64(host.data(), view_.dtype, int64_t(i), v[i]);
  if (view_.device == Device::kCUDA) {
    eng_->synchronize();
    CUDA_CHECK(cudaMemcpy(view_.data, host.data(), host.size(), cudaMemcpyHostToDevice));
  } else {
    std::memcpy(view_.data, host.data(), host.size());
  }
}

std::vector<double> TestTensor::values() const {
  std::vector<char> host(view_.nbytes());
  if (view_.device == Device::kCUDA) {
    eng_->synchronize();
    CUDA_CHECK(cudaMemcpy(host.data(), view_.data, host.size(), cudaMemcpyDeviceToHost));
  } else {
    std::memcpy(host.data(), view_.data, host.size());
  }
  std::vector<double> out(view_.numel());
  for (int64_t i = 0; i < view_.numel(); ++i) out[i] = engine::load_f64(host.data(), view_.dtype, i);
  return out;
}

bool TestTensor::guards_intact() const {
  std::vector<unsigned char> g(2 * kGuard);
  if (view_.device == Device::kCUDA) {
    eng_->synchronize();
    CUDA_CHECK(cudaMemcpy(g.data(), base_, kGuard, cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaMemcpy(g.data() + kGuard, base_ + kGuard + view_.nbytes(), kGuard, cudaMemcpyDeviceToHost));
  } else {
    std::memcpy(g.data(), base_, kGuard);
    std::memcpy(g.data() + kGuard, base_ + kGuard + view_.nbytes(), kGuard);
  }
  for (unsigned char c : g) if (c != kGuardByte) return false;
  return true;
}

Tol tol_for(DType t) {
  switch (t) {
    case DType::kF64: return {1e-12, 1e-10};
    case DType::kF32: return {1e-5, 1e-4};
    case DType::kF16: return {2e-3, 2e-3};      // f16 ulp is 2^-11 relative
    case DType::kBF16: return {1.6e-2, 1.6e-2};  // bf16 ulp is 2^-8 relative
    default: return {0, 0};
  }
}

::testing::AssertionResult all_close(const std::vector<double>& got, const std::vector<double>& want, Tol tol) {
  if (got.size() != want.size())
    return ::testing::AssertionFailure() << "size " << got.size() << " vs expected " << want.size();
  int64_t bad = 0, worst = -1;
  double worst_excess = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double lim = tol.atol + tol.rtol * std::fabs(want[i]);
    const double err = std::fabs(got[i] - want[i]);
    if (!(err <= lim)) {  // NaN fails
      ++bad;
      const double excess = std::isnan(err) ? INFINITY : err - lim;
      if (worst < 0 || excess > worst_excess) { worst = int64_t(i); worst_excess = excess; }
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << bad << " of " << got.size() << " elements differ (atol " << tol.atol
                                       << ", rtol " << tol.rtol << "); worst at " << worst << ": got "
                                       << got[worst] << ", expected " << want[worst];
}

::testing::AssertionResult all_finite(const std::vector<double>& v) {
  for (size_t i = 0; i < v.size(); ++i)
    if (!std::isfinite(v[i])) return ::testing::AssertionFailure() << "element " << i << " is " << v[i];
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult guards_intact(const TestTensor& t) {
  if (t.guards_intact()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "guard bytes around " << t.view().str() << " were overwritten";
}

std::vector<double> numeric_grad(const std::function<double()>& loss, TestTensor& x, double step) {
  ENGINE_CHECK(x.view().device == Device::kCPU, "numeric_grad needs a CPU tensor");
  std::vector<double> v = x.values(), g(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    const double orig = v[i];
    v[i] = orig + step; x.set(v);
    const double fp = loss();
    v[i] = orig - step; x.set(v);
    const double fm = loss();
    v[i] = orig; x.set(v);
    g[i] = (fp - fm) / (2 * step);
  }
  return g;
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) s += a[i] * b[i];
  return s;
}

}  // namespace test
