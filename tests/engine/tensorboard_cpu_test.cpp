// tests/engine/tensorboard_cpu_test.cpp (label cpu): CRC-32C, varints, exact record bytes, EventWriter ->
// read_events round trips, and every reader and writer error (corruption, truncation, bad fields, I/O).
#include "engine/tensorboard.h"

#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <regex>

#include "engine/check.h"
#include "tests/test_util.h"

namespace {

using namespace engine;
namespace fs = std::filesystem;

struct TempDir {
  std::string path;
  TempDir() {
    std::string tmpl = ::testing::TempDir() + "tensorboard_XXXXXX";
    ENGINE_CHECK(::mkdtemp(tmpl.data()) != nullptr, "mkdtemp ", tmpl);
    path = tmpl;
  }
  ~TempDir() { fs::remove_all(path); }
};

std::string bytes_of(std::initializer_list<int> b) {
  std::string s;
  for (int x : b) s.push_back(char(x));
  return s;
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

uint32_t float_bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

// Expects read_events(path) to throw an engine::Error whose message contains every one of `parts`.
void expect_read_error(const std::string& path, const std::vector<std::string>& parts) {
  try {
    read_events(path);
    ADD_FAILURE() << "read_events(" << path << ") did not throw";
  } catch (const Error& e) {
    for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what() << "\nlacks: " << p;
  }
}

// Bit-at-a-time CRC-32C, to check the table-driven one.
uint32_t crc32c_bitwise(const std::string& s) {
  uint32_t crc = ~0u;
  for (unsigned char c : s) {
    crc ^= c;
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ ((crc & 1) ? 0x82F63B78u : 0u);
  }
  return ~crc;
}

uint32_t crc_of(const std::string& s) { return crc32c(s.data(), s.size()); }

TEST(Crc32c, KnownAnswers) {
  EXPECT_EQ(crc_of("123456789"), 0xE3069283u);  // the CRC catalogue's check value
  EXPECT_EQ(crc_of(""), 0u);
  // RFC 3720 (iSCSI) appendix B.4.
  EXPECT_EQ(crc_of(std::string(32, '\0')), 0x8A9136AAu);
  EXPECT_EQ(crc_of(std::string(32, '\xff')), 0x62A8AB43u);
  std::string inc, dec;
  for (int i = 0; i < 32; ++i) inc.push_back(char(i)), dec.push_back(char(31 - i));
  EXPECT_EQ(crc_of(inc), 0x46DD794Eu);
  EXPECT_EQ(crc_of(dec), 0x113FDB5Cu);
}

TEST(Crc32c, MatchesBitwiseReferenceAndExtends) {
  const std::vector<double> r = test::random_uniform(1000, /*seed=*/7, 0, 256);
  std::string s;
  for (double x : r) s.push_back(char(int(x)));
  for (size_t n : {1, 2, 3, 7, 8, 63, 64, 999, 1000}) {
    const std::string p = s.substr(0, n);
    EXPECT_EQ(crc_of(p), crc32c_bitwise(p)) << "n=" << n;
    const uint32_t head = crc32c(p.data(), n / 3);
    EXPECT_EQ(crc32c(p.data() + n / 3, n - n / 3, head), crc_of(p)) << "n=" << n;
  }
}

TEST(Crc32c, Masked) {
  EXPECT_EQ(mask_crc32c(0xE3069283u), 0xC78AB0E5u);
  EXPECT_EQ(mask_crc32c(0), 0xA282EAD8u);
  EXPECT_EQ(mask_crc32c(0xFFFFFFFFu), 0xA282EAD7u);  // rotation of all ones + delta wraps around 2^32
  EXPECT_EQ(mask_crc32c(0x00008000u), 0xA282EAD9u);  // bit 15 rotates to bit 0
}

TEST(Varint, EncodesEdgeCases) {
  const std::vector<std::pair<uint64_t, std::string>> cases = {
      {0, bytes_of({0x00})},
      {1, bytes_of({0x01})},
      {127, bytes_of({0x7f})},
      {128, bytes_of({0x80, 0x01})},
      {300, bytes_of({0xac, 0x02})},
      {16383, bytes_of({0xff, 0x7f})},
      {16384, bytes_of({0x80, 0x80, 0x01})},
      {0xFFFFFFFFull, bytes_of({0xff, 0xff, 0xff, 0xff, 0x0f})},
      {1ull << 40, bytes_of({0x80, 0x80, 0x80, 0x80, 0x80, 0x20})},
      {1ull << 63, bytes_of({0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01})},
      {~0ull, bytes_of({0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})},
  };
  for (const auto& [v, want] : cases) {
    std::string got = "x";  // appends, does not overwrite
    append_varint(got, v);
    EXPECT_EQ(got, "x" + want) << v;
    size_t pos = 1;
    uint64_t back = 0;
    ASSERT_TRUE(parse_varint(got + "tail", pos, back)) << v;
    EXPECT_EQ(back, v);
    EXPECT_EQ(pos, 1 + want.size());
  }
}

TEST(Varint, RejectsTruncatedAndOverlong) {
  const std::vector<std::string> bad = {
      "",
      bytes_of({0x80}),
      bytes_of({0xff, 0xff}),
      bytes_of({0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02}),        // 65th bit set
      bytes_of({0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00}),  // 11 bytes
  };
  for (const auto& s : bad) {
    size_t pos = 0;
    uint64_t v = 42;
    EXPECT_FALSE(parse_varint(s, pos, v)) << s.size();
    EXPECT_EQ(pos, 0u);
    EXPECT_EQ(v, 42u);
  }
  // A non-minimal encoding that fits in 64 bits is valid protobuf.
  size_t pos = 0;
  uint64_t v = 0;
  EXPECT_TRUE(parse_varint(bytes_of({0x81, 0x80, 0x00}), pos, v));
  EXPECT_EQ(v, 1u);
  EXPECT_EQ(pos, 3u);
}

TEST(TfRecord, ExactBytesOfOneScalarRecord) {
  // Event{wall_time=2.0, step=1, summary{value{tag="a", simple_value=1.0f}}}, CRCs computed by hand with a
  // bitwise CRC-32C outside this code base.
  const std::string want = bytes_of({
      0x17, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // length 23
      0xe7, 0xce, 0xf8, 0x1e,                          // masked CRC of the length
      0x09, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x40,  // field 1 fixed64: 2.0
      0x10, 0x01,                                            // field 2 varint: 1
      0x2a, 0x0a,                                            // field 5, 10 bytes: Summary
      0x0a, 0x08,                                            //   field 1, 8 bytes: Value
      0x0a, 0x01, 0x61,                                      //     tag "a"
      0x15, 0x00, 0x00, 0x80, 0x3f,                          //     field 2 fixed32: 1.0f
      0x4a, 0x86, 0xfd, 0xda,                          // masked CRC of the data
  });
  EXPECT_EQ(tfrecord_frame(encode_scalar_event(2.0, 1, "a", 1.0f)), want);
}

TEST(TfRecord, ExactBytesOfFileVersionRecord) {
  const std::string want = bytes_of({
      0x18, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xa3, 0x7f, 0x4b, 0x22,  // length 24 + CRC
      0x09, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xf8, 0x3f,                    // wall_time 1.5
      0x1a, 0x0d, 'b', 'r', 'a', 'i', 'n', '.', 'E', 'v', 'e', 'n', 't', ':', '2',
      0x2a, 0x28, 0x64, 0x6c,
  });
  EXPECT_EQ(tfrecord_frame(encode_file_version_event(1.5, "brain.Event:2")), want);
}

TEST(TfRecord, Proto3OmitsDefaultsButKeepsSimpleValue) {
  // step 0 and wall_time +0.0 are omitted; a simple_value of 0 is kept (it is in a oneof).
  EXPECT_EQ(encode_scalar_event(0.0, 0, "a", 0.0f),
            bytes_of({0x2a, 0x0a, 0x0a, 0x08, 0x0a, 0x01, 0x61, 0x15, 0x00, 0x00, 0x00, 0x00}));
  EXPECT_EQ(encode_scalar_event(-0.0, 0, "a", 0.0f).substr(0, 9),
            bytes_of({0x09, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x80}));
}

TEST(EventWriter, CreatesLogDirAndNamedFile) {
  TempDir tmp;
  const std::string logdir = tmp.path + "/runs/a/b";
  const auto before = std::chrono::system_clock::now();
  EventWriter w(logdir);
  char host[256] = {};
  ASSERT_EQ(::gethostname(host, sizeof host - 1), 0);
  const fs::path p(w.path());
  EXPECT_EQ(p.parent_path(), fs::path(logdir));
  std::smatch m;
  const std::string name = p.filename().string();
  ASSERT_TRUE(std::regex_match(name, m, std::regex(R"(events\.out\.tfevents\.(\d+)\.(.+))"))) << name;
  EXPECT_EQ(m[2].str(), host);
  const int64_t secs = std::stoll(m[1].str());
  EXPECT_NEAR(double(secs), std::chrono::duration<double>(before.time_since_epoch()).count(), 5.0);
  // The version record is on disk before any flush().
  const EventFileContents c = read_events(w.path());
  EXPECT_EQ(c.file_version, "brain.Event:2");
  EXPECT_TRUE(c.scalars.empty());
}

TEST(EventWriter, TwoWritersInOneDirGetTwoFiles) {
  TempDir tmp;
  EventWriter a(tmp.path), b(tmp.path);
  EXPECT_NE(a.path(), b.path());
  a.add_scalar("x", 1.0f, 1, 10.0);
  b.add_scalar("x", 2.0f, 1, 10.0);
  a.flush();
  b.flush();
  EXPECT_EQ(read_events(a.path()).scalars.at(0).value, 1.0f);
  EXPECT_EQ(read_events(b.path()).scalars.at(0).value, 2.0f);
}

TEST(EventWriter, RoundTripsManyScalars) {
  TempDir tmp;
  const float nan_payload = [] {
    const uint32_t bits = 0x7fc01234u;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
  }();
  const std::vector<float> special = {std::numeric_limits<float>::quiet_NaN(), nan_payload,
                                      std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                                      -0.0f, 0.0f, std::numeric_limits<float>::denorm_min(),
                                      std::numeric_limits<float>::max(), -1.5e-30f};
  const std::vector<double> r = test::random_normal(3000, /*seed=*/3);
  std::vector<ScalarEvent> want;
  const std::vector<std::string> tags = {"train/loss", "train/learning_rate", "train/grad_norm", "学習/損失"};
  for (size_t i = 0; i < r.size(); ++i) {
    const int64_t step = i < 10 ? int64_t(i) << (4 * i) : i == 10 ? (int64_t(1) << 40) : i == 11 ? INT64_MAX : int64_t(i);
    const float value = i < special.size() ? special[i] : float(r[i]);
    want.push_back({1718000000.0 + 0.001 * double(i), step, tags[i % tags.size()], value});
  }
  std::string path;
  {
    EventWriter w(tmp.path);
    path = w.path();
    for (size_t i = 0; i < want.size(); ++i) {
      w.add_scalar(want[i].tag, want[i].value, want[i].step, want[i].wall_time);
      if (i == 1000) w.flush();
    }
  }  // the destructor flushes the rest
  const EventFileContents got = read_events(path);
  EXPECT_EQ(got.file_version, "brain.Event:2");
  ASSERT_EQ(got.scalars.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(got.scalars[i].wall_time, want[i].wall_time) << i;
    EXPECT_EQ(got.scalars[i].step, want[i].step) << i;
    EXPECT_EQ(got.scalars[i].tag, want[i].tag) << i;
    EXPECT_EQ(float_bits(got.scalars[i].value), float_bits(want[i].value)) << i;  // NaN payloads and -0 too
  }
}

TEST(EventWriter, BuffersUntilFlushAndStampsTheClock) {
  TempDir tmp;
  EventWriter w(tmp.path);
  const double t0 = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  w.add_scalar("loss", 2.5f, 7);
  EXPECT_TRUE(read_events(w.path()).scalars.empty());
  w.flush();
  const EventFileContents c = read_events(w.path());
  ASSERT_EQ(c.scalars.size(), 1u);
  EXPECT_EQ(c.scalars[0].step, 7);
  EXPECT_EQ(c.scalars[0].value, 2.5f);
  EXPECT_NEAR(c.scalars[0].wall_time, t0, 5.0);
  EXPECT_GE(c.scalars[0].wall_time, t0);
}

TEST(EventWriter, RejectsBadTags) {
  TempDir tmp;
  EventWriter w(tmp.path);
  for (const std::string& tag : {std::string(), std::string("\xff"), std::string("a\xc0\xaf"),  // overlong '/'
                                 std::string("\xed\xa0\x80"), std::string("\xe3\x81"),          // surrogate, cut
                                 std::string("\xf4\x90\x80\x80")}) {                          // > U+10FFFF
    EXPECT_THROW(w.add_scalar(tag, 1.0f, 1), Error) << tag;
  }
  w.add_scalar("ok/\xc3\xa9\xf0\x9f\x98\x80", 1.0f, 1);  // é and an emoji are fine
  w.flush();
  EXPECT_EQ(read_events(w.path()).scalars.size(), 1u);
}

TEST(EventWriter, UnusableLogDirNamesIt) {
  TempDir tmp;
  const std::string file = tmp.path + "/not_a_dir";
  write_file(file, "x");
  try {
    EventWriter w(file + "/sub");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(file), std::string::npos) << e.what();
  }
  EXPECT_THROW(EventWriter(""), Error);
}

TEST(EventWriter, WriteErrorNamesTheFileAndLosesNothing) {
  TempDir tmp;
  EventWriter w(tmp.path);
  // Cap the file size so write() fails with EFBIG (SIGXFSZ ignored), as on a full disk.
  rlimit old{};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old), 0);
  const auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
  rlimit small = old;
  small.rlim_cur = 200;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
  for (int i = 0; i < 20; ++i) w.add_scalar("train/loss", float(i), i + 1, 100.0 + i);
  std::string err;
  try {
    w.flush();
  } catch (const Error& e) {
    err = e.what();
  }
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &old), 0);
  std::signal(SIGXFSZ, old_handler);
  EXPECT_NE(err.find(w.path()), std::string::npos) << err;
  EXPECT_NE(err.find("write failed"), std::string::npos) << err;
  EXPECT_EQ(fs::file_size(w.path()), 200u);
  expect_read_error(w.path(), {w.path(), "truncated"});  // a partial record, as after a crash
  w.flush();                                             // continues the stream where it stopped
  const EventFileContents c = read_events(w.path());
  ASSERT_EQ(c.scalars.size(), 20u);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(c.scalars[size_t(i)].value, float(i));
}

