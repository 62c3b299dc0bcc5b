// engine/tensorboard.h: TensorBoard scalar event files, written and read natively (no protobuf, no TensorFlow).
//   File: events.out.tfevents.<unix seconds>.<hostname> in the log dir, a sequence of TFRecords:
//   u64 length (little-endian), u32 masked CRC-32C of those 8 bytes, data, u32 masked CRC-32C of the data;
//   mask(c) = ((c >> 15) | (c << 17)) + 0xa282ead8. Each record's data is a serialized tensorflow.Event:
//     Event   { double wall_time = 1; int64 step = 2; oneof { string file_version = 3; Summary summary = 5; } }
//     Summary { repeated Value value = 1; }   Value { string tag = 1; float simple_value = 2; }
//   The first event is file_version = "brain.Event:2". Tests: tests/engine/tensorboard_cpu_test.cpp.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace engine {

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78). Pass a previous result as `crc` to extend it.
uint32_t crc32c(const void* data, size_t n, uint32_t crc = 0);
// TFRecord's masked CRC: a CRC stored next to the data it covers is then not the CRC of a run of those bytes.
uint32_t mask_crc32c(uint32_t crc);

// Protobuf base-128 varint: 7 bits per byte, least significant group first, high bit = more bytes follow.
void append_varint(std::string& out, uint64_t v);
// Reads the varint at data[pos] and advances pos; false (pos unchanged) if it is truncated or does not fit
// in 64 bits (more than 10 bytes, or a 10th byte above 1).
bool parse_varint(std::string_view data, size_t& pos, uint64_t& v);

// One TFRecord around `data` (length, masked length CRC, data, masked data CRC).
std::string tfrecord_frame(std::string_view data);
// Serialized Event messages (proto3: a zero wall_time or step is omitted; simple_value is in a oneof and is
// always present).
std::string encode_file_version_event(double wall_time, std::string_view file_version);
std::string encode_scalar_event(double wall_time, int64_t step, std::string_view tag, float value);

struct ScalarEvent {
  double wall_time = 0;  // seconds since the Unix epoch, e.g. 1718000000.25
  int64_t step = 0;      // global step, e.g. 120
  std::string tag;       // e.g. "train/loss"
  float value = 0;       // bits as written (NaN payloads included)
};

struct EventFileContents {
  std::string file_version;          // "brain.Event:2"; empty if no event carries one
  std::vector<ScalarEvent> scalars;  // in file order, one per Summary.Value with a simple_value
};

// Reads an event file, checking both CRCs of every record. Corruption, truncation and malformed Events are
// an engine::Error naming the file, the record (0-based) and its byte offset, and the failed check. Fields
// other than those above (images, histograms, ...) are skipped.
EventFileContents read_events(const std::string& path);

// Appends scalar events to a new event file in `logdir` (created like mkdir -p). The file is an append-only
// log rather than written atomically: TensorBoard follows a growing file, and a crash mid-write leaves at
// most a truncated last record, which TensorBoard skips and read_events reports. Records are buffered in
// memory until flush() (or destruction), which appends them and fsyncs; an I/O error is an engine::Error
// naming the file. Only one writer (rank 0) should write a given log dir's scalars.
class EventWriter {
 public:
  // Creates the file and writes the file_version event to disk, so an unusable log dir fails here.
  explicit EventWriter(const std::string& logdir);
  ~EventWriter();  // flushes; an error there is printed to stderr (a destructor cannot throw): call flush()
  EventWriter(const EventWriter&) = delete;
  EventWriter& operator=(const EventWriter&) = delete;

  // tag: non-empty UTF-8, e.g. "train/loss". wall_time defaults to the system clock.
  void add_scalar(std::string_view tag, float value, int64_t step);
  void add_scalar(std::string_view tag, float value, int64_t step, double wall_time);
  void flush();

  const std::string& path() const { return path_; }  // e.g. "runs/a/events.out.tfevents.1718000000.node7"

 private:
  std::string path_;
  int fd_ = -1;
  std::string pending_;  // framed records not yet written
};

}  // namespace engine
