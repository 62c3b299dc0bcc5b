// tests/engine/safetensors_writer_cpu_test.cpp (label cpu): the streaming SafetensorsWriter: round trip
// through SafetensorsFile, every error names the tensor, and nothing appears at the path unless finish()
// succeeded (atomic).
#include <cstring>
#include <filesystem>

#include "engine/allocator.h"
#include "engine/safetensors.h"
#include "tests/test_util.h"

namespace {

using engine::DType;
using engine::Error;
using engine::SafetensorsLayoutEntry;
using engine::SafetensorsWriter;
using engine::Shape;
using engine::Tensor;

class SafetensorsWriterTest : public ::testing::Test {
 protected:
  Tensor filled(Shape s, DType t, double base) {
    Tensor x = Tensor::empty(s, t, alloc_);
    for (int64_t i = 0; i < x.numel(); ++i) engine::store_f64(x.data(), t, i, base + double(i));
    return x;
  }
  // Names in the test folder (temporary files would show up here).
  std::vector<std::string> entries() const {
    std::vector<std::string> e;
    for (const auto& d : std::filesystem::directory_iterator(tmp_.path())) e.push_back(d.path().filename());
    return e;
  }
  std::string error_of(const std::function<void()>& f) {
    try {
      f();
    } catch (const Error& e) {
      return e.what();
    }
    return "(no error)";
  }

  engine::HostAllocator alloc_;
  test::TempDir tmp_;
  std::string path_ = tmp_.file("w.safetensors");
  std::vector<SafetensorsLayoutEntry> layout_ = {
      {"a.weight", DType::kF32, {2, 3}}, {"b.norm", DType::kBF16, {5}}, {"c.ids", DType::kI32, {1, 2, 2}}};
};

TEST_F(SafetensorsWriterTest, RoundTrip) {
  Tensor a = filled({2, 3}, DType::kF32, 0.5), b = filled({5}, DType::kBF16, -2), c = filled({1, 2, 2}, DType::kI32, 7);
  {
    SafetensorsWriter w(path_, layout_, {{"format", "pt"}});
    EXPECT_EQ(w.data_bytes(), 24u + 10u + 16u);
    w.write("a.weight", a);
    w.write("b.norm", b);
    w.write("c.ids", c);
    EXPECT_FALSE(std::filesystem::exists(path_));  // nothing at the path before finish()
    w.finish();
    EXPECT_EQ(std::filesystem::file_size(path_), w.file_bytes());
  }
  engine::SafetensorsFile f(path_);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  ASSERT_EQ(f.names().size(), 3u);
  for (const auto& [name, t] : std::vector<std::pair<std::string, Tensor>>{{"a.weight", a}, {"b.norm", b}, {"c.ids", c}}) {
    const engine::TensorView v = f.view(name);
    EXPECT_EQ(v.dtype, t.dtype()) << name;
    EXPECT_EQ(v.shape, t.shape()) << name;
    ASSERT_EQ(v.nbytes(), t.nbytes()) << name;
    EXPECT_EQ(std::memcmp(v.data, t.data(), t.nbytes()), 0) << name;
  }
  EXPECT_EQ(entries(), std::vector<std::string>{"w.safetensors"});  // no temporary file left
}

TEST_F(SafetensorsWriterTest, WriteSafetensorsMatchesTheWriterByteForByte) {
  Tensor a = filled({2, 3}, DType::kF32, 1), b = filled({5}, DType::kBF16, 2), c = filled({1, 2, 2}, DType::kI32, 3);
  engine::write_safetensors(tmp_.file("old.safetensors"), {{"a.weight", a}, {"b.norm", b}, {"c.ids", c}},
                            {{"format", "pt"}});
  SafetensorsWriter w(path_, layout_, {{"format", "pt"}});
  w.write("a.weight", a);
  w.write("b.norm", b);
  w.write("c.ids", c);
  w.finish();
  std::ifstream x(tmp_.file("old.safetensors"), std::ios::binary), y(path_, std::ios::binary);
  const std::string bx((std::istreambuf_iterator<char>(x)), {}), by((std::istreambuf_iterator<char>(y)), {});
  EXPECT_EQ(bx, by);
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; --i) hlen = (hlen << 8) | uint8_t(bx[size_t(i)]);
  EXPECT_EQ(hlen % 8, 0u);  // header padded: the data starts 8-byte aligned
}