// A file of the version record plus five scalars; offsets[i] is where record i starts.
struct SampleFile {
  std::string path, bytes;
  std::vector<size_t> offsets;
};
SampleFile sample_file(const std::string& dir) {
  SampleFile s;
  s.path = dir + "/events.out.tfevents.sample";
  s.bytes = tfrecord_frame(encode_file_version_event(1.0, "brain.Event:2"));
  for (int i = 0; i < 5; ++i) {
    s.offsets.push_back(s.bytes.size());
    s.bytes += tfrecord_frame(encode_scalar_event(2.0 + i, i, "loss", 0.5f * float(i)));
  }
  s.offsets.insert(s.offsets.begin(), 0);
  write_file(s.path, s.bytes);
  return s;
}

TEST(ReadEvents, DetectsCorruption) {
  TempDir tmp;
  SampleFile s = sample_file(tmp.path);
  ASSERT_EQ(read_events(s.path).scalars.size(), 5u);
  const size_t rec = s.offsets[3];
  struct Flip {
    size_t at;
    const char* check;
  };
  for (const Flip& f : {Flip{rec + 0, "length CRC mismatch"}, Flip{rec + 7, "length CRC mismatch"},
                        Flip{rec + 9, "length CRC mismatch"}, Flip{rec + 12, "data CRC mismatch"},
                        Flip{rec + 20, "data CRC mismatch"}, Flip{s.offsets[4] - 1, "data CRC mismatch"}}) {
    std::string b = s.bytes;
    b[f.at] ^= 0x10;
    write_file(s.path, b);
    expect_read_error(s.path, {s.path, "record 3 at byte " + std::to_string(rec), f.check});
  }
}

