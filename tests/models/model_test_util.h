// tests/models/model_test_util.h: what the model-level tests share: host copies of device tensors, random peft
// adapters, and the NF4 arrays of two loaded models compared byte for byte.
#pragma once
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "engine/philox.h"
#include "models/gemma2.h"
#include "models/lora.h"

namespace test {

// A tensor's raw bytes on the host (synchronizes).
inline std::vector<uint8_t> host_bytes(engine::Engine& eng, const engine::Tensor& t) {
  engine::Tensor h = eng.empty_host(t.shape(), t.dtype());
  eng.copy(h, t);
  eng.synchronize();
  const auto* p = static_cast<const uint8_t*>(h.data());
  return std::vector<uint8_t>(p, p + h.nbytes());
}

// A tensor's values as doubles (synchronizes).
inline std::vector<double> host_values(engine::Engine& eng, const engine::Tensor& t) {
  engine::Tensor h = eng.empty_host(t.shape(), t.dtype());
  eng.copy(h, t);
  eng.synchronize();
  std::vector<double> v(size_t(t.numel()));
  for (size_t i = 0; i < v.size(); ++i) v[i] = engine::load_f64(h.data(), h.dtype(), int64_t(i));
  return v;
}

// A peft adapter folder with A and B ~ scale * N(0, 1) from Philox(seed) (peft's B = 0 would make it a no-op).
inline void write_random_adapter(const models::Gemma2Config& cfg, const models::LoraSpec& spec, uint64_t seed,
                                 float scale, const std::string& dir, const std::string& base_dir) {
  engine::Engine cpu({engine::Backend::kCPU});
  models::LoraAdapters l(cfg, spec, cpu);
  for (int64_t i = 0; i < l.num_params(); ++i)
    l.params().ptr<float>()[i] = scale * engine::philox_normal(seed, 0, uint64_t(i));
  std::filesystem::create_directories(dir);
  l.save_peft(dir, base_dir);
}

// Every NF4 array of two models' linears is the same, byte for byte.
inline void expect_same_nf4_arrays(engine::Engine& ea, const models::Gemma2Model& a, engine::Engine& eb,
                                   const models::Gemma2Model& b) {
  const auto x = a.nf4_weights(), y = b.nf4_weights();
  ASSERT_EQ(x.size(), size_t(7 * a.config().num_hidden_layers));
  ASSERT_EQ(x.size(), y.size());
  for (size_t i = 0; i < x.size(); ++i) {
    ASSERT_EQ(x[i].first, y[i].first);
    EXPECT_EQ(host_bytes(ea, x[i].second->packed), host_bytes(eb, y[i].second->packed)) << x[i].first;
    EXPECT_EQ(host_bytes(ea, x[i].second->absmax_q), host_bytes(eb, y[i].second->absmax_q)) << x[i].first;
    EXPECT_EQ(host_bytes(ea, x[i].second->absmax2), host_bytes(eb, y[i].second->absmax2)) << x[i].first;
    EXPECT_EQ(host_bytes(ea, x[i].second->offset), host_bytes(eb, y[i].second->offset)) << x[i].first;
  }
}

}  // namespace test
