// Safetensors files read on demand: the header is read and validated when a file is opened,
// a tensor's bytes only when they are asked for, with pread at the offsets the header gives.
// What the on-demand expert store (include/moe/store/, docs/store.md) reads experts through.
//
// SafetensorsFile reads a whole file into memory; a shard of a large model is gigabytes of
// which one call needs a few experts. LazySafetensorsFile keeps the file descriptor and the
// parsed header only. Before every read it checks the file is still the one it opened: as long
// as the header says, and with the size and modification time it had (fstat), and still at its
// path (stat: same device and inode). So a file truncated, rewritten, renamed, removed or
// replaced after it was opened is a moe::io::Error naming the file and the tensor, never a
// short read or stale bytes (and, since nothing is memory-mapped, never SIGBUS).
#ifndef MOE_IO_LAZY_SAFETENSORS_HPP
#define MOE_IO_LAZY_SAFETENSORS_HPP

#include <moe/core/types.hpp>
#include <moe/io/checkpoint.hpp>
#include <moe/io/dtype.hpp>
#include <moe/io/error.hpp>
#include <moe/io/file_identity.hpp>
#include <moe/io/safetensors.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace moe::io {

/// One safetensors file whose header is in memory and whose tensors are read on request.
/// Thread-safe: every const member may be called from several threads at once (pread on one
/// descriptor has no shared file position).
class LazySafetensorsFile {
 public:
  /// Opens the file and reads and validates its header: the same checks SafetensorsFile makes
  /// (UTF-8, nesting depth, duplicate keys, dtypes, shapes, byte counts, ranges inside the data
  /// section and disjoint), with the data section's size taken from the file's size.
  /// Throws Error if the file cannot be opened or read, FormatError if it is malformed.
  static LazySafetensorsFile open(const std::filesystem::path& path);

  [[nodiscard]] const std::string& display_name() const noexcept { return state_->display; }
  [[nodiscard]] bool contains(std::string_view name) const { return state_->tensors.count(name) != 0; }
  /// Throws MissingTensorError naming the file, the tensor and a few close names.
  [[nodiscard]] const TensorInfo& info(std::string_view name) const;
  [[nodiscard]] std::vector<std::string> names() const;
  [[nodiscard]] std::size_t size() const noexcept { return state_->tensors.size(); }
  /// Where the data section starts (8 + header length) and the file size the header implies
  /// (data start + the furthest tensor end).
  [[nodiscard]] std::uint64_t data_offset() const noexcept { return state_->data_offset; }
  [[nodiscard]] std::uint64_t required_size() const noexcept { return state_->data_offset + state_->data_end; }

  /// Reads the tensor's stored bytes into out (out.size() must be info(name).nbytes()).
  /// Throws TensorError naming the file and tensor if the file is no longer the one opened
  /// (check_unchanged).
  void read_raw(const TensorInfo& t, std::span<std::byte> out) const;

  /// Throws TensorError naming the file and `tensor` unless the file is as it was opened: at
  /// least required_size() bytes ("file truncated"), the same size and modification and status
  /// change times ("file rewritten"), and its path still naming the same file ("file renamed or
  /// removed", "file replaced"). A rewrite within one tick of the file system's clock that keeps
  /// the size is the one change it cannot see (docs/store.md#faults).
  void check_unchanged(std::string_view tensor) const;

  /// Reads the tensor, converted to S as SafetensorsFile::read converts (F32/F64/F16/BF16 to
  /// float or double), after checking its shape is exactly `shape`, into out (row-major,
  /// numel elements). Returns the bytes read from the file.
  template <class S>
    requires std::is_floating_point_v<S>
  std::size_t read_into(std::string_view name, std::span<const std::int64_t> shape, S* out) const;

