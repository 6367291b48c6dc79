// safetensors: read (memory-mapped, validated) and write.
//
// The format is an 8-byte little-endian header length N, N bytes of JSON, then raw tensor data.
// The reader validates everything before any tensor is touched: the header length against the
// file size, the JSON, every entry's dtype, shape and data_offsets (in range, begin <= end, size
// equal to numel x dtype size, no two tensors overlapping), and `__metadata__` (strings only).
// A bad file is an Error naming the file and the entry, never an out-of-bounds read.
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "blockdiff/core/dtype.hpp"
#include "blockdiff/core/error.hpp"
#include "blockdiff/core/tensor.hpp"
#include "blockdiff/io/file.hpp"

namespace blockdiff::io {

//! One tensor of a safetensors file: dtype, shape and its bytes inside the mapping.
struct TensorEntry {
  std::string name;
  DType dtype = DType::f32;
  std::vector<std::int64_t> shape;
  std::span<const std::byte> bytes;

  std::int64_t numel() const {
    std::int64_t n = 1;
    for (auto d : shape) n *= d;
    return n;
  }
  std::string shape_str() const { return shape_text(shape); }
};

//! A memory-mapped, fully validated safetensors file. Move-only. The mapping is private: with
//! `writable`, its pages may be written, and each page written becomes the process's own copy
//! (the file never changes), so tensors can be used in place as ordinary mutable storage.
class SafetensorsFile {
 public:
  //! The largest header accepted (the format's own limit is 100 MB).
  static constexpr std::uint64_t max_header_bytes = 100u << 20;

  explicit SafetensorsFile(const std::filesystem::path& path, bool writable = false) : path_(path.string()) {
    fd_ = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    require(fd_ >= 0, path_, ": cannot open (", std::strerror(errno), ")");
    struct stat st {};
    if (::fstat(fd_, &st) != 0) {
      close_all();
      fail(path_, ": cannot stat");
    }
    size_ = static_cast<std::size_t>(st.st_size);
    if (size_ > 0) {
      void* p = ::mmap(nullptr, size_, writable ? PROT_READ | PROT_WRITE : PROT_READ, MAP_PRIVATE, fd_, 0);
      if (p == MAP_FAILED) {
        close_all();
        fail(path_, ": mmap failed (", std::strerror(errno), ")");
      }
      base_ = static_cast<const std::byte*>(p);
    }
    try {
      parse();
    } catch (...) {
      close_all();
      throw;
    }
  }
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  SafetensorsFile(SafetensorsFile&& o) noexcept { *this = std::move(o); }
  SafetensorsFile& operator=(SafetensorsFile&& o) noexcept {
    if (this != &o) {
      close_all();
      path_ = std::move(o.path_);
      fd_ = std::exchange(o.fd_, -1);
      base_ = std::exchange(o.base_, nullptr);
      size_ = std::exchange(o.size_, 0);
      entries_ = std::move(o.entries_);
      metadata_ = std::move(o.metadata_);
    }
    return *this;
  }
  ~SafetensorsFile() { close_all(); }

