// engine/tensorboard.cpp: TFRecord framing, CRC-32C and hand-written protobuf wire encoding of
// tensorflow.Event (see tensorboard.h for the format).
#include "engine/tensorboard.h"

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <utility>

#include "engine/check.h"

namespace engine {
namespace {

constexpr std::array<uint32_t, 256> make_crc32c_table() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ ((c & 1) ? 0x82F63B78u : 0u);
    t[i] = c;
  }
  return t;
}
constexpr std::array<uint32_t, 256> kCrc32cTable = make_crc32c_table();

// Protobuf wire types.
constexpr uint32_t kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kFixed32 = 5;

std::string hex32(uint32_t v) {
  char buf[11];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

uint64_t load_le(const char* p, int nbytes) {
  uint64_t v = 0;
  for (int i = 0; i < nbytes; ++i) v |= uint64_t(uint8_t(p[i])) << (8 * i);
  return v;
}

void append_le(std::string& out, uint64_t v, int nbytes) {
  for (int i = 0; i < nbytes; ++i) out.push_back(char((v >> (8 * i)) & 0xff));
}

void append_key(std::string& out, uint32_t field, uint32_t wire) { append_varint(out, uint64_t(field) << 3 | wire); }

void append_bytes_field(std::string& out, uint32_t field, std::string_view s) {
  append_key(out, field, kLengthDelimited);
  append_varint(out, s.size());
  out.append(s);
}

// Event fields 1 and 2; proto3 omits a field equal to its default (a double is omitted only for +0.0 bits).
std::string event_prefix(double wall_time, int64_t step) {
  std::string e;
  uint64_t bits;
  std::memcpy(&bits, &wall_time, 8);
  if (bits != 0) {
    append_key(e, 1, kFixed64);
    append_le(e, bits, 8);
  }
  if (step != 0) {
    append_key(e, 2, kVarint);
    append_varint(e, uint64_t(step));  // int64 is two's complement as a varint (10 bytes if negative)
  }
  return e;
}

double wall_clock_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string host_name() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof buf - 1) != 0 || buf[0] == '\0') return "localhost";
  return buf;
}

// Strict UTF-8 (no overlong forms, surrogates or code points above U+10FFFF): protobuf parsers reject a
// proto3 string field that is not, which would make TensorBoard drop the record.
bool is_utf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const uint8_t c = uint8_t(s[i]);
    uint32_t cp, min;
    size_t extra;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      cp = c & 0x1F, extra = 1, min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
      cp = c & 0x0F, extra = 2, min = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
      cp = c & 0x07, extra = 3, min = 0x10000;
    } else {
      return false;
    }
    if (s.size() - i <= extra) return false;
    for (size_t k = 1; k <= extra; ++k) {
      const uint8_t d = uint8_t(s[i + k]);
      if ((d & 0xC0) != 0x80) return false;
      cp = cp << 6 | (d & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += extra + 1;
  }
  return true;
}

// Reads one protobuf message; errors name the message and the byte offset inside it.
class ProtoCursor {
 public:
  ProtoCursor(std::string_view buf, const char* message) : buf_(buf), message_(message) {}
  bool done() const { return pos_ == buf_.size(); }

  // Next field key -> (field number, wire type).
  std::pair<uint32_t, uint32_t> key() {
    const uint64_t k = varint();
    const uint64_t field = k >> 3;
    if (field == 0 || field > 0x1FFFFFFF) fail(str_cat("invalid field number ", field));
    return {uint32_t(field), uint32_t(k & 7)};
  }
  void expect_wire(uint32_t field, const char* name, uint32_t got, uint32_t want) const {
    if (got != want) fail(str_cat("field ", field, " (", name, ") has wire type ", got, ", expected ", want));
  }
  uint64_t varint() {
    uint64_t v;
    if (!parse_varint(buf_, pos_, v)) fail("truncated or over-long varint");
    return v;
  }
  uint64_t fixed(int nbytes) {
    if (buf_.size() - pos_ < size_t(nbytes)) fail(str_cat("truncated ", nbytes * 8, "-bit field"));
    const uint64_t v = load_le(buf_.data() + pos_, nbytes);
    pos_ += size_t(nbytes);
    return v;
  }
  std::string_view bytes() {
    const uint64_t n = varint();
    if (n > buf_.size() - pos_) fail(str_cat("length ", n, " runs past the end (", buf_.size() - pos_, " bytes left)"));
    const std::string_view s = buf_.substr(pos_, size_t(n));
    pos_ += size_t(n);
    return s;
  }
  void skip(uint32_t wire) {
    switch (wire) {
      case kVarint: varint(); break;
      case kFixed64: fixed(8); break;
      case kLengthDelimited: bytes(); break;
      case kFixed32: fixed(4); break;
      default: fail(str_cat("unsupported wire type ", wire));
    }
  }
  [[noreturn]] void fail(const std::string& what) const {
    throw Error(str_cat(message_, " byte ", pos_, ": ", what));
  }