 private:
  struct State {
    std::string display;
    int fd = -1;
    std::uint64_t data_offset = 0;
    std::uint64_t data_end = 0;
    std::map<std::string, TensorInfo, std::less<>> tensors;
    detail::FileIdentity identity;  // what fstat said at open: check_unchanged compares against it
    State() = default;
    State(const State&) = delete;
    State& operator=(const State&) = delete;
    ~State() {
      if (fd >= 0) ::close(fd);
    }
  };
  void parse_header(std::string_view text, std::uint64_t data_size);
  [[noreturn]] void throw_format(const std::string& message) const { throw FormatError(state_->display, message); }
  std::shared_ptr<State> state_ = std::make_shared<State>();
};

/// A checkpoint whose tensors are read on demand: one safetensors file or a Hugging Face
/// sharded checkpoint. The index is read and validated by the same code as Checkpoint's
/// (every shard must exist); a shard's header is read when a tensor in it is first asked for,
/// and checked against the index (every tensor the index lists there is present, none it
/// lists elsewhere). Copies share the shards opened so far. Thread-safe.
class LazyCheckpoint {
 public:
  /// As Checkpoint::open: a ".json" index, a folder (its index, else its model.safetensors),
  /// or one file; no tensor data is read.
  static LazyCheckpoint open(const std::filesystem::path& path);

  [[nodiscard]] bool is_sharded() const noexcept { return index_ != nullptr; }
  [[nodiscard]] const std::string& display_name() const noexcept {
    return index_ ? index_->display_name() : single_->display_name();
  }
  [[nodiscard]] bool contains(std::string_view name) const {
    return index_ ? index_->weight_map().find(name) != index_->weight_map().end() : single_->contains(name);
  }
  /// The file holding the tensor, its header read on first use. Throws MissingTensorError
  /// naming the checkpoint when the tensor is not listed.
  [[nodiscard]] const LazySafetensorsFile& file(std::string_view name) const;
  [[nodiscard]] const TensorInfo& info(std::string_view name) const { return file(name).info(name); }
  /// How many shard headers have been read (1 for a single file).
  [[nodiscard]] std::size_t shards_opened() const;

  template <class S>
    requires std::is_floating_point_v<S>
  std::size_t read_into(std::string_view name, std::span<const std::int64_t> shape, S* out) const {
    return file(name).read_into<S>(name, shape, out);
  }

 private:
  struct Shards {
    std::mutex mutex;
    std::vector<std::unique_ptr<LazySafetensorsFile>> files;  // one per index shard, set once under mutex
  };
  std::shared_ptr<const LazySafetensorsFile> single_;
  std::shared_ptr<const detail::ShardedIndex> index_;
  std::shared_ptr<Shards> shards_;
};

// ---------------------------------------------------------------------------------------------
// Bodies

inline LazySafetensorsFile LazySafetensorsFile::open(const std::filesystem::path& path) {
  LazySafetensorsFile f;
  State& s = *f.state_;
  s.display = path.string();
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    throw Error(s.display, ec ? "cannot open: " + ec.message() : std::string("cannot open: not a regular file"));
  s.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (s.fd < 0) throw Error(s.display, std::string("cannot open for reading: ") + std::strerror(errno));
  struct stat st {};
  if (::fstat(s.fd, &st) != 0) throw Error(s.display, std::string("cannot stat: ") + std::strerror(errno));
  const auto size = static_cast<std::uint64_t>(st.st_size);
  s.identity = detail::FileIdentity::of(s.fd, path, s.display);
  if (size < 8)
    f.throw_format("header length: expected a file of at least 8 bytes (the length field), got " +
                   std::to_string(size) + " bytes");
  unsigned char len_bytes[8];
  if (::pread(s.fd, len_bytes, 8, 0) != 8) throw Error(s.display, "cannot read the header length");
  std::uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | len_bytes[i];  // little-endian
  if (header_len > detail::max_header_bytes)
    f.throw_format("header length: expected at most " + std::to_string(detail::max_header_bytes) +
                   " (100 MiB), got " + std::to_string(header_len));
  if (header_len > size - 8)
    f.throw_format("header length: expected at most " + std::to_string(size - 8) +
                   " (the bytes after the length field), got " + std::to_string(header_len));
  std::string text(static_cast<std::size_t>(header_len), '\0');
  std::size_t got = 0;
  while (got < text.size()) {
    const ssize_t r = ::pread(s.fd, text.data() + got, text.size() - got, static_cast<off_t>(8 + got));
    if (r <= 0) throw Error(s.display, "cannot read the header: expected " + std::to_string(header_len) + " bytes");
    got += static_cast<std::size_t>(r);
  }
  s.data_offset = 8 + header_len;
  f.parse_header(text, size - s.data_offset);
  return f;
}

