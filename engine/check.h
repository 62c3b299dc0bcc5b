// engine/check.h: error handling.
//   API failures (CUDA, cuBLAS, NCCL) abort with file, line and the failing call: CUDA errors are sticky,
//   so the context cannot be trusted afterwards.
//   Precondition failures (shapes, dtypes, config) throw engine::Error with the offending values, so tests
//   can EXPECT_THROW them and tools can print them.
//   ENGINE_SYNC_LAUNCHES=1 in the environment makes CUDA_CHECK_LAST synchronize, so an asynchronous fault
//   names its own launch (off by default).
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace engine {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

[[noreturn]] void fail_api(const char* expr, const std::string& what, const char* file, int line);
[[noreturn]] void fail_check(const char* cond, const std::string& msg, const char* file, int line);
const char* cublas_status_name(int status);
bool sync_launches();   // ENGINE_SYNC_LAUNCHES, read once
void check_last_launch(const char* file, int line);

template <typename... Args>
std::string str_cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

}  // namespace engine

#define ENGINE_CHECK_GEN(expr, ok, to_string)                                          \
  do {                                                                                 \
    auto engine_status_ = (expr);                                                                  \
    if (engine_status_ != (ok)) ::engine::fail_api(#expr, to_string(engine_status_), __FILE__, __LINE__);    \
  } while (0)
#define CUDA_CHECK(e) ENGINE_CHECK_GEN(e, cudaSuccess, cudaGetErrorString)
#define CUBLAS_CHECK(e) ENGINE_CHECK_GEN(e, CUBLAS_STATUS_SUCCESS, ::engine::cublas_status_name)
#define NCCL_CHECK(e) ENGINE_CHECK_GEN(e, ncclSuccess, ncclGetErrorString)
#define CUDA_CHECK_LAST() ::engine::check_last_launch(__FILE__, __LINE__)

// Precondition: throws engine::Error("<cond> failed: <message>").
#define ENGINE_CHECK(cond, ...)                                                                   \
  do {                                                                                            \
    if (!(cond)) ::engine::fail_check(#cond, ::engine::str_cat(__VA_ARGS__), __FILE__, __LINE__); \
  } while (0)
