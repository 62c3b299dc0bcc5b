#include "engine/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>

namespace engine {
namespace {

size_t safetensors_dtype_size(const std::string& s) {
  static const std::map<std::string, size_t> sizes = {
      {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8}, {"I32", 4}, {"I16", 2},
      {"I8", 1},  {"U8", 1},  {"BOOL", 1}, {"U16", 2}, {"U32", 4}, {"U64", 8}, {"F8_E4M3", 1}, {"F8_E5M2", 1}};
  auto it = sizes.find(s);
  return it == sizes.end() ? 0 : it->second;
}

std::string errno_str() { return std::strerror(errno); }

}  // namespace

DType dtype_from_safetensors(const std::string& s) {
  if (s == "F32") return DType::kF32;
  if (s == "F16") return DType::kF16;
  if (s == "BF16") return DType::kBF16;
  if (s == "U8") return DType::kU8;
  if (s == "I32") return DType::kI32;
  if (s == "F64") return DType::kF64;
  throw Error("unsupported safetensors dtype " + s + " (supported: F32, F16, BF16, U8, I32, F64)");
}

const char* dtype_to_safetensors(DType t) {
  switch (t) {
    case DType::kF32: return "F32";
    case DType::kF16: return "F16";
    case DType::kBF16: return "BF16";
    case DType::kU8: return "U8";
    case DType::kI32: return "I32";
    case DType::kF64: return "F64";
  }
  return "?";
}

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  ENGINE_CHECK(fd >= 0, path, ": cannot open: ", errno_str());
  struct stat st{};
  if (::fstat(fd, &st) != 0) { ::close(fd); throw Error(path + ": cannot stat: " + errno_str()); }
  map_bytes_ = size_t(st.st_size);
  if (map_bytes_ < 8) { ::close(fd); throw Error(str_cat(path, ": truncated: ", map_bytes_, " bytes, need at least 8")); }
  map_ = ::mmap(nullptr, map_bytes_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  ENGINE_CHECK(map_ != MAP_FAILED, path, ": mmap failed: ", errno_str());
  const auto* bytes = static_cast<const unsigned char*>(map_);
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; --i) hlen = (hlen << 8) | bytes[i];
  ENGINE_CHECK(hlen <= map_bytes_ - 8, path, ": header length ", hlen, " exceeds the file size ", map_bytes_,
               " (truncated or not a safetensors file)");
  nlohmann::json h;
  try {
    h = nlohmann::json::parse(reinterpret_cast<const char*>(bytes + 8), reinterpret_cast<const char*>(bytes + 8 + hlen));
  } catch (const std::exception& e) {
    throw Error(path + ": header is not valid JSON: " + e.what());
  }
  ENGINE_CHECK(h.is_object(), path, ": header is not a JSON object");
  const size_t data_begin = 8 + hlen, data_bytes = map_bytes_ - data_begin;
  for (auto it = h.begin(); it != h.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (it->is_object())
        for (auto m = it->begin(); m != it->end(); ++m)
          if (m->is_string()) metadata_[m.key()] = m->get<std::string>();
      continue;
    }
    const std::string& name = it.key();
    const auto& e = *it;
    ENGINE_CHECK(e.is_object() && e.contains("dtype") && e.contains("shape") && e.contains("data_offsets"), path,
                 ": tensor ", name, ": header entry needs dtype, shape and data_offsets");
    SafetensorsEntry ent;
    ent.dtype_str = e["dtype"].get<std::string>();
    const size_t esize = safetensors_dtype_size(ent.dtype_str);
    ENGINE_CHECK(esize != 0, path, ": tensor ", name, ": unknown dtype ", ent.dtype_str);
    int64_t numel = 1;
    for (const auto& d : e["shape"]) {
      ENGINE_CHECK(d.is_number_integer() && d.get<int64_t>() >= 0, path, ": tensor ", name, ": bad shape entry");
      ent.shape.push_back(d.get<int64_t>());
      numel *= ent.shape.back();
    }
    const auto& off = e["data_offsets"];
    ENGINE_CHECK(off.is_array() && off.size() == 2, path, ": tensor ", name, ": data_offsets must be [begin, end]");
    const uint64_t b = off[0].get<uint64_t>(), en = off[1].get<uint64_t>();
    ENGINE_CHECK(b <= en && en <= data_bytes, path, ": tensor ", name, ": data [", b, ", ", en,
                 ") lies outside the file's ", data_bytes, " data bytes (truncated file?)");
    ENGINE_CHECK(en - b == uint64_t(numel) * esize, path, ": tensor ", name, ": ", en - b, " bytes stored but shape ",
                 "and dtype ", ent.dtype_str, " need ", uint64_t(numel) * esize);
    ent.data = bytes + data_begin + b;
    ent.nbytes = size_t(en - b);
    entries_.emplace(name, std::move(ent));
  }
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ && map_ != MAP_FAILED) ::munmap(map_, map_bytes_);
}