inline void LazySafetensorsFile::parse_header(std::string_view text, std::uint64_t data_size) {
  detail::ParsedHeader h = detail::parse_safetensors_header(text, data_size, state_->display);
  state_->tensors = std::move(h.tensors);
  state_->data_end = h.data_end;
}

inline const TensorInfo& LazySafetensorsFile::info(std::string_view name) const {
  const auto it = state_->tensors.find(name);
  if (it != state_->tensors.end()) return it->second;
  throw MissingTensorError(state_->display, std::string(name),
                           "expected a tensor of this name, got none among the file's " +
                               std::to_string(state_->tensors.size()) + " tensors" +
                               detail::close_names_clause(detail::close_names(state_->tensors, name)));
}

inline std::vector<std::string> LazySafetensorsFile::names() const {
  std::vector<std::string> out;
  for (const auto& [name, t] : state_->tensors) out.push_back(name);
  return out;
}

inline void LazySafetensorsFile::check_unchanged(std::string_view tensor) const {
  // The whole data section the header describes, not only this tensor's end: a file that lost
  // its tail was rewritten or truncated, and what is left cannot be trusted either.
  state_->identity.check(state_->fd, state_->display, tensor, required_size());
}

inline void LazySafetensorsFile::read_raw(const TensorInfo& t, std::span<std::byte> out) const {
  const State& s = *state_;
  if (out.size() != t.nbytes())
    throw TensorError(s.display, t.name, "internal error: read_raw() into " + std::to_string(out.size()) +
                                             " bytes, the tensor has " + std::to_string(t.nbytes()));
  check_unchanged(t.name);
  std::size_t got = 0;
  const std::uint64_t at = s.data_offset + t.begin;
  while (got < out.size()) {
    const ssize_t r = ::pread(s.fd, out.data() + got, out.size() - got, static_cast<off_t>(at + got));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0)
      throw TensorError(s.display, t.name,
                        "cannot read: expected " + std::to_string(out.size()) + " bytes at offset " +
                            std::to_string(at) + ", got " + std::to_string(got) +
                            (r < 0 ? std::string(" (") + std::strerror(errno) + ")" : std::string()));
    got += static_cast<std::size_t>(r);
  }
  check_unchanged(t.name);  // and after: a change during the read leaves bytes of two versions
}

template <class S>
  requires std::is_floating_point_v<S>
std::size_t LazySafetensorsFile::read_into(std::string_view name, std::span<const std::int64_t> shape, S* out) const {
  const TensorInfo& t = info(name);
  if (!std::equal(t.shape.begin(), t.shape.end(), shape.begin(), shape.end()))
    throw TensorMismatchError(state_->display, t.name,
                              "expected shape " + detail::format_shape(shape) + ", got " + detail::format_shape(t.shape));
  detail::check_dtype_readable<S>(state_->display, t);
  const auto n = static_cast<std::size_t>(t.numel());
  if (t.dtype == detail::dtype_of<S>()) {  // the compute layout: straight into out
    read_raw(t, std::span<std::byte>(reinterpret_cast<std::byte*>(out), t.nbytes()));
    return t.nbytes();
  }
  std::vector<std::byte> raw(t.nbytes());
  read_raw(t, raw);
  // The conversions of SafetensorsFile::read, so a bank read here equals one read there.
  const auto same = [](auto v) { return static_cast<S>(v); };
  switch (t.dtype) {
    case DType::F32: detail::convert_elements<float>(raw.data(), out, n, same); break;
    case DType::F64: detail::convert_elements<double>(raw.data(), out, n, same); break;
    case DType::F16:
      detail::convert_elements<std::uint16_t>(raw.data(), out, n, [](std::uint16_t h) { return static_cast<S>(f16_to_float(h)); });
      break;
    case DType::BF16:
      detail::convert_elements<std::uint16_t>(raw.data(), out, n, [](std::uint16_t b) { return static_cast<S>(bf16_to_float(b)); });
      break;
    default:
      throw TensorMismatchError(state_->display, t.name, "internal error: no conversion from " + std::string(dtype_name(t.dtype)));
  }
  return t.nbytes();
}

