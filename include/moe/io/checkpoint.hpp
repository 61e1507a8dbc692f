// A checkpoint as the loaders read it: one safetensors file, or a Hugging Face sharded
// checkpoint (an index whose weight_map names the shard file of every tensor).
//
// Shards are opened when a tensor in them is first asked for, so loading one layer of a large
// model reads only the shards holding that layer. Every check of the index is made when it is
// opened; a shard is checked against the index when it is opened (docs/loaders.md#sharded-checkpoints).
#ifndef MOE_IO_CHECKPOINT_HPP
#define MOE_IO_CHECKPOINT_HPP

#include <moe/core/types.hpp>
#include <moe/io/error.hpp>
#include <moe/io/safetensors.hpp>

#include <nlohmann/json.hpp>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

namespace moe::io {

/// The index file name Hugging Face gives a sharded checkpoint, and the single file's name:
/// what Checkpoint::open looks for in a folder.
inline constexpr std::string_view sharded_index_name = "model.safetensors.index.json";
inline constexpr std::string_view single_file_name = "model.safetensors";

namespace detail {

/// An index is small (DeepSeek-V3's, 91,000 tensors, is 9 MB); the bound keeps a hostile file
/// from making the JSON parser take unbounded memory. A valid index nests two deep.
inline constexpr std::uintmax_t max_index_bytes = std::uintmax_t{100} << 20;
inline constexpr int max_index_depth = 8;

/// A parsed, validated index and the shards it names, opened on demand.
class ShardedIndex {
 public:
  struct Shard {
    std::string relative;                   ///< as the index names it (normalised)
    std::string display;                    ///< the index's folder / relative: the path opened, quoted in messages
    std::vector<const std::string*> listed;  ///< the weight_map's names in this shard (keys of weight_map_)
    std::unique_ptr<std::mutex> mutex = std::make_unique<std::mutex>();
    mutable std::unique_ptr<const SafetensorsFile> file;  ///< set once, under mutex
  };

  static std::shared_ptr<const ShardedIndex> open(const std::filesystem::path& path);

  [[nodiscard]] const std::string& display_name() const noexcept { return display_; }
  [[nodiscard]] const std::map<std::string, std::size_t, std::less<>>& weight_map() const noexcept {
    return weight_map_;
  }
  [[nodiscard]] const std::vector<Shard>& shards() const noexcept { return shards_; }
  [[nodiscard]] std::size_t shards_opened() const noexcept { return opened_.load(); }

  /// The shard, opened and checked against the index on first use. Thread-safe: shards open
  /// under their own mutex, so threads asking for different shards do not wait for each other.
  const SafetensorsFile& shard(std::size_t i) const;

 private:
  [[noreturn]] void throw_format(const std::string& message) const { throw FormatError(display_, message); }
  void check_shard(const Shard& shard, const SafetensorsFile& file) const;

  std::string display_;
  std::map<std::string, std::size_t, std::less<>> weight_map_;  // tensor -> index into shards_
  std::vector<Shard> shards_;
  mutable std::atomic<std::size_t> opened_{0};
};

}  // namespace detail

/// A read-only view of a checkpoint: one safetensors file or a sharded one. Every loader takes
/// one. A `const SafetensorsFile&` converts to it implicitly without a copy (the file must then
/// outlive the Checkpoint); a `SafetensorsFile&&` is moved in and owned. Copies share the state
/// (and the shards opened so far).
///
/// Thread safety: the const members may be called from several threads at once. A shard opens
/// under its own mutex; references into an opened shard stay valid while any copy lives.
class Checkpoint {
 public:
  /// A view of one file, which must outlive every copy of the Checkpoint.
  Checkpoint(const SafetensorsFile& file) noexcept : file_(&file) {}  // NOLINT(google-explicit-constructor)
  /// Takes the file: `load_mixtral<float>(SafetensorsFile::open(path), ...)`.
  Checkpoint(SafetensorsFile&& file)  // NOLINT(google-explicit-constructor)
      : owned_(std::make_shared<const SafetensorsFile>(std::move(file))), file_(owned_.get()) {}

  /// Opens a checkpoint:
  /// - a path ending in ".json": a sharded index (its shards are checked to exist, not read);
  /// - a folder: its model.safetensors.index.json, or else its model.safetensors;
  /// - any other path: one safetensors file, read and validated now.
  /// Throws Error when nothing can be read, FormatError for a malformed index or file.
  static Checkpoint open(const std::filesystem::path& path);

