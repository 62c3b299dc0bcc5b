// tests/engine/engine_cpu_test.cpp (label cpu): dtype conversions, Philox, allocators, safetensors.
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <fstream>

#include "engine/engine.h"
#include "engine/philox.h"
#include "engine/safetensors.h"
#include "tests/test_util.h"

namespace {

using namespace engine;

TEST(DType, HalfRoundTripsEveryBitPattern) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = f16_to_f32(uint16_t(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(f32_to_f16(f), h) << "f16 bits " << h;
    const float b = bf16_to_f32(uint16_t(h));
    if (!std::isnan(b)) ASSERT_EQ(f32_to_bf16(b), h) << "bf16 bits " << h;
  }
}

TEST(DType, RoundsToNearestEven) {
  EXPECT_EQ(f16_to_f32(f32_to_f16(1.0f + 1.0f / 2048)), 1.0f);                 // tie -> even (down)
  EXPECT_EQ(f16_to_f32(f32_to_f16(1.0f + 3.0f / 2048)), 1.0f + 2.0f / 1024);   // tie -> even (up)
  EXPECT_EQ(f16_to_f32(f32_to_f16(65519.f)), 65504.f);
  EXPECT_TRUE(std::isinf(f16_to_f32(f32_to_f16(65520.f))));                    // tie at max -> inf
  EXPECT_EQ(f16_to_f32(f32_to_f16(std::ldexp(1.f, -24))), std::ldexp(1.f, -24));  // smallest subnormal
  EXPECT_EQ(f16_to_f32(f32_to_f16(std::ldexp(1.f, -25))), 0.f);                // tie -> even (0)
  EXPECT_EQ(f16_to_f32(f32_to_f16(std::ldexp(1.5f, -25))), std::ldexp(1.f, -24));
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f + 1.0f / 256)), 1.0f);               // tie -> even
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f + 3.0f / 256)), 1.0f + 1.0f / 64);
  EXPECT_EQ(round_to(DType::kBF16, 48.0 * 3.1), double(bf16_to_f32(f32_to_bf16(float(48.0 * 3.1)))));
}

TEST(Philox, KnownAnswers) {
  // Random123 known-answer vectors for Philox4x32-10 (counter words c0..c3, key k0 k1).
  Philox4 r = philox4x32_10(0, 0, 0);
  EXPECT_EQ(r.v[0], 0x6627e8d5u); EXPECT_EQ(r.v[1], 0xe169c58du);
  EXPECT_EQ(r.v[2], 0xbc57ac4cu); EXPECT_EQ(r.v[3], 0x9b00dbd8u);
  r = philox4x32_10(~0ull, ~0ull, ~0ull);
  EXPECT_EQ(r.v[0], 0x408f276du); EXPECT_EQ(r.v[1], 0x41c83b0eu);
  EXPECT_EQ(r.v[2], 0xa20bc7c6u); EXPECT_EQ(r.v[3], 0x6d5451fdu);
  r = philox4x32_10(0x299f31d0a4093822ull, 0x85a308d3243f6a88ull, 0x0370734413198a2eull);
  EXPECT_EQ(r.v[0], 0xd16cfe09u); EXPECT_EQ(r.v[1], 0x94fdccebu);
  EXPECT_EQ(r.v[2], 0x5001e420u); EXPECT_EQ(r.v[3], 0x24126ea1u);
}

TEST(Philox, UniformAndNormalMoments) {
  double s = 0, s2 = 0, n1 = 0, n2 = 0;
  const int n = 200000;
  for (int i = 0; i < n; ++i) {
    const double u = philox_uniform(7, 3, uint64_t(i));
    ASSERT_GE(u, 0.0); ASSERT_LT(u, 1.0);
    s += u; s2 += u * u;
    const double z = philox_normal(7, 3, uint64_t(i));
    n1 += z; n2 += z * z;
  }
  EXPECT_NEAR(s / n, 0.5, 0.005);
  EXPECT_NEAR(s2 / n - 0.25, 1.0 / 12, 0.003);
  EXPECT_NEAR(n1 / n, 0.0, 0.01);
  EXPECT_NEAR(n2 / n, 1.0, 0.01);
  EXPECT_NE(philox_u32(7, 3, 0), philox_u32(7, 4, 0));  // streams differ
}

TEST(HostAllocator, StatsTrackCurrentAndPeak) {
  HostAllocator a;
  {
    Tensor t1 = Tensor::empty({1000}, DType::kF32, a);
    Tensor t2 = Tensor::empty({10}, DType::kF64, a);
    EXPECT_GE(a.stats().current_bytes, 4080u);
  }
  EXPECT_EQ(a.stats().current_bytes, 0u);
  EXPECT_GE(a.stats().peak_bytes, 4080u);
}

