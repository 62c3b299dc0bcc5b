// tests/ops/nf4_gpu_test.cpp (label gpu): CUDA NF4 against the CPU reference.
//   Dequantize: bit-identical (same f32 operations, same roundings).
//   Quantize: the approximate reciprocal (CUDA, as bnb) vs the IEEE one (CPU) may move a value that sits within
//   an ulp of a threshold to the neighbouring code; counted and bounded here. absmax2 and offset are exact.
//   Nf4Gpu.BnbParityFiles is the engine side of tests/parity/nf4_bnb_parity.py (skipped unless NF4_PARITY_DIR).
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "tests/ops/nf4_test_util.h"

namespace {

using namespace test;

std::vector<double> random_bytes(int64_t n, uint64_t seed) {
  std::vector<double> v = random_uniform(n, seed, 0.0, 256.0);
  for (auto& x : v) x = std::floor(x);
  return v;
}

struct Nf4Case {
  int64_t rows, cols;
  DType dtype;
};

std::string case_name(const ::testing::TestParamInfo<Nf4Case>& i) {
  return "r" + std::to_string(i.param.rows) + "_c" + std::to_string(i.param.cols) + "_" +
         engine::dtype_name(i.param.dtype);
}

// ---- dequantize ----------------------------------------------------------------------------------------------

class Nf4DequantGpu : public ::testing::TestWithParam<Nf4Case> {};

TEST_P(Nf4DequantGpu, BitIdenticalToCpu) {
  REQUIRE_CUDA();
  const auto [rows, cols, dt] = GetParam();
  const int64_t n = rows * cols;
  Engine eng;
  // Random arrays cover every (nibble, absmax code) pair; the values are weight-like (absmax around 0.05).
  TestNf4 qc(eng, Device::kCPU, rows, cols), qg(eng, Device::kCUDA, rows, cols);
  qc.packed.set(random_bytes(ops::nf4_packed_bytes(n), 31));
  qc.absmax_q.set(random_bytes(ops::nf4_blocks(n), 32));
  qc.absmax2.set(random_uniform(ops::nf4_blocks2(n), 33, 0.01, 0.05));
  qc.offset.set({0.0612});
  qg.set_from(qc);
  TestTensor ref(eng, Device::kCPU, {rows, cols}, dt), out(eng, Device::kCUDA, {rows, cols}, dt);
  ops::nf4_dequantize(ref, qc.view(), eng);
  ops::nf4_dequantize(out, qg.view(), eng);
  const auto got = out.values();
  EXPECT_ALL_FINITE(got);
  EXPECT_CLOSE(got, ref.values(), (Tol{0, 0}));
  EXPECT_GUARDS_INTACT(out);
  EXPECT_TRUE(qg.guards_intact());
  // A row range (chunked use): rows [r0, r1) with r0*cols a multiple of 8.
  const int64_t r0 = rows >= 4 && cols % 8 == 0 ? rows / 4 : 0, r1 = rows - rows / 4;
  TestTensor part_ref(eng, Device::kCPU, {r1 - r0, cols}, dt), part(eng, Device::kCUDA, {r1 - r0, cols}, dt);
  ops::nf4_dequantize_rows(part_ref, qc.view(), r0, r1, eng);
  ops::nf4_dequantize_rows(part, qg.view(), r0, r1, eng);
  EXPECT_CLOSE(part.values(), part_ref.values(), (Tol{0, 0}));
  EXPECT_GUARDS_INTACT(part);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, Nf4DequantGpu,
    ::testing::Values(Nf4Case{1, 64, DType::kF32}, Nf4Case{7, 9, DType::kBF16}, Nf4Case{7, 9, DType::kF16},
                      Nf4Case{3, 1001, DType::kF32}, Nf4Case{5, 4099, DType::kBF16}, Nf4Case{9, 72, DType::kF16},
                      Nf4Case{2048, 2304, DType::kBF16}, Nf4Case{2048, 2304, DType::kF16},
                      Nf4Case{2048, 2304, DType::kF32}, Nf4Case{9216, 2304, DType::kBF16},
                      Nf4Case{9216, 2304, DType::kF16}, Nf4Case{9216, 2304, DType::kF32}),
    case_name);

// ---- quantize ------------------------------------------------------------------------------------------------

struct CodeDiff {
  int64_t count = 0, max_step = 0;
};
CodeDiff code_diff(const std::vector<int>& a, const std::vector<int>& b) {
  CodeDiff d;
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i] != b[i]) { ++d.count; d.max_step = std::max<int64_t>(d.max_step, std::abs(a[i] - b[i])); }
  return d;
}
std::vector<int> as_ints(const std::vector<double>& v) { return std::vector<int>(v.begin(), v.end()); }