  const std::string& path() const { return path_; }
  const std::vector<TensorEntry>& entries() const { return entries_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool contains(std::string_view name) const { return find(name) != nullptr; }

  const TensorEntry* find(std::string_view name) const {
    auto it = std::lower_bound(entries_.begin(), entries_.end(), name,
                               [](const TensorEntry& e, std::string_view n) { return e.name < n; });
    return it != entries_.end() && it->name == name ? &*it : nullptr;
  }
  const TensorEntry& at(std::string_view name) const {
    const TensorEntry* e = find(name);
    require(e != nullptr, path_, ": no tensor named \"", name, "\"");
    return *e;
  }

  //! Maps every page of the file in one call (MADV_POPULATE_READ), so that reading the tensors
  //! takes no page fault per page: on a virtual machine those faults cost more than the copy.
  void populate() const {
    if (base_ == nullptr) return;
#ifdef MADV_POPULATE_READ
    if (::madvise(const_cast<std::byte*>(base_), size_, MADV_POPULATE_READ) == 0) return;
#endif
    ::madvise(const_cast<std::byte*>(base_), size_, MADV_WILLNEED);  // older kernels: read ahead at least
  }

  //! Tells the kernel that the pages of `entry` are no longer needed (for streaming loads).
  void release(const TensorEntry& entry) const {
    if (entry.bytes.empty()) return;
    const long page = ::sysconf(_SC_PAGESIZE);
    auto begin = reinterpret_cast<std::uintptr_t>(entry.bytes.data());
    auto end = begin + entry.bytes.size();
    begin = (begin + static_cast<std::uintptr_t>(page) - 1) & ~(static_cast<std::uintptr_t>(page) - 1);
    if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
  }

 private:
  void close_all() {
    if (base_ != nullptr) ::munmap(const_cast<std::byte*>(base_), size_);
    if (fd_ >= 0) ::close(fd_);
    base_ = nullptr;
    fd_ = -1;
  }

  void parse() {
    require(size_ >= 8, path_, ": truncated: ", size_, " bytes, fewer than the 8-byte header length");
    std::uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<std::uint8_t>(base_[i]);
    require(n <= max_header_bytes, path_, ": header length ", n, " exceeds the ", max_header_bytes, "-byte limit");
    require(n <= size_ - 8, path_, ": header length ", n, " is larger than the file (", size_ - 8,
            " bytes after the length field)");
    const char* hdr = reinterpret_cast<const char*>(base_ + 8);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(hdr, hdr + n);
    } catch (const nlohmann::json::exception& e) {
      fail(path_, ": header is not valid JSON (", e.what(), ")");
    }
    require(j.is_object(), path_, ": header is not a JSON object");
    const std::byte* data = base_ + 8 + n;
    const std::uint64_t data_size = size_ - 8 - n;

    for (auto& [name, value] : j.items()) {
      if (name == "__metadata__") {
        require(value.is_object(), path_, ": __metadata__ is not an object");
        for (auto& [k, v] : value.items()) {
          require(v.is_string(), path_, ": __metadata__[\"", k, "\"] is not a string");
          metadata_[k] = v.get<std::string>();
        }
        continue;
      }
      const std::string where = path_ + ": tensor \"" + name + "\"";
      require(value.is_object(), where, ": entry is not an object");
      require(value.contains("dtype") && value["dtype"].is_string(), where, ": missing string field \"dtype\"");
      require(value.contains("shape") && value["shape"].is_array(), where, ": missing array field \"shape\"");
      require(value.contains("data_offsets") && value["data_offsets"].is_array() && value["data_offsets"].size() == 2,
              where, ": \"data_offsets\" must be an array [begin, end]");
      TensorEntry e;
      e.name = name;
      e.dtype = parse_dtype(value["dtype"].get<std::string>(), where);
      std::uint64_t numel = 1;
      for (auto& d : value["shape"]) {
        require(d.is_number_unsigned() || (d.is_number_integer() && d.get<std::int64_t>() >= 0), where,
                ": shape entries must be non-negative integers");
        const auto dim = d.get<std::uint64_t>();
        require(dim < (1ull << 40) && (dim == 0 || numel <= (1ull << 50) / dim), where, ": shape ", d.dump(),
                " is too large");
        numel *= dim;
        e.shape.push_back(static_cast<std::int64_t>(dim));
      }
      auto& off = value["data_offsets"];
      require(off[0].is_number_unsigned() && off[1].is_number_unsigned(), where,
              ": data_offsets must be non-negative integers");
      const auto begin = off[0].get<std::uint64_t>();
      const auto end = off[1].get<std::uint64_t>();
      require(begin <= end, where, ": data_offsets [", begin, ", ", end, "] has begin after end");
      require(end <= data_size, where, ": data_offsets [", begin, ", ", end, "] run past the data section (",
              data_size, " bytes)");
      const std::uint64_t expect = numel * size_of(e.dtype);
      require(end - begin == expect, where, ": data_offsets [", begin, ", ", end, "] hold ", end - begin,
              " bytes but dtype ", name_of(e.dtype), " x shape ", e.shape_str(), " needs ", expect);
      e.bytes = {data + begin, static_cast<std::size_t>(end - begin)};
      entries_.push_back(std::move(e));
    }
    std::sort(entries_.begin(), entries_.end(), [](const TensorEntry& a, const TensorEntry& b) {
      return a.bytes.data() != b.bytes.data() ? a.bytes.data() < b.bytes.data() : a.name < b.name;
    });
    for (std::size_t i = 1; i < entries_.size(); ++i) {
      const auto& a = entries_[i - 1];
      const auto& b = entries_[i];
      if (a.bytes.empty() || b.bytes.empty()) continue;
      require(a.bytes.data() + a.bytes.size() <= b.bytes.data(), path_, ": tensors \"", a.name, "\" and \"",
              b.name, "\" overlap");
    }
    std::sort(entries_.begin(), entries_.end(), [](const TensorEntry& a, const TensorEntry& b) { return a.name < b.name; });
  }