TEST(Tensor, ViewsReshapeAndSlice) {
  HostAllocator a;
  Tensor t = Tensor::empty({4, 6}, DType::kF32, a);
  TensorView v = t.view().reshape({2, 12});
  EXPECT_EQ(v.rows(), 2);
  EXPECT_EQ(v.cols(), 12);
  EXPECT_THROW(t.view().reshape({5, 5}), Error);
  TensorView s = t.view().slice_rows(1, 3);
  EXPECT_EQ(s.shape[0], 2);
  EXPECT_EQ(s.ptr<float>(), t.ptr<float>() + 6);
  EXPECT_THROW(t.view().slice_rows(3, 5), Error);
}

class SafetensorsTest : public ::testing::Test {
 protected:
  test::TempDir tmp_;
  std::string dir_ = tmp_.path();
  void write_raw(const std::string& name, const std::string& bytes) {
    std::ofstream(dir_ + "/" + name, std::ios::binary) << bytes;
  }
  static std::string with_header(const std::string& json, const std::string& data) {
    std::string out(8, '\0');
    for (int i = 0; i < 8; ++i) out[i] = char((uint64_t(json.size()) >> (8 * i)) & 0xff);
    return out + json + data;
  }
};

TEST_F(SafetensorsTest, RoundTrip) {
  HostAllocator a;
  Tensor x = Tensor::empty({2, 3}, DType::kBF16, a), y = Tensor::empty({5}, DType::kI32, a);
  for (int i = 0; i < 6; ++i) x.ptr<uint16_t>()[i] = f32_to_bf16(float(i) - 2.5f);
  for (int i = 0; i < 5; ++i) y.ptr<int32_t>()[i] = i * 7;
  const std::string p = dir_ + "/model.safetensors";
  write_safetensors(p, {{"a.x", x}, {"b.y", y}}, {{"format", "pt"}});
  SafetensorsFile f(p);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  TensorView vx = f.view("a.x"), vy = f.view("b.y");
  EXPECT_EQ(vx.dtype, DType::kBF16);
  EXPECT_EQ(vx.shape, (Shape{2, 3}));
  for (int i = 0; i < 6; ++i) EXPECT_EQ(vx.ptr<uint16_t>()[i], x.ptr<uint16_t>()[i]);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(vy.ptr<int32_t>()[i], i * 7);
  SafetensorsCheckpoint ck(dir_);
  EXPECT_TRUE(ck.contains("b.y"));
  EXPECT_THROW(ck.view("nope"), Error);
}

TEST_F(SafetensorsTest, ShardedIndex) {
  HostAllocator a;
  Tensor x = Tensor::empty({4}, DType::kF32, a);
  for (int i = 0; i < 4; ++i) x.ptr<float>()[i] = float(i);
  write_safetensors(dir_ + "/model-00001-of-00002.safetensors", {{"x", x}});
  write_safetensors(dir_ + "/model-00002-of-00002.safetensors", {{"y", x}});
  write_raw("model.safetensors.index.json",
            R"({"metadata": {}, "weight_map": {"x": "model-00001-of-00002.safetensors", "y": "model-00002-of-00002.safetensors"}})");
  SafetensorsCheckpoint ck(dir_);
  EXPECT_EQ(ck.view("y").ptr<float>()[3], 3.f);
  write_raw("model.safetensors.index.json", R"({"weight_map": {"x": "model-00002-of-00002.safetensors"}})");
  EXPECT_THROW({ SafetensorsCheckpoint bad(dir_); }, Error);  // index points at the wrong shard
}

TEST_F(SafetensorsTest, MalformedFilesAreNamedErrors) {
  auto expect_error = [&](const std::string& bytes, const std::string& needle) {
    write_raw("bad.safetensors", bytes);
    try {
      SafetensorsFile f(dir_ + "/bad.safetensors");
      ADD_FAILURE() << "no error for: " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("bad.safetensors"), std::string::npos) << e.what();
    }
  };
  expect_error("abc", "truncated");
  expect_error(with_header("{not json", ""), "not valid JSON");
  expect_error(with_header(R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", std::string(8, 'x')),
               "outside the file");
  expect_error(with_header(R"({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}})", std::string(16, 'x')),
               "need 12");
  expect_error(with_header(R"({"w": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 1]}})", "x"), "unknown dtype");
  write_raw("ok.safetensors", with_header(R"({"w": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}})", std::string(8, 'x')));
  SafetensorsFile ok(dir_ + "/ok.safetensors");
  EXPECT_THROW(ok.view("w"), Error);  // stored fine, but the engine has no I64 dtype
}

}  // namespace