inline LazyCheckpoint LazyCheckpoint::open(const std::filesystem::path& path) {
  const std::filesystem::path target = detail::checkpoint_target(path);
  LazyCheckpoint c;
  if (target.extension() == ".json") {
    c.index_ = detail::ShardedIndex::open(target);
    c.shards_ = std::make_shared<Shards>();
    c.shards_->files.resize(c.index_->shards().size());
  } else {
    c.single_ = std::make_shared<const LazySafetensorsFile>(LazySafetensorsFile::open(target));
  }
  return c;
}

inline const LazySafetensorsFile& LazyCheckpoint::file(std::string_view name) const {
  if (!index_) return *single_;
  const auto& wm = index_->weight_map();
  const auto it = wm.find(name);
  if (it == wm.end())
    throw MissingTensorError(index_->display_name(), std::string(name),
                             "expected a tensor of this name in the index's weight_map, got none among its " +
                                 std::to_string(wm.size()) + " tensors" +
                                 detail::close_names_clause(detail::close_names(wm, name)));
  const std::size_t i = it->second;
  const std::lock_guard<std::mutex> lock(shards_->mutex);
  auto& slot = shards_->files[i];
  if (!slot) {
    const auto& shard = index_->shards()[i];
    std::unique_ptr<LazySafetensorsFile> f;
    try {
      f = std::make_unique<LazySafetensorsFile>(LazySafetensorsFile::open(std::filesystem::path(shard.display)));
    } catch (const FormatError&) {
      throw;
    } catch (const Error& e) {  // gone since the index was read (removed, renamed): name the tensor too
      std::string why = e.what();
      const std::string lead = "moe::io: file '" + e.file() + "': ";
      if (why.rfind(lead, 0) == 0) why.erase(0, lead.size());
      throw TensorError(shard.display, std::string(name),
                        "expected the shard the index lists it in to open, got: " + why);
    }
    for (const std::string* listed : shard.listed)
      if (!f->contains(*listed))
        throw FormatError(index_->display_name(), "weight_map[" + detail::in_quotes(*listed) +
                                                      "]: expected this tensor in shard " +
                                                      detail::in_quotes(shard.relative) + ", got none among its " +
                                                      std::to_string(f->size()) + " tensors");
    for (const std::string& other : f->names()) {
      const auto o = wm.find(other);
      if (o != wm.end() && o->second != i)
        throw FormatError(index_->display_name(), "shard " + detail::in_quotes(shard.relative) + ": tensor " +
                                                      detail::in_quotes(other) +
                                                      ": expected only tensors the weight_map lists in this shard");
    }
    slot = std::move(f);
  }
  return *slot;
}

inline std::size_t LazyCheckpoint::shards_opened() const {
  if (!index_) return 1;
  const std::lock_guard<std::mutex> lock(shards_->mutex);
  return static_cast<std::size_t>(std::count_if(shards_->files.begin(), shards_->files.end(),
                                                [](const auto& f) { return f != nullptr; }));
}

}  // namespace moe::io

#endif  // MOE_IO_LAZY_SAFETENSORS_HPP