  std::string path_;
  int fd_ = -1;
  const std::byte* base_ = nullptr;
  std::size_t size_ = 0;
  std::vector<TensorEntry> entries_;
  std::map<std::string, std::string> metadata_;
};

//! Collects tensors, then writes one safetensors file (header padded to 8 bytes, data in order).
class SafetensorsWriter {
 public:
  //! Adds a tensor; the bytes are copied. `shape` numel x dtype size must equal bytes.size().
  void add(std::string name, DType dtype, std::vector<std::int64_t> shape, std::span<const std::byte> bytes) {
    std::int64_t numel = 1;
    for (auto d : shape) numel *= d;
    require(static_cast<std::size_t>(numel) * size_of(dtype) == bytes.size(), "SafetensorsWriter: tensor \"", name,
            "\" has ", bytes.size(), " bytes, its dtype and shape need ", static_cast<std::size_t>(numel) * size_of(dtype));
    for (auto& t : tensors_) require(t.name != name, "SafetensorsWriter: tensor \"", name, "\" added twice");
    tensors_.push_back({std::move(name), dtype, std::move(shape), {bytes.begin(), bytes.end()}});
  }
  template <class T>
  void add(std::string name, std::vector<std::int64_t> shape, std::span<const T> values) {
    add(std::move(name), dtype_of<T>(), std::move(shape), std::as_bytes(values));
  }
  //! Adds f32 values stored as `dtype` (F32, BF16 or F16), rounding to nearest even.
  void add_converted(std::string name, DType dtype, std::vector<std::int64_t> shape, std::span<const float> values) {
    std::vector<std::byte> bytes(values.size() * size_of(dtype));
    for (std::size_t i = 0; i < values.size(); ++i) {
      if (dtype == DType::f32) {
        std::memcpy(bytes.data() + 4 * i, &values[i], 4);
      } else if (dtype == DType::bf16) {
        const auto h = to_bf16(values[i]);
        std::memcpy(bytes.data() + 2 * i, &h.bits, 2);
      } else if (dtype == DType::f16) {
        const auto h = to_f16(values[i]);
        std::memcpy(bytes.data() + 2 * i, &h.bits, 2);
      } else {
        fail("SafetensorsWriter: cannot store floats as ", name_of(dtype));
      }
    }
    add(std::move(name), dtype, std::move(shape), bytes);
  }
  void set_metadata(std::string key, std::string value) { metadata_[std::move(key)] = std::move(value); }
  std::size_t size() const { return tensors_.size(); }

  //! Writes the file to a temporary name, then renames it over `path` (never a half-written file).
  void write(const std::filesystem::path& path) const {
    nlohmann::ordered_json header = nlohmann::ordered_json::object();
    if (!metadata_.empty()) header["__metadata__"] = metadata_;
    std::uint64_t offset = 0;
    for (auto& t : tensors_) {
      header[t.name] = {{"dtype", std::string(name_of(t.dtype))},
                        {"shape", t.shape},
                        {"data_offsets", {offset, offset + t.bytes.size()}}};
      offset += t.bytes.size();
    }
    std::string text = header.dump();
    while ((text.size() + 8) % 8 != 0) text += ' ';
    replace_file(
        path,
        [&](std::ofstream& out) {
          unsigned char len[8];
          std::uint64_t n = text.size();
          for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));
          out.write(reinterpret_cast<const char*>(len), 8);
          out.write(text.data(), static_cast<std::streamsize>(text.size()));
          for (auto& t : tensors_)
            out.write(reinterpret_cast<const char*>(t.bytes.data()), static_cast<std::streamsize>(t.bytes.size()));
        },
        std::ios::binary);
  }

 private:
  struct Pending {
    std::string name;
    DType dtype;
    std::vector<std::int64_t> shape;
    std::vector<std::byte> bytes;
  };
  std::vector<Pending> tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace blockdiff::io
