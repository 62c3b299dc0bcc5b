#include "engine/cublaslt.h"

#include "engine/check.h"

namespace engine {
namespace {

cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::kF32: return CUDA_R_32F;
    case DType::kF16: return CUDA_R_16F;
    case DType::kBF16: return CUDA_R_16BF;
    default: throw Error(str_cat("gemm: unsupported dtype ", dtype_name(t)));
  }
}

// Largest power of two (<= 256) dividing the address: cuBLASLt picks kernels by operand alignment.
int alignment(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  int al = 256;
  while (al > 1 && (a % al) != 0) al /= 2;
  return al;
}

struct Layout {
  cublasLtMatrixLayout_t l = nullptr;
  Layout(cudaDataType_t t, int64_t rows, int64_t cols, int64_t ld, int64_t batch, int64_t stride) {
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&l, t, uint64_t(rows), uint64_t(cols), ld));
    if (batch > 1) {
      int32_t b = int32_t(batch);
      CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &b, sizeof(b)));
      CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride,
                                                    sizeof(stride)));
    }
  }
  ~Layout() { cublasLtMatrixLayoutDestroy(l); }
};

}  // namespace

CublasLt::CublasLt(size_t workspace_bytes, Allocator& device_alloc)
    : alloc_(device_alloc), workspace_bytes_(workspace_bytes) {
  CUBLAS_CHECK(cublasLtCreate(&handle_));
  workspace_ = alloc_.allocate(workspace_bytes_);
}

CublasLt::~CublasLt() {
  if (workspace_) alloc_.deallocate(workspace_);
  if (handle_) cublasLtDestroy(handle_);
}

void CublasLt::gemm(const GemmDesc& d, const void* a, const void* b, void* c, cudaStream_t stream) {
  ENGINE_CHECK(d.m > 0 && d.n > 0 && d.k > 0 && d.batch > 0, "gemm: bad sizes m=", d.m, " n=", d.n, " k=", d.k,
               " batch=", d.batch);
  ENGINE_CHECK(d.c_dtype == d.ab_dtype || d.c_dtype == DType::kF32, "gemm: C dtype ", dtype_name(d.c_dtype),
               " must be f32 or the input dtype ", dtype_name(d.ab_dtype));
  // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: cuBLASLt's first operand is our B.
  const cudaDataType_t tab = cuda_type(d.ab_dtype), tc = cuda_type(d.c_dtype);
  const cublasOperation_t op_x = d.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_y = d.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  // Stored (column-major) shapes of B and A.
  const int64_t x_rows = d.trans_b ? d.k : d.n, x_cols = d.trans_b ? d.n : d.k;
  const int64_t y_rows = d.trans_a ? d.m : d.k, y_cols = d.trans_a ? d.k : d.m;
  Layout lx(tab, x_rows, x_cols, x_rows, d.batch, d.stride_b);
  Layout ly(tab, y_rows, y_cols, y_rows, d.batch, d.stride_a);
  Layout lc(tc, d.n, d.m, d.n, d.batch, d.stride_c);

  cublasLtMatmulDesc_t op = nullptr;
  CUBLAS_CHECK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &op_x, sizeof(op_x)));
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &op_y, sizeof(op_y)));

  const int al_x = alignment(b), al_y = alignment(a), al_c = alignment(c);
  const Key key{d.m, d.n, d.k, int(d.trans_a), int(d.trans_b), int(d.ab_dtype), int(d.c_dtype), d.batch,
                d.stride_a, d.stride_b, d.stride_c, al_x * 1024 + al_y, al_c * 2 + (d.beta != 0.f)};
  auto it = algo_cache_.find(key);
  if (it == algo_cache_.end()) {
    cublasLtMatmulPreference_t pref = nullptr;
    CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    uint64_t ws = workspace_bytes_;
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                                      sizeof(ws)));
    uint32_t ax = al_x, ay = al_y, ac = al_c;
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &ax,
                                                      sizeof(ax)));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ay,
                                                      sizeof(ay)));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ac,
                                                      sizeof(ac)));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ac,
                                                      sizeof(ac)));
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(handle_, op, lx.l, ly.l, lc.l, lc.l, pref, 1, &result, &found));
    cublasLtMatmulPreferenceDestroy(pref);
    if (found == 0) {
      cublasLtMatmulDescDestroy(op);
      throw Error(str_cat("gemm: cuBLASLt has no algorithm for m=", d.m, " n=", d.n, " k=", d.k, " ",
                          dtype_name(d.ab_dtype), "->", dtype_name(d.c_dtype)));
    }
    it = algo_cache_.emplace(key, result.algo).first;
  }
  CUBLAS_CHECK(cublasLtMatmul(handle_, op, &d.alpha, b, lx.l, a, ly.l, &d.beta, c, lc.l, c, lc.l, &it->second,
                              workspace_, workspace_bytes_, stream));
  cublasLtMatmulDescDestroy(op);
}

}  // namespace engine