 private:
  std::string_view buf_;
  const char* message_;  // "Event", "Summary", "Summary.Value"
  size_t pos_ = 0;
};

void parse_value(std::string_view msg, std::vector<std::pair<std::string, float>>& values) {
  ProtoCursor c(msg, "Summary.Value");
  std::string tag;
  bool has_value = false;
  float value = 0;
  while (!c.done()) {
    const auto [field, wire] = c.key();
    if (field == 1) {
      c.expect_wire(field, "tag", wire, kLengthDelimited);
      tag = std::string(c.bytes());
    } else if (field == 2) {
      c.expect_wire(field, "simple_value", wire, kFixed32);
      const uint32_t bits = uint32_t(c.fixed(4));
      std::memcpy(&value, &bits, 4);
      has_value = true;
    } else {
      c.skip(wire);
    }
  }
  if (has_value) values.emplace_back(std::move(tag), value);
}

void parse_event(std::string_view msg, EventFileContents& out) {
  ProtoCursor c(msg, "Event");
  double wall_time = 0;
  int64_t step = 0;
  std::vector<std::pair<std::string, float>> values;  // fields may come in any order: attach time/step last
  while (!c.done()) {
    const auto [field, wire] = c.key();
    if (field == 1) {
      c.expect_wire(field, "wall_time", wire, kFixed64);
      const uint64_t bits = c.fixed(8);
      std::memcpy(&wall_time, &bits, 8);
    } else if (field == 2) {
      c.expect_wire(field, "step", wire, kVarint);
      step = int64_t(c.varint());
    } else if (field == 3) {
      c.expect_wire(field, "file_version", wire, kLengthDelimited);
      out.file_version = std::string(c.bytes());
    } else if (field == 5) {
      c.expect_wire(field, "summary", wire, kLengthDelimited);
      ProtoCursor s(c.bytes(), "Summary");
      while (!s.done()) {
        const auto [sfield, swire] = s.key();
        if (sfield == 1) {
          s.expect_wire(sfield, "value", swire, kLengthDelimited);
          parse_value(s.bytes(), values);
        } else {
          s.skip(swire);
        }
      }
    } else {
      c.skip(wire);
    }
  }
  for (auto& [tag, value] : values) out.scalars.push_back({wall_time, step, std::move(tag), value});
}

}  // namespace