const SafetensorsEntry& SafetensorsFile::entry(const std::string& name) const {
  auto it = entries_.find(name);
  ENGINE_CHECK(it != entries_.end(), path_, ": no tensor named ", name);
  return it->second;
}

TensorView SafetensorsFile::view(const std::string& name) const {
  const SafetensorsEntry& e = entry(name);
  TensorView v;
  try {
    v.dtype = dtype_from_safetensors(e.dtype_str);
  } catch (const Error& err) {
    throw Error(path_ + ": tensor " + name + ": " + err.what());
  }
  ENGINE_CHECK(int(e.shape.size()) <= Shape::kMaxDims, path_, ": tensor ", name, ": ", e.shape.size(), " dims");
  for (int64_t d : e.shape) v.shape.dims[v.shape.ndim++] = d;
  v.data = const_cast<void*>(e.data);
  v.device = Device::kCPU;
  return v;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> n;
  for (const auto& kv : entries_) n.push_back(kv.first);
  return n;
}

SafetensorsCheckpoint::SafetensorsCheckpoint(const std::string& dir) : dir_(dir) {
  const std::string index = dir + "/model.safetensors.index.json", single = dir + "/model.safetensors";
  if (::access(index.c_str(), R_OK) == 0) {
    std::ifstream in(index);
    nlohmann::json j;
    try {
      in >> j;
    } catch (const std::exception& e) {
      throw Error(index + ": not valid JSON: " + e.what());
    }
    ENGINE_CHECK(j.contains("weight_map") && j["weight_map"].is_object(), index, ": no \"weight_map\" object");
    std::map<std::string, size_t> file_index;
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      const std::string f = it->get<std::string>();
      auto fi = file_index.find(f);
      if (fi == file_index.end()) {
        files_.push_back(std::make_unique<SafetensorsFile>(dir + "/" + f));
        fi = file_index.emplace(f, files_.size() - 1).first;
      }
      ENGINE_CHECK(files_[fi->second]->contains(it.key()), index, ": maps tensor ", it.key(), " to ", f,
                   ", which does not contain it");
      where_[it.key()] = fi->second;
    }
  } else {
    ENGINE_CHECK(::access(single.c_str(), R_OK) == 0, dir, ": no model.safetensors or model.safetensors.index.json");
    files_.push_back(std::make_unique<SafetensorsFile>(single));
    for (const auto& n : files_[0]->names()) where_[n] = 0;
  }
}

const SafetensorsFile& SafetensorsCheckpoint::file_of(const std::string& name) const {
  auto it = where_.find(name);
  ENGINE_CHECK(it != where_.end(), dir_, ": checkpoint has no tensor named ", name);
  return *files_[it->second];
}

std::vector<std::string> SafetensorsCheckpoint::names() const {
  std::vector<std::string> n;
  for (const auto& kv : where_) n.push_back(kv.first);
  return n;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  ENGINE_CHECK(in.good(), path, ": cannot open");
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ENGINE_CHECK(fd >= 0, tmp, ": cannot create: ", errno_str());
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0) {
      const std::string err = errno_str();
      ::close(fd);
      ::unlink(tmp.c_str());
      throw Error(tmp + ": write failed: " + err);
    }
    done += size_t(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    ::unlink(tmp.c_str());
    throw Error(tmp + ": fsync/close failed: " + errno_str());
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    ::unlink(tmp.c_str());
    throw Error(path + ": rename failed: " + errno_str());
  }
}