  [[nodiscard]] bool is_sharded() const noexcept { return sharded_ != nullptr; }
  /// The file, or the index of a sharded checkpoint: what messages about the whole checkpoint
  /// (a missing tensor) name.
  [[nodiscard]] const std::string& display_name() const noexcept {
    return sharded_ ? sharded_->display_name() : file_->display_name();
  }

  /// Whether the checkpoint lists this tensor. For a sharded one this is the index's answer;
  /// no shard is opened.
  [[nodiscard]] bool contains(std::string_view name) const {
    return sharded_ ? sharded_->weight_map().find(name) != sharded_->weight_map().end() : file_->contains(name);
  }
  /// The tensor names, sorted (the weight_map's keys for a sharded checkpoint).
  [[nodiscard]] std::vector<std::string> names() const;
  [[nodiscard]] std::size_t size() const noexcept {
    return sharded_ ? sharded_->weight_map().size() : file_->size();
  }
  /// Up to three listed names close to `name`, as SafetensorsFile::close_names.
  [[nodiscard]] std::vector<std::string> close_names(std::string_view name) const {
    return sharded_ ? close_names_impl(sharded_->weight_map(), name) : file_->close_names(name);
  }

  /// The file holding the tensor, by name as messages quote it: the shard the index lists it
  /// in, without opening it; display_name() for a name not listed, and for a single file.
  [[nodiscard]] const std::string& file_name(std::string_view tensor) const;
  /// The file holding the tensor, opened (and checked against the index) on first use.
  /// Throws MissingTensorError naming display_name() when the tensor is not listed.
  [[nodiscard]] const SafetensorsFile& file(std::string_view tensor) const;

  /// The number of shards the index names (1 for a single file), and how many are open.
  [[nodiscard]] std::size_t num_shards() const noexcept { return sharded_ ? sharded_->shards().size() : 1; }
  [[nodiscard]] std::size_t shards_opened() const noexcept { return sharded_ ? sharded_->shards_opened() : 1; }
  /// The shard files' paths as opened (the index's folder joined with the names it lists),
  /// ordered by the first tensor name (sorted) each holds; for a single file, its name.
  [[nodiscard]] std::vector<std::string> shard_names() const;

  // SafetensorsFile's readers, each reading from the file that holds the tensor.
  [[nodiscard]] const TensorInfo& info(std::string_view name) const { return file(name).info(name); }
  [[nodiscard]] std::span<const std::byte> raw(std::string_view name) const { return file(name).raw(name); }
  template <ReadableScalar S>
  [[nodiscard]] std::vector<S> read(std::string_view name) const {
    return file(name).template read<S>(name);
  }
  template <ReadableScalar S>
  [[nodiscard]] std::vector<S> read(std::string_view name, std::span<const std::int64_t> expected_shape) const {
    return file(name).template read<S>(name, expected_shape);
  }
  template <ReadableScalar S>
  [[nodiscard]] std::vector<S> read_leading(std::string_view name, std::span<const std::int64_t> expected_shape,
                                            Index first, Index count) const {
    return file(name).template read_leading<S>(name, expected_shape, first, count);
  }
  template <ReadableScalar S>
  [[nodiscard]] RowMatrix<S> read_matrix(std::string_view name, Index rows, Index cols) const {
    return file(name).template read_matrix<S>(name, rows, cols);
  }
  template <ReadableScalar S>
  [[nodiscard]] Vector<S> read_vector(std::string_view name, Index n) const {
    return file(name).template read_vector<S>(name, n);
  }
  template <ReadableScalar S>
  [[nodiscard]] RowMatrix<S> read_rows(std::string_view name, Index rows, Index cols) const {
    return file(name).template read_rows<S>(name, rows, cols);
  }

 private:
  Checkpoint() = default;
  static std::vector<std::string> close_names_impl(const std::map<std::string, std::size_t, std::less<>>& m,
                                                   std::string_view name) {
    return detail::close_names(m, name);
  }

