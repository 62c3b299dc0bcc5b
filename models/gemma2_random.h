// models/gemma2_random.h: a random Gemma-2 checkpoint in the HF layout (config.json + model.safetensors),
// for tests, the demo and benchmarks that need no download.
#pragma once
#include <string>

#include "engine/dtype.h"
#include "models/gemma2_config.h"

namespace models {

struct RandomInit {
  uint64_t seed = 1;
  double std = 0.02;       // linear and embedding weights ~ N(0, std^2)
  double norm_std = 0.1;   // RMSNorm w ~ N(0, norm_std^2): the applied scale is 1 + w
};

// A small config: the given sizes, Gemma-2's softcaps, theta and window, even layers sliding.
Gemma2Config tiny_config(int64_t hidden, int64_t intermediate, int64_t layers, int64_t heads, int64_t kv_heads,
                         int64_t head_dim, int64_t vocab);

void write_random_checkpoint(const std::string& dir, const Gemma2Config& c, engine::DType dtype,
                             const RandomInit& init);

}  // namespace models