uint32_t crc32c(const void* data, size_t n, uint32_t crc) {
  const auto* p = static_cast<const uint8_t*>(data);
  crc = ~crc;
  for (size_t i = 0; i < n; ++i) crc = kCrc32cTable[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
  return ~crc;
}

uint32_t mask_crc32c(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xa282ead8u; }

void append_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(char((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(char(v));
}

bool parse_varint(std::string_view data, size_t& pos, uint64_t& v) {
  uint64_t r = 0;
  for (size_t i = 0; i < 10 && pos + i < data.size(); ++i) {
    const uint8_t b = uint8_t(data[pos + i]);
    if (i == 9 && b > 1) return false;  // bits beyond 64
    r |= uint64_t(b & 0x7f) << (7 * i);
    if (!(b & 0x80)) {
      pos += i + 1;
      v = r;
      return true;
    }
  }
  return false;
}

std::string tfrecord_frame(std::string_view data) {
  std::string out;
  out.reserve(data.size() + 16);
  append_le(out, data.size(), 8);
  append_le(out, mask_crc32c(crc32c(out.data(), 8)), 4);
  out.append(data);
  append_le(out, mask_crc32c(crc32c(data.data(), data.size())), 4);
  return out;
}

std::string encode_file_version_event(double wall_time, std::string_view file_version) {
  std::string e = event_prefix(wall_time, 0);
  append_bytes_field(e, 3, file_version);
  return e;
}

std::string encode_scalar_event(double wall_time, int64_t step, std::string_view tag, float value) {
  std::string v;
  append_bytes_field(v, 1, tag);
  append_key(v, 2, kFixed32);
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  append_le(v, bits, 4);
  std::string summary;
  append_bytes_field(summary, 1, v);
  std::string e = event_prefix(wall_time, step);
  append_bytes_field(e, 5, summary);
  return e;
}

EventFileContents read_events(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error(path + ": cannot open: " + std::strerror(errno));
  std::string bytes;
  try {  // libstdc++ throws from the stream buffer on a read error (e.g. a directory) whatever the mask
    bytes.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  } catch (const std::ios_base::failure& e) {
    throw Error(path + ": read failed: " + e.what());
  }
  EventFileContents out;
  size_t off = 0;
  for (int64_t index = 0; off < bytes.size(); ++index) {
    const auto where = [&] { return str_cat(path, ": record ", index, " at byte ", off, ": "); };
    const size_t left = bytes.size() - off;
    if (left < 12) throw Error(str_cat(where(), "truncated header (", left, " of 12 bytes)"));
    const char* p = bytes.data() + off;
    const uint64_t len = load_le(p, 8);
    const uint32_t len_crc = mask_crc32c(crc32c(p, 8));
    if (uint32_t(load_le(p + 8, 4)) != len_crc) {
      throw Error(str_cat(where(), "length CRC mismatch (stored ", hex32(uint32_t(load_le(p + 8, 4))),
                          ", computed ", hex32(len_crc), ")"));
    }
    if (left < 16 || len > left - 16) {
      throw Error(str_cat(where(), "truncated data (record needs 16 + ", len, " bytes, file has ", left,
                          " left)"));
    }
    const std::string_view data(p + 12, size_t(len));
    const uint32_t stored = uint32_t(load_le(p + 12 + len, 4));
    const uint32_t data_crc = mask_crc32c(crc32c(data.data(), data.size()));
    if (stored != data_crc) {
      throw Error(str_cat(where(), "data CRC mismatch (stored ", hex32(stored), ", computed ", hex32(data_crc), ")"));
    }
    try {
      parse_event(data, out);
    } catch (const Error& e) {
      throw Error(where() + "malformed " + e.what());
    }
    off += 16 + size_t(len);
  }
  return out;
}

EventWriter::EventWriter(const std::string& logdir) {
  ENGINE_CHECK(!logdir.empty(), "EventWriter: empty log directory");
  std::error_code ec;
  std::filesystem::create_directories(logdir, ec);
  if (ec) throw Error(logdir + ": cannot create log directory: " + ec.message());
  const double now = wall_clock_seconds();
  const std::string base = (std::filesystem::path(logdir) / ("events.out.tfevents." +
                                                             std::to_string(int64_t(now)) + "." + host_name())).string();
  // A second writer in the same second (a restart, a test) gets ".1", ".2", ...: TensorBoard reads every file
  // whose name contains "tfevents", in name order.
  path_ = base;
  for (int i = 1; (fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0644)) < 0; ++i) {
    if (errno != EEXIST || i > 1000) throw Error(path_ + ": cannot create: " + std::strerror(errno));
    path_ = base + "." + std::to_string(i);
  }
  pending_ = tfrecord_frame(encode_file_version_event(now, "brain.Event:2"));
  try {
    flush();
  } catch (...) {
    ::close(fd_);
    throw;
  }
}

EventWriter::~EventWriter() {
  try {
    flush();
  } catch (const Error& e) {
    std::fprintf(stderr, "EventWriter: %s\n", e.what());
  }
  ::close(fd_);
}

void EventWriter::add_scalar(std::string_view tag, float value, int64_t step) {
  add_scalar(tag, value, step, wall_clock_seconds());
}

void EventWriter::add_scalar(std::string_view tag, float value, int64_t step, double wall_time) {
  ENGINE_CHECK(!tag.empty() && is_utf8(tag), path_, ": scalar tag must be non-empty UTF-8, got \"", tag, "\"");
  pending_ += tfrecord_frame(encode_scalar_event(wall_time, step, tag, value));
}

void EventWriter::flush() {
  if (pending_.empty()) return;
  size_t done = 0;
  while (done < pending_.size()) {
    const ssize_t n = ::write(fd_, pending_.data() + done, pending_.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const std::string err = std::strerror(errno);
      pending_.erase(0, done);  // the file holds a prefix of the stream; a later flush continues it
      throw Error(path_ + ": write failed: " + err);
    }
    done += size_t(n);
  }
  pending_.clear();
  if (::fsync(fd_) != 0) throw Error(path_ + ": fsync failed: " + std::strerror(errno));
}

}  // namespace engine
