// engine/safetensors.h: read (memory-mapped) and write .safetensors files, and open HF checkpoints that
// are one file or sharded with model.safetensors.index.json.
//   Format: u64 little-endian header length, JSON header {name: {dtype, shape, data_offsets:[b,e]}, ...,
//   "__metadata__": {str: str}}, then the data. Offsets are relative to the end of the header.
//   Every malformed input is an engine::Error naming the file and, where there is one, the tensor.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/tensor.h"

namespace engine {

struct SafetensorsEntry {
  std::string dtype_str;          // as stored: "BF16", "F16", "F32", "U8", "I32", ...
  std::vector<int64_t> shape;
  const void* data = nullptr;     // into the mapping
  size_t nbytes = 0;
};

class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);  // maps the file and validates the header
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  bool contains(const std::string& name) const { return entries_.count(name) != 0; }
  const SafetensorsEntry& entry(const std::string& name) const;
  // A host view of the tensor (no copy); throws for dtypes the engine has no DType for.
  TensorView view(const std::string& name) const;
  std::vector<std::string> names() const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  std::string path_;
  void* map_ = nullptr;
  size_t map_bytes_ = 0;
  std::map<std::string, SafetensorsEntry> entries_;
  std::map<std::string, std::string> metadata_;
};

// An HF checkpoint folder: model.safetensors, or shards listed by model.safetensors.index.json.
class SafetensorsCheckpoint {
 public:
  explicit SafetensorsCheckpoint(const std::string& dir);
  bool contains(const std::string& name) const { return where_.count(name) != 0; }
  const SafetensorsFile& file_of(const std::string& name) const;
  TensorView view(const std::string& name) const { return file_of(name).view(name); }
  const SafetensorsEntry& entry(const std::string& name) const { return file_of(name).entry(name); }
  std::vector<std::string> names() const;

 private:
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t> where_;  // tensor -> index into files_
};

// One tensor of a file SafetensorsWriter is about to write.
struct SafetensorsLayoutEntry {
  std::string name;
  DType dtype = DType::kF32;
  Shape shape;
  size_t nbytes() const { return size_t(shape.numel()) * dtype_size(dtype); }
};

// Streams a .safetensors file whose layout is known up front, so host memory stays bounded by one tensor:
// the constructor writes the header (every offset follows from the layout) to a temporary file in the same
// folder; write() appends one tensor's bytes, in layout order; finish() checks that every tensor was
// written, fsyncs and renames the file into place (atomic). Destroying the writer before finish() removes
// the temporary file, so a failed export never leaves a partial file at `path`.
// Errors (engine::Error) name the file and the tensor: duplicate names, out-of-order or unknown tensors,
// a view whose dtype, shape or place differs from the layout, finish() with tensors missing.
class SafetensorsWriter {
 public:
  SafetensorsWriter(const std::string& path, std::vector<SafetensorsLayoutEntry> layout,
                    const std::map<std::string, std::string>& metadata = {});
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  void write(const std::string& name, TensorView host);
  void finish();
  // Header bytes (length prefix included) + data bytes: the final file size.
  uint64_t file_bytes() const { return header_bytes_ + data_bytes_; }
  uint64_t data_bytes() const { return data_bytes_; }

 private:
  void append(const void* p, size_t n);
  void discard();  // close and remove the temporary file

  std::string path_, tmp_;
  std::vector<SafetensorsLayoutEntry> layout_;
  size_t next_ = 0;  // index in layout_ of the tensor write() expects
  int fd_ = -1;
  uint64_t header_bytes_ = 0, data_bytes_ = 0;
  bool finished_ = false;
};

// Writes tensors (host views) atomically: a temporary file in the same folder, fsync, then rename.
// (SafetensorsWriter with the views' own layout.)
void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, TensorView>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// "BF16" <-> DType (throws for the ones the engine does not compute with).
DType dtype_from_safetensors(const std::string& s);
const char* dtype_to_safetensors(DType t);

// Atomic whole-file write (temp + fsync + rename), shared by every file the engine writes.
void write_file_atomic(const std::string& path, const std::string& bytes);
// A whole file's bytes (an engine::Error naming the file when it cannot be opened).
std::string read_file(const std::string& path);

}  // namespace engine