TEST(ReadEvents, DetectsTruncation) {
  TempDir tmp;
  SampleFile s = sample_file(tmp.path);
  const size_t last = s.offsets[5];
  for (size_t cut = last + 1; cut < s.bytes.size(); ++cut) {
    write_file(s.path, s.bytes.substr(0, cut));
    expect_read_error(s.path, {s.path, "record 5 at byte " + std::to_string(last),
                               cut - last < 12 ? "truncated header" : "truncated data"});
  }
  write_file(s.path, s.bytes.substr(0, last));  // a cut at a record boundary is a shorter valid file
  EXPECT_EQ(read_events(s.path).scalars.size(), 4u);
  write_file(s.path, "");
  EXPECT_TRUE(read_events(s.path).scalars.empty());
}

TEST(ReadEvents, HugeLengthIsTruncationNotAnAllocation) {
  TempDir tmp;
  const std::string path = tmp.path + "/huge";
  std::string b(8, '\xff');  // length 2^64-1 with a valid length CRC
  const uint32_t crc = mask_crc32c(crc32c(b.data(), 8));
  for (int i = 0; i < 4; ++i) b.push_back(char(crc >> (8 * i)));
  write_file(path, b + "data");
  expect_read_error(path, {path, "record 0 at byte 0", "truncated data"});
}

