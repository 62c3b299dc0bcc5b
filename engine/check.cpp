#include "engine/check.h"

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace engine {

void fail_api(const char* expr, const std::string& what, const char* file, int line) {
  std::fprintf(stderr, "fatal: %s failed: %s\n  at %s:%d\n", expr, what.c_str(), file, line);
  std::fflush(stderr);
  std::abort();
}

void fail_check(const char* cond, const std::string& msg, const char* file, int line) {
  (void)file;
  (void)line;
  throw Error(msg.empty() ? std::string(cond) + " failed" : msg);
}

const char* cublas_status_name(int status) {
  return cublasLtGetStatusName(static_cast<cublasStatus_t>(status));
}

bool sync_launches() {
  static const bool on = [] {
    const char* v = std::getenv("ENGINE_SYNC_LAUNCHES");
    return v != nullptr && std::strcmp(v, "0") != 0 && v[0] != '\0';
  }();
  return on;
}

void check_last_launch(const char* file, int line) {
  cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess && sync_launches()) e = cudaDeviceSynchronize();
  if (e != cudaSuccess) fail_api("kernel launch", cudaGetErrorString(e), file, line);
}

}  // namespace engine