SafetensorsWriter::SafetensorsWriter(const std::string& path, std::vector<SafetensorsLayoutEntry> layout,
                                     const std::map<std::string, std::string>& metadata)
    : path_(path), tmp_(path + ".tmp." + std::to_string(::getpid())), layout_(std::move(layout)) {
  nlohmann::ordered_json h;
  if (!metadata.empty()) h["__metadata__"] = metadata;
  for (const SafetensorsLayoutEntry& e : layout_) {
    ENGINE_CHECK(!e.name.empty() && e.name != "__metadata__", path, ": invalid tensor name '", e.name, "'");
    ENGINE_CHECK(!h.contains(e.name), path, ": tensor ", e.name, " appears twice in the layout");
    std::vector<int64_t> shape(e.shape.dims.begin(), e.shape.dims.begin() + e.shape.ndim);
    h[e.name] = {{"dtype", dtype_to_safetensors(e.dtype)}, {"shape", shape},
                 {"data_offsets", {data_bytes_, data_bytes_ + e.nbytes()}}};
    data_bytes_ += e.nbytes();
  }
  std::string header = h.dump();
  header.append((8 - header.size() % 8) % 8, ' ');  // data starts 8-byte aligned, as safetensors writes it
  std::string prefix(8, '\0');
  const uint64_t hl = header.size();
  for (int i = 0; i < 8; ++i) prefix[i] = char((hl >> (8 * i)) & 0xff);
  header_bytes_ = 8 + hl;
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ENGINE_CHECK(fd_ >= 0, tmp_, ": cannot create: ", errno_str());
  try {
    append(prefix.data(), prefix.size());
    append(header.data(), header.size());
  } catch (...) {
    discard();
    throw;
  }
}

SafetensorsWriter::~SafetensorsWriter() {
  if (!finished_) discard();
}

void SafetensorsWriter::discard() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  ::unlink(tmp_.c_str());
}

void SafetensorsWriter::append(const void* p, size_t n) {
  const char* c = static_cast<const char*>(p);
  while (n > 0) {
    const ssize_t w = ::write(fd_, c, n);
    if (w < 0 && errno == EINTR) continue;
    ENGINE_CHECK(w > 0, tmp_, ": write failed: ", w < 0 ? errno_str() : std::string("no progress"));
    c += w;
    n -= size_t(w);
  }
}

void SafetensorsWriter::write(const std::string& name, TensorView host) {
  ENGINE_CHECK(!finished_ && fd_ >= 0, path_, ": write of tensor ", name, " after finish() or a failed write");
  ENGINE_CHECK(next_ < layout_.size(), path_, ": tensor ", name, " written after all ", layout_.size(),
               " tensors of the layout");
  const SafetensorsLayoutEntry& e = layout_[next_];
  if (name != e.name) {
    bool known = false;
    for (const auto& l : layout_) known = known || l.name == name;
    ENGINE_CHECK(false, path_, ": tensor ", name, known ? " written out of order" : " is not in the layout",
                 ": expected ", e.name, " (tensor ", next_ + 1, " of ", layout_.size(), ")");
  }
  ENGINE_CHECK(host.device == Device::kCPU, path_, ": tensor ", name, " is not in host memory (", host.str(), ")");
  ENGINE_CHECK(host.dtype == e.dtype && host.shape == e.shape, path_, ": tensor ", name, " is ",
               dtype_name(host.dtype), host.shape.str(), " (", host.nbytes(), " bytes), the layout says ",
               dtype_name(e.dtype), e.shape.str(), " (", e.nbytes(), " bytes)");
  try {
    append(host.data, host.nbytes());
  } catch (...) {
    discard();  // the file is now inconsistent: later writes and finish() fail
    throw;
  }
  ++next_;
}

void SafetensorsWriter::finish() {
  ENGINE_CHECK(!finished_ && fd_ >= 0, path_, ": finish() called twice or after a failed write");
  ENGINE_CHECK(next_ == layout_.size(), path_, ": finish() with ", layout_.size() - next_,
               " tensors not written, first ", layout_[std::min(next_, layout_.size() - 1)].name);
  if (::fsync(fd_) != 0 || ::close(fd_) != 0) {
    const std::string err = errno_str();
    fd_ = -1;
    discard();
    throw Error(tmp_ + ": fsync/close failed: " + err);
  }
  fd_ = -1;
  if (::rename(tmp_.c_str(), path_.c_str()) != 0) {
    const std::string err = errno_str();
    discard();
    throw Error(path_ + ": rename failed: " + err);
  }
  finished_ = true;
}

void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, TensorView>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::vector<SafetensorsLayoutEntry> layout;
  for (const auto& [name, t] : tensors) {
    ENGINE_CHECK(t.device == Device::kCPU, "write_safetensors: tensor ", name, " is not in host memory");
    layout.push_back({name, t.dtype, t.shape});
  }
  SafetensorsWriter w(path, std::move(layout), metadata);
  for (const auto& [name, t] : tensors) w.write(name, t);
  w.finish();
}

}  // namespace engine