TEST_F(SafetensorsWriterTest, OutOfOrderAndUnknownWritesNameTheTensor) {
  Tensor a = filled({2, 3}, DType::kF32, 0), b = filled({5}, DType::kBF16, 0);
  SafetensorsWriter w(path_, layout_);
  std::string e = error_of([&] { w.write("b.norm", b); });
  EXPECT_NE(e.find("b.norm written out of order"), std::string::npos) << e;
  EXPECT_NE(e.find("expected a.weight"), std::string::npos) << e;
  e = error_of([&] { w.write("zzz", b); });
  EXPECT_NE(e.find("zzz is not in the layout"), std::string::npos) << e;
  w.write("a.weight", a);  // a rejected write changes nothing: the right tensor still goes in
  e = error_of([&] { w.write("a.weight", a); });
  EXPECT_NE(e.find("a.weight written out of order"), std::string::npos) << e;
}

TEST_F(SafetensorsWriterTest, WrongSizeDtypeOrPlaceNamesTheTensor) {
  SafetensorsWriter w(path_, layout_);
  std::string e = error_of([&] { w.write("a.weight", filled({3, 2}, DType::kF32, 0)); });
  EXPECT_NE(e.find("tensor a.weight is f32(3,2)"), std::string::npos) << e;
  EXPECT_NE(e.find("layout says f32(2,3)"), std::string::npos) << e;
  e = error_of([&] { w.write("a.weight", filled({2, 4}, DType::kF32, 0)); });
  EXPECT_NE(e.find("(32 bytes)"), std::string::npos) << e;
  e = error_of([&] { w.write("a.weight", filled({2, 3}, DType::kBF16, 0)); });
  EXPECT_NE(e.find("tensor a.weight is bf16(2,3)"), std::string::npos) << e;
  Tensor keep = filled({2, 3}, DType::kF32, 0);
  engine::TensorView dev = keep.view();
  dev.device = engine::Device::kCUDA;  // never dereferenced: the check comes first
  e = error_of([&] { w.write("a.weight", dev); });
  EXPECT_NE(e.find("a.weight is not in host memory"), std::string::npos) << e;
}

TEST_F(SafetensorsWriterTest, FinishWithMissingTensorsFailsAndLeavesNothing) {
  {
    SafetensorsWriter w(path_, layout_);
    w.write("a.weight", filled({2, 3}, DType::kF32, 0));
    const std::string e = error_of([&] { w.finish(); });
    EXPECT_NE(e.find("2 tensors not written, first b.norm"), std::string::npos) << e;
  }
  EXPECT_TRUE(entries().empty());
}

TEST_F(SafetensorsWriterTest, AbandonedWriterKeepsTheOldFile) {
  engine::write_file_atomic(path_, "old contents");
  {
    SafetensorsWriter w(path_, layout_);
    w.write("a.weight", filled({2, 3}, DType::kF32, 0));
  }  // destroyed mid-file (an exception in the caller)
  std::ifstream in(path_);
  std::string s;
  std::getline(in, s);
  EXPECT_EQ(s, "old contents");
  EXPECT_EQ(entries(), std::vector<std::string>{"w.safetensors"});
}

TEST_F(SafetensorsWriterTest, BadLayoutsAndCallsAfterTheEnd) {
  std::string e = error_of([&] {
    SafetensorsWriter w(path_, {{"x", DType::kF32, {1}}, {"x", DType::kF32, {2}}});
  });
  EXPECT_NE(e.find("tensor x appears twice"), std::string::npos) << e;
  e = error_of([&] { SafetensorsWriter w(path_, {{"__metadata__", DType::kF32, {1}}}); });
  EXPECT_NE(e.find("invalid tensor name"), std::string::npos) << e;
  e = error_of([&] { SafetensorsWriter w(tmp_.file("no/such/dir/f.safetensors"), layout_); });
  EXPECT_NE(e.find("cannot create"), std::string::npos) << e;
  SafetensorsWriter w(path_, {{"x", DType::kF32, {1}}});
  Tensor x = filled({1}, DType::kF32, 0);
  w.write("x", x);
  e = error_of([&] { w.write("x", x); });
  EXPECT_NE(e.find("tensor x written after all 1 tensors"), std::string::npos) << e;
  w.finish();
  e = error_of([&] { w.finish(); });
  EXPECT_NE(e.find("finish() called twice"), std::string::npos) << e;
  EXPECT_TRUE(std::filesystem::exists(path_));
}

}  // namespace
