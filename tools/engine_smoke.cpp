// tools/engine_smoke.cpp: a smoke run of the engine on whatever backend this machine has: RMSNorm and a
// GEMM on a Gemma-2-2B-width batch, checked against the CPU reference. Replaced by the train_gemma demo.
#include <chrono>
#include <cmath>
#include <cstdio>

#include "engine/engine.h"
#include "engine/philox.h"
#include "ops/matmul.h"
#include "ops/rmsnorm.h"

using namespace engine;

int main() {
  try {
    Engine eng;
    std::printf("%s\n", eng.describe().c_str());
    const int64_t rows = 64, D = 2304, F = 512;
    Tensor x = eng.empty_host({rows, D}, DType::kF32), w = eng.empty_host({D}, DType::kF32);
    Tensor wup = eng.empty_host({F, D}, DType::kF32);
    for (int64_t i = 0; i < x.numel(); ++i) x.ptr<float>()[i] = philox_normal(1, 0, i);
    for (int64_t i = 0; i < w.numel(); ++i) w.ptr<float>()[i] = 0.1f * philox_normal(2, 0, i);
    for (int64_t i = 0; i < wup.numel(); ++i) wup.ptr<float>()[i] = 0.02f * philox_normal(3, 0, i);

    auto run = [&](Engine& e, Tensor& out_host) {
      Tensor xd = e.empty({rows, D}, DType::kF32), wd = e.empty({D}, DType::kF32), ud = e.empty({F, D}, DType::kF32);
      e.copy(xd, x); e.copy(wd, w); e.copy(ud, wup);
      Tensor y = e.empty({rows, D}, DType::kF32), rstd = e.empty({rows}, DType::kF32), h = e.empty({rows, F}, DType::kF32);
      ops::rmsnorm_forward(y, rstd, xd, wd, {rows, D, 1e-6f}, e);
      ops::matmul(h, y, ud, ops::matmul_params(h, y, ud, false, true), e);
      out_host = e.empty_host({rows, F}, DType::kF32);
      e.copy(out_host, h);
      e.synchronize();
    };
    const auto t0 = std::chrono::steady_clock::now();
    Tensor got;
    run(eng, got);
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    Engine cpu({Backend::kCPU});
    Tensor want;
    run(cpu, want);
    double max_err = 0;
    for (int64_t i = 0; i < got.numel(); ++i)
      max_err = std::max(max_err, double(std::fabs(got.ptr<float>()[i] - want.ptr<float>()[i])));
    std::printf("rmsnorm + matmul (%lldx%lld @ %lldx%lld): %.2f ms, max |diff| vs CPU reference %.3g\n",
                (long long)rows, (long long)D, (long long)D, (long long)F, ms, max_err);
    if (!(max_err < 1e-3)) { std::fprintf(stderr, "smoke run FAILED\n"); return 1; }
    std::printf("smoke run OK\n");
    return 0;
  } catch (const Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