  std::shared_ptr<const SafetensorsFile> owned_;             // set when the Checkpoint owns its file
  const SafetensorsFile* file_ = nullptr;                    // the single file, owned or not
  std::shared_ptr<const detail::ShardedIndex> sharded_;      // set for a sharded checkpoint
};

// ---------------------------------------------------------------------------------------------
// Bodies

namespace detail {

/// What Checkpoint::open and LazyCheckpoint::open read for `path`: a folder's
/// model.safetensors.index.json, else its model.safetensors; any other path as given.
inline std::filesystem::path checkpoint_target(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::is_directory(path, ec)) return path;
  std::filesystem::path index = path / sharded_index_name;  // not const: returned by move
  std::filesystem::path single = path / single_file_name;
  if (std::filesystem::exists(index, ec)) return index;
  if (std::filesystem::exists(single, ec)) return single;
  throw Error(path.string(), "cannot open: expected " + std::string(sharded_index_name) + " or " +
                                 std::string(single_file_name) + " in this folder, got neither");
}

/// Whether an index's shard name stays in the index's folder: relative, no root, no '..'.
inline bool shard_path_is_local(const std::string& s) {
  if (s.empty()) return false;
  const std::filesystem::path p(s);
  if (p.has_root_path() || p.is_absolute()) return false;
  for (const auto& part : p)
    if (part == "..") return false;
  const std::filesystem::path n = p.lexically_normal();
  return !n.empty() && n != "." && n.filename() != "";  // names a file, not the folder itself
}

inline std::shared_ptr<const ShardedIndex> ShardedIndex::open(const std::filesystem::path& path) {
  using nlohmann::json;
  auto index = std::make_shared<ShardedIndex>();
  ShardedIndex& x = *index;
  x.display_ = path.string();

  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    throw Error(x.display_, ec ? "cannot open: " + ec.message() : std::string("cannot open: not a regular file"));
  const std::uintmax_t size = std::filesystem::file_size(path, ec);
  if (ec) throw Error(x.display_, "cannot open: " + ec.message());
  if (size > max_index_bytes)
    x.throw_format("index: expected at most " + std::to_string(max_index_bytes) + " bytes (100 MiB), got " +
                   std::to_string(size));
  std::string text(static_cast<std::size_t>(size), '\0');
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(x.display_, "cannot open for reading");
  if (size > 0) in.read(text.data(), static_cast<std::streamsize>(size));
  if (static_cast<std::uintmax_t>(in.gcount()) != size)
    throw Error(x.display_, "cannot read: expected " + std::to_string(size) + " bytes, got " +
                                std::to_string(in.gcount()));

  if (auto bad = find_invalid_utf8(text))
    x.throw_format("index: expected UTF-8 text, got an invalid byte at byte " + std::to_string(*bad));
  if (auto at = find_too_deep(text, max_index_depth))
    x.throw_format("index: expected JSON nested at most " + std::to_string(max_index_depth) +
                   " deep, got deeper nesting at byte " + std::to_string(*at));

  // A tensor listed twice (perhaps under two shards) is refused as it is parsed.
  const json doc = parse_json_unique_keys(text, x.display_name(), "index");
  if (!doc.is_object())
    x.throw_format(std::string("index: expected a JSON object, got ") + doc.type_name() + " " + json_brief(doc));
  const auto wm = doc.find("weight_map");
  if (wm == doc.end())
    x.throw_format("weight_map: expected an object mapping tensor names to shard files, got none");
  if (!wm->is_object())
    x.throw_format("weight_map: expected an object mapping tensor names to shard files, got " + json_brief(*wm));

  const std::filesystem::path folder = path.parent_path();
  std::map<std::string, std::size_t, std::less<>> shard_of_relative;
  for (const auto& [name, value] : wm->items()) {
    const std::string where = "weight_map[" + in_quotes(name) + "]: ";
    if (!value.is_string()) x.throw_format(where + "expected a shard file name (a string), got " + json_brief(value));
    const std::string& raw = value.get_ref<const std::string&>();
    if (!shard_path_is_local(raw))
      x.throw_format(where + "expected a shard file in the index's folder (a relative path without '..'), got " +
                     in_quotes(raw));
    const std::string relative = std::filesystem::path(raw).lexically_normal().generic_string();
    auto [it, added] = shard_of_relative.try_emplace(relative, x.shards_.size());
    if (added) {
      Shard s;
      s.relative = relative;
      s.display = (folder / std::filesystem::path(relative)).string();
      x.shards_.push_back(std::move(s));
    }
    x.weight_map_.emplace(name, it->second);
  }
  for (const auto& [name, i] : x.weight_map_) x.shards_[i].listed.push_back(&name);

  // Existence now, contents on first use: a missing shard is a broken checkpoint whichever
  // layer is loaded, and a stat costs nothing beside reading gigabytes.
  for (const Shard& s : x.shards_) {
    const std::filesystem::file_status st = std::filesystem::status(std::filesystem::path(s.display), ec);
    if (std::filesystem::is_regular_file(st)) continue;
    const std::string got = st.type() == std::filesystem::file_type::not_found ? std::string("none")
                            : ec                                              ? ec.message()
                                                                              : std::string("something else (a folder?)");
    throw Error(x.display_, "shard " + in_quotes(s.relative) + " (weight_map[" + in_quotes(*s.listed.front()) +
                                "]): expected a file at " + in_quotes(s.display) + ", got " + got);
  }
  return index;
}

inline void ShardedIndex::check_shard(const Shard& shard, const SafetensorsFile& file) const {
  for (const std::string* name : shard.listed)
    if (!file.contains(*name))
      throw_format("weight_map[" + in_quotes(*name) + "]: expected this tensor in shard " + in_quotes(shard.relative) +
                   ", got none among its " + std::to_string(file.size()) + " tensors");
  // A tensor the index lists under another shard: two copies of one name, perhaps different;
  // which one a loader read would depend on the index alone, so the checkpoint is refused.
  // Tensors the index does not list at all are ignored: the weight_map is the table of contents.
  for (const std::string& name : file.names()) {
    const auto it = weight_map_.find(name);
    if (it != weight_map_.end() && &shards_[it->second] != &shard)
      throw_format("shard " + in_quotes(shard.relative) + ": tensor " + in_quotes(name) +
                   ": expected only tensors the weight_map lists in this shard, got one it lists in " +
                   in_quotes(shards_[it->second].relative));
  }
}

inline const SafetensorsFile& ShardedIndex::shard(std::size_t i) const {
  const Shard& s = shards_[i];
  const std::lock_guard<std::mutex> lock(*s.mutex);
  if (!s.file) {
    auto file = std::make_unique<const SafetensorsFile>(SafetensorsFile::open(std::filesystem::path(s.display)));
    check_shard(s, *file);
    s.file = std::move(file);  // the one write, under the shard's mutex
    opened_.fetch_add(1);
  }
  return *s.file;
}

}  // namespace detail