class Nf4QuantGpu : public ::testing::TestWithParam<Nf4Case> {};

TEST_P(Nf4QuantGpu, MatchesCpuUpToReciprocalRounding) {
  REQUIRE_CUDA();
  const auto [rows, cols, dt] = GetParam();
  const int64_t n = rows * cols, nb = ops::nf4_blocks(n);
  Engine eng;
  std::vector<double> x = random_normal(n, 41, 0.02);  // weight-like scale
  if (n >= 128) std::fill(x.begin(), x.begin() + 64, 0.0);  // one all-zero block (codes 0, absmax 0)
  TestTensor wc(eng, Device::kCPU, {rows, cols}, dt, x), wg(eng, Device::kCUDA, {rows, cols}, dt, x);
  TestNf4 qc(eng, Device::kCPU, rows, cols), qg(eng, Device::kCUDA, rows, cols);
  ops::nf4_quantize(qc.view(), wc, {}, eng);
  ops::nf4_quantize(qg.view(), wg, {}, eng);
  EXPECT_TRUE(qg.guards_intact());

  // Exact: the absmax of each block is a max, the offset a fixed-order f64 sum, absmax2 a max of exact values.
  EXPECT_EQ(qg.offset.values(), qc.offset.values());
  EXPECT_EQ(qg.absmax2.values(), qc.absmax2.values());
  // Codes: rare one-step differences where x_n is within an ulp of a threshold (or 8-bit midpoint).
  const CodeDiff d4 = code_diff(unpack_codes(qg.packed.values(), n), unpack_codes(qc.packed.values(), n));
  const CodeDiff d8 = code_diff(as_ints(qg.absmax_q.values()), as_ints(qc.absmax_q.values()));
  std::printf("[ nf4 ] %s: %lld of %lld 4-bit codes differ, %lld of %lld 8-bit absmax codes differ\n",
              case_name(::testing::TestParamInfo<Nf4Case>(GetParam(), 0)).c_str(), (long long)d4.count, (long long)n, (long long)d8.count,
              (long long)nb);
  EXPECT_LE(d4.max_step, 1);
  EXPECT_LE(d8.max_step, 1);
  EXPECT_LE(d4.count, std::max<int64_t>(1, n / 10000));   // < 1e-4 of the codes
  EXPECT_LE(d8.count, std::max<int64_t>(1, nb / 1000));   // < 1e-3 of the absmax codes
  if (n >= 128) {
    const auto codes = unpack_codes(qg.packed.values(), 64);
    for (int e = 0; e < 64; ++e) ASSERT_EQ(codes[e], 0) << "zero block, element " << e;
  }

  // Dequantized (both on the CPU): equal where the codes agree, else within one NF4 step (widest 0.304) of the
  // block's absmax plus the absmax difference.
  TestTensor dc(eng, Device::kCPU, {rows, cols}, DType::kF32), dg(eng, Device::kCPU, {rows, cols}, DType::kF32);
  TestNf4 qg_host(eng, Device::kCPU, rows, cols);
  qg_host.set_from(qg);
  ops::nf4_dequantize(dc, qc.view(), eng);
  ops::nf4_dequantize(dg, qg_host.view(), eng);
  const auto vc = dc.values(), vg = dg.values();
  const auto ac = reconstructed_absmax(qc), ag = reconstructed_absmax(qg_host);
  EXPECT_ALL_FINITE(vg);
  for (int64_t e = 0; e < n; ++e) {
    const int64_t b = e / 64;
    const double lim = 0.31 * std::max(std::fabs(ac[b]), std::fabs(ag[b])) + std::fabs(double(ac[b]) - ag[b]);
    ASSERT_LE(std::fabs(vg[e] - vc[e]), lim) << "element " << e;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, Nf4QuantGpu,
    ::testing::Values(Nf4Case{1, 64, DType::kF32}, Nf4Case{7, 9, DType::kF32}, Nf4Case{3, 1001, DType::kF16},
                      Nf4Case{1, 64 * 256 + 67, DType::kBF16}, Nf4Case{2048, 2304, DType::kBF16},
                      Nf4Case{2048, 2304, DType::kF16}, Nf4Case{512, 2304, DType::kF32}),
    case_name);

TEST(Nf4Gpu, ThresholdRuleAndPackingOrder) {
  REQUIRE_CUDA();
  Engine eng;
  std::vector<int> want;
  const auto x = threshold_block(&want);  // absmax 1: rcp.approx(1) = 1 exactly, so x_n = x
  TestTensor w(eng, Device::kCUDA, {1, 64}, DType::kF32, x);
  TestNf4 q(eng, Device::kCUDA, 1, 64);
  ops::nf4_quantize(q.view(), w, {}, eng);
  const auto packed = q.packed.values();
  EXPECT_EQ(int(packed[0]), 0xF0);
  const auto got = unpack_codes(packed, 64);
  for (int e = 0; e < 64; ++e) EXPECT_EQ(got[e], want[e]) << "element " << e << " x=" << x[e];
  EXPECT_TRUE(q.guards_intact());
}

TEST(Nf4Gpu, OffsetGivenAndSingleZeroBlock) {
  REQUIRE_CUDA();
  Engine eng;
  // offset_given: the CUDA offset stays as set and the result follows the CPU with the same offset.
  const int64_t rows = 64, cols = 2304, n = rows * cols;
  const auto x = random_normal(n, 42, 0.02);
  TestTensor wc(eng, Device::kCPU, {rows, cols}, DType::kBF16, x), wg(eng, Device::kCUDA, {rows, cols}, DType::kBF16, x);
  TestNf4 qc(eng, Device::kCPU, rows, cols), qg(eng, Device::kCUDA, rows, cols);
  qc.offset.set({0.0437});
  qg.offset.set({0.0437});
  ops::nf4_quantize(qc.view(), wc, {true}, eng);
  ops::nf4_quantize(qg.view(), wg, {true}, eng);
  EXPECT_EQ(qg.offset.values()[0], double(float(0.0437)));
  EXPECT_EQ(qg.absmax2.values(), qc.absmax2.values());
  const CodeDiff d8 = code_diff(as_ints(qg.absmax_q.values()), as_ints(qc.absmax_q.values()));
  EXPECT_LE(d8.max_step, 1);
  EXPECT_LE(d8.count, 2);

  // A weight that is a single zero block: NaN codes everywhere, identical on both backends, dequantized to 0.
  TestTensor z(eng, Device::kCUDA, {1, 64}, DType::kF16, std::vector<double>(64, 0.0));
  TestNf4 qz(eng, Device::kCUDA, 1, 64);
  ops::nf4_quantize(qz.view(), z, {}, eng);
  EXPECT_EQ(qz.packed.values(), std::vector<double>(32, 0.0));
  EXPECT_EQ(qz.absmax_q.values(), std::vector<double>(1, 0.0));
  EXPECT_EQ(qz.absmax2.values(), std::vector<double>(1, 0.0));
  EXPECT_EQ(qz.offset.values(), std::vector<double>(1, 0.0));
  TestTensor out(eng, Device::kCUDA, {1, 64}, DType::kF16);
  ops::nf4_dequantize(out, qz.view(), eng);
  EXPECT_CLOSE(out.values(), std::vector<double>(64, 0.0), (Tol{0, 0}));
}

TEST(Nf4Gpu, RejectsSmallWorkspaceAndMisalignment) {
  REQUIRE_CUDA();
  Engine eng;
  TestTensor w(eng, Device::kCUDA, {4, 256}, DType::kBF16, random_normal(1024, 43));
  TestNf4 q(eng, Device::kCUDA, 4, 256);
  const size_t need = ops::cuda::nf4_quantize_workspace_bytes(4, 256);
  TestTensor ws(eng, Device::kCUDA, {int64_t(need) - 1}, DType::kU8);
  EXPECT_THROW(ops::cuda::nf4_quantize(q.view(), w, ws, {}, eng.stream()), engine::Error);
  TestTensor out(eng, Device::kCUDA, {4 * 256 + 1}, DType::kBF16);
  TensorView shifted = out.view();
  shifted.data = static_cast<char*>(shifted.data) + 2;
  shifted.shape = {4, 256};
  EXPECT_THROW(ops::cuda::nf4_dequantize(shifted, q.view(), eng.stream()), engine::Error);
  TestTensor rows(eng, Device::kCUDA, {1, 9}, DType::kF32);
  TestNf4 q9(eng, Device::kCUDA, 3, 9);
  EXPECT_THROW(ops::cuda::nf4_dequantize_rows(rows, q9.view(), 1, 2, eng.stream()), engine::Error);  // 9 % 8
}

// ---- bitsandbytes parity (files written by tests/parity/nf4_bnb_parity.py) ------------------------------------
// NF4_PARITY_DIR holds meta.txt ("rows cols dtype", dtype f16/bf16/f32), w.bin (the input) and bnb's arrays
// bnb_{packed,absmax_q,absmax2,offset}.bin; this test writes the engine's arrays next to them (see the script).

std::vector<double> read_raw(const std::string& path, DType dt, int64_t count) {
  std::ifstream f(path, std::ios::binary);
  ENGINE_CHECK(f.good(), "cannot open ", path);
  std::vector<char> buf(size_t(count) * engine::dtype_size(dt));
  f.read(buf.data(), std::streamsize(buf.size()));
  ENGINE_CHECK(f.gcount() == std::streamsize(buf.size()), path, ": expected ", buf.size(), " bytes");
  std::vector<double> v(count);
  for (int64_t i = 0; i < count; ++i) v[i] = engine::load_f64(buf.data(), dt, i);
  return v;
}
void write_raw(const std::string& path, const TestTensor& t) {
  const auto v = t.values();
  std::vector<char> buf(t.view().nbytes());
  for (size_t i = 0; i < v.size(); ++i) engine::store_f64(buf.data(), t.view().dtype, int64_t(i), v[i]);
  std::ofstream f(path, std::ios::binary);
  f.write(buf.data(), std::streamsize(buf.size()));
  ENGINE_CHECK(f.good(), "cannot write ", path);
}

TEST(Nf4Gpu, BnbParityFiles) {
  REQUIRE_CUDA();
  const char* dir_env = std::getenv("NF4_PARITY_DIR");
  if (dir_env == nullptr) GTEST_SKIP() << "NF4_PARITY_DIR not set (run tests/parity/nf4_bnb_parity.py)";
  const std::string dir = std::string(dir_env) + "/";
  std::ifstream meta(dir + "meta.txt");
  int64_t rows = 0, cols = 0;
  std::string dts;
  meta >> rows >> cols >> dts;
  ASSERT_TRUE(meta) << "bad " << dir << "meta.txt";
  const DType dt = dts == "f16" ? DType::kF16 : dts == "bf16" ? DType::kBF16 : DType::kF32;
  const int64_t n = rows * cols;
  Engine eng;
  const auto x = read_raw(dir + "w.bin", dt, n);
  TestTensor wg(eng, Device::kCUDA, {rows, cols}, dt, x), wc(eng, Device::kCPU, {rows, cols}, dt, x);

  // Our quantization, own offset (CUDA) and bnb's offset (CUDA and CPU).
  TestNf4 q(eng, Device::kCUDA, rows, cols), qgiven(eng, Device::kCUDA, rows, cols),
      qcpu(eng, Device::kCPU, rows, cols);
  ops::nf4_quantize(q.view(), wg, {}, eng);
  const auto bnb_offset = read_raw(dir + "bnb_offset.bin", DType::kF32, 1);
  qgiven.offset.set(bnb_offset);
  qcpu.offset.set(bnb_offset);
  ops::nf4_quantize(qgiven.view(), wg, {true}, eng);
  ops::nf4_quantize(qcpu.view(), wc, {true}, eng);
  write_raw(dir + "ours_packed.bin", q.packed);
  write_raw(dir + "ours_absmax_q.bin", q.absmax_q);
  write_raw(dir + "ours_absmax2.bin", q.absmax2);
  write_raw(dir + "ours_offset.bin", q.offset);
  write_raw(dir + "ours_given_absmax_q.bin", qgiven.absmax_q);
  write_raw(dir + "ours_given_absmax2.bin", qgiven.absmax2);
  write_raw(dir + "ours_cpu_packed.bin", qcpu.packed);
  write_raw(dir + "ours_cpu_given_absmax_q.bin", qcpu.absmax_q);

  // Dequantization of bnb's own arrays (CUDA and CPU), and of our CUDA quantization.
  TestNf4 qb(eng, Device::kCUDA, rows, cols), qbc(eng, Device::kCPU, rows, cols);
  qb.packed.set(read_raw(dir + "bnb_packed.bin", DType::kU8, ops::nf4_packed_bytes(n)));
  qb.absmax_q.set(read_raw(dir + "bnb_absmax_q.bin", DType::kU8, ops::nf4_blocks(n)));
  qb.absmax2.set(read_raw(dir + "bnb_absmax2.bin", DType::kF32, ops::nf4_blocks2(n)));
  qb.offset.set(bnb_offset);
  qbc.set_from(qb);
  TestTensor d_bnb(eng, Device::kCUDA, {rows, cols}, dt), d_bnb_cpu(eng, Device::kCPU, {rows, cols}, dt),
      d_ours(eng, Device::kCUDA, {rows, cols}, dt);
  ops::nf4_dequantize(d_bnb, qb.view(), eng);
  ops::nf4_dequantize(d_bnb_cpu, qbc.view(), eng);
  ops::nf4_dequantize(d_ours, q.view(), eng);
  write_raw(dir + "ours_dequant_bnbstate.bin", d_bnb);
  write_raw(dir + "ours_cpu_dequant_bnbstate.bin", d_bnb_cpu);
  write_raw(dir + "ours_dequant.bin", d_ours);
}

}  // namespace