TEST(ReadEvents, MalformedEventsNameTheRecordAndField) {
  TempDir tmp;
  const std::string path = tmp.path + "/bad";
  const std::string good = tfrecord_frame(encode_file_version_event(1.0, "brain.Event:2"));
  struct Case {
    std::string event;
    const char* what;
  };
  const std::vector<Case> cases = {
      {bytes_of({0x10}), "varint"},                          // step key, then nothing
      {bytes_of({0x10, 0x80}), "varint"},                    // step varint cut
      {bytes_of({0x08, 0x01}), "wall_time"},                 // field 1 as varint
      {bytes_of({0x15, 0, 0, 0, 0}), "step"},                // field 2 as fixed32
      {bytes_of({0x1a, 0x05, 'a'}), "runs past the end"},   // string longer than the message
      {bytes_of({0x09, 0, 0, 0}), "truncated 64-bit"},       // double cut
      {bytes_of({0x00, 0x00}), "invalid field number 0"},
      {bytes_of({0x23}), "unsupported wire type 3"},         // field 4 as a group
      {bytes_of({0x2a, 0x02, 0x0d, 0x00}), "Summary byte"},  // Summary field 1 as fixed32
      {bytes_of({0x2a, 0x04, 0x0a, 0x02, 0x15, 0x00}), "Summary.Value byte"},  // simple_value cut
  };
  for (const Case& c : cases) {
    write_file(path, good + tfrecord_frame(c.event));
    expect_read_error(path, {path, "record 1 at byte " + std::to_string(good.size()), "malformed", c.what});
  }
}