inline Checkpoint Checkpoint::open(const std::filesystem::path& path) {
  const std::filesystem::path target = detail::checkpoint_target(path);
  Checkpoint c;
  if (target.extension() == ".json") {
    c.sharded_ = detail::ShardedIndex::open(target);
  } else {
    c.owned_ = std::make_shared<const SafetensorsFile>(SafetensorsFile::open(target));
    c.file_ = c.owned_.get();
  }
  return c;
}

inline std::vector<std::string> Checkpoint::names() const {
  if (!sharded_) return file_->names();
  std::vector<std::string> out;
  out.reserve(sharded_->weight_map().size());
  for (const auto& [name, i] : sharded_->weight_map()) out.push_back(name);
  return out;
}

inline const std::string& Checkpoint::file_name(std::string_view tensor) const {
  if (!sharded_) return file_->display_name();
  const auto it = sharded_->weight_map().find(tensor);
  return it == sharded_->weight_map().end() ? sharded_->display_name() : sharded_->shards()[it->second].display;
}

inline const SafetensorsFile& Checkpoint::file(std::string_view tensor) const {
  if (!sharded_) return *file_;
  const auto& map = sharded_->weight_map();
  const auto it = map.find(tensor);
  if (it == map.end())
    throw MissingTensorError(sharded_->display_name(), std::string(tensor),
                             "expected a tensor of this name, got none among the checkpoint's " +
                                 std::to_string(map.size()) + " tensors" +
                                 detail::close_names_clause(close_names(tensor)));
  return sharded_->shard(it->second);
}

inline std::vector<std::string> Checkpoint::shard_names() const {
  if (!sharded_) return {file_->display_name()};
  std::vector<std::string> out;
  for (const auto& s : sharded_->shards()) out.push_back(s.display);
  return out;
}

}  // namespace moe::io

#endif  // MOE_IO_CHECKPOINT_HPP