TEST(ReadEvents, SkipsOtherFieldsAndAcceptsAnyFieldOrder) {
  TempDir tmp;
  const std::string path = tmp.path + "/other";
  // Value{tag="img", image(4)=bytes}: not a scalar. Value{simple_value=3, tag="s", node_name(7)="n"}.
  std::string img = bytes_of({0x0a, 0x03, 'i', 'm', 'g', 0x22, 0x01, 0x00});
  std::string scalar = bytes_of({0x15, 0x00, 0x00, 0x40, 0x40, 0x0a, 0x01, 's', 0x3a, 0x01, 'n'});
  std::string summary = bytes_of({0x0a, int(img.size())}) + img + bytes_of({0x0a, int(scalar.size())}) + scalar;
  // Event{summary first, then an unknown varint (field 7), step 9, wall_time 2.0}
  std::string ev = bytes_of({0x2a, int(summary.size())}) + summary + bytes_of({0x38, 0x05, 0x10, 0x09}) +
                   bytes_of({0x09, 0, 0, 0, 0, 0, 0, 0, 0x40});
  write_file(path, tfrecord_frame(ev));
  const EventFileContents c = read_events(path);
  EXPECT_EQ(c.file_version, "");
  ASSERT_EQ(c.scalars.size(), 1u);
  EXPECT_EQ(c.scalars[0].tag, "s");
  EXPECT_EQ(c.scalars[0].value, 3.0f);
  EXPECT_EQ(c.scalars[0].step, 9);
  EXPECT_EQ(c.scalars[0].wall_time, 2.0);
}

TEST(ReadEvents, UnreadableFileNamesIt) {
  TempDir tmp;
  expect_read_error(tmp.path + "/nope", {tmp.path + "/nope", "cannot open"});
  expect_read_error(tmp.path, {tmp.path, "read failed"});  // a directory
}

}  // namespace
