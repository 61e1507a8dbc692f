// Reading and writing GGUF files (llama.cpp's format; docs/gguf.md), version 3 (and 2, whose
// layout is the same).
//
// A file is a header (magic "GGUF", version, tensor count, metadata count), typed metadata
// key-value pairs, tensor infos (name, dimensions, ggml type, offset), padding to the file's
// alignment, and the tensor data. GgufFile maps the file into memory and checks every count,
// length, type, dimension and offset against the bytes present before it returns, so nothing
// read afterwards can go out of bounds; tensors are then viewed in place (raw) or converted to
// float (to_float, to_matrix), quantized blocks dequantized by kernels/quant_blocks.hpp.
// GgufWriter builds files llama.cpp's reader accepts.
#ifndef MOE_IO_GGUF_HPP
#define MOE_IO_GGUF_HPP

#include "moe/core/error.hpp"
#include "moe/core/types.hpp"
#include "moe/io/error.hpp"
#include "moe/io/file_identity.hpp"
#include "moe/io/safetensors.hpp"
#include "moe/kernels/quant_blocks.hpp"
#include "moe/kernels/weight_types.hpp"

#if __has_include(<sys/mman.h>)
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#define MOE_IO_GGUF_MMAP 1
#else
#define MOE_IO_GGUF_MMAP 0
#endif

#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace moe::io {

// ---------------------------------------------------------------------------------------------
// Types

/// The metadata value types of the format (gguf_metadata_value_type), with their numbers.
enum class GgufType : std::uint32_t {
  U8 = 0,
  I8 = 1,
  U16 = 2,
  I16 = 3,
  U32 = 4,
  I32 = 5,
  F32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
  U64 = 10,
  I64 = 11,
  F64 = 12,
};

/// "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64".
[[nodiscard]] constexpr std::string_view gguf_type_name(GgufType t) noexcept {
  constexpr std::array<std::string_view, 13> names{"u8",     "i8",    "u16", "i16", "u32", "i32", "f32",
                                                   "bool",   "string", "array", "u64", "i64", "f64"};
  const auto i = static_cast<std::uint32_t>(t);
  return i < names.size() ? names[i] : std::string_view("unknown");
}

/// ggml's tensor types (enum ggml_type) with their numbers; the gaps are types ggml removed.
/// Every one of these is validated when a file is read (its block and byte sizes are known);
/// the converting readers handle F32, F16, BF16, Q8_0, Q4_0 and Q4_K, and raw() gives the
/// bytes of any.
enum class GgmlType : std::uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  IQ2_XXS = 16,
  IQ2_XS = 17,
  IQ3_XXS = 18,
  IQ1_S = 19,
  IQ4_NL = 20,
  IQ3_S = 21,
  IQ2_S = 22,
  IQ4_XS = 23,
  I8 = 24,
  I16 = 25,
  I32 = 26,
  I64 = 27,
  F64 = 28,
  IQ1_M = 29,
  BF16 = 30,
  TQ1_0 = 34,
  TQ2_0 = 35,
  MXFP4 = 39,
  NVFP4 = 40,
  Q1_0 = 41,
  Q2_0 = 42,
};

/// A ggml type's layout: a row of ne[0] elements is ne[0] / block blocks of bytes bytes each.
struct GgmlTypeInfo {
  GgmlType type;
  std::string_view name;
  std::uint32_t block;      ///< elements per block (1 for the plain types)
  std::uint32_t bytes;      ///< bytes per block
  bool to_float;            ///< the converting readers and GgufWriter's float path handle it
};

namespace detail {

// Block and byte sizes as ggml defines them (ggml/src/ggml-common.h, ggml.c type_traits).
inline constexpr std::array<GgmlTypeInfo, 35> ggml_types{{
    {GgmlType::F32, "F32", 1, 4, true},          {GgmlType::F16, "F16", 1, 2, true},
    {GgmlType::Q4_0, "Q4_0", 32, 18, true},      {GgmlType::Q4_1, "Q4_1", 32, 20, false},
    {GgmlType::Q5_0, "Q5_0", 32, 22, false},     {GgmlType::Q5_1, "Q5_1", 32, 24, false},
    {GgmlType::Q8_0, "Q8_0", 32, 34, true},      {GgmlType::Q8_1, "Q8_1", 32, 36, false},
    {GgmlType::Q2_K, "Q2_K", 256, 84, false},    {GgmlType::Q3_K, "Q3_K", 256, 110, false},
    {GgmlType::Q4_K, "Q4_K", 256, 144, true},    {GgmlType::Q5_K, "Q5_K", 256, 176, false},
    {GgmlType::Q6_K, "Q6_K", 256, 210, false},   {GgmlType::Q8_K, "Q8_K", 256, 292, false},
    {GgmlType::IQ2_XXS, "IQ2_XXS", 256, 66, false}, {GgmlType::IQ2_XS, "IQ2_XS", 256, 74, false},
    {GgmlType::IQ3_XXS, "IQ3_XXS", 256, 98, false}, {GgmlType::IQ1_S, "IQ1_S", 256, 50, false},
    {GgmlType::IQ4_NL, "IQ4_NL", 32, 18, false}, {GgmlType::IQ3_S, "IQ3_S", 256, 110, false},
    {GgmlType::IQ2_S, "IQ2_S", 256, 82, false},  {GgmlType::IQ4_XS, "IQ4_XS", 256, 136, false},
    {GgmlType::I8, "I8", 1, 1, false},           {GgmlType::I16, "I16", 1, 2, false},
    {GgmlType::I32, "I32", 1, 4, false},         {GgmlType::I64, "I64", 1, 8, false},
    {GgmlType::F64, "F64", 1, 8, false},         {GgmlType::IQ1_M, "IQ1_M", 256, 56, false},
    {GgmlType::BF16, "BF16", 1, 2, true},        {GgmlType::TQ1_0, "TQ1_0", 256, 54, false},
    {GgmlType::TQ2_0, "TQ2_0", 256, 66, false},  {GgmlType::MXFP4, "MXFP4", 32, 17, false},
    {GgmlType::NVFP4, "NVFP4", 64, 36, false},   {GgmlType::Q1_0, "Q1_0", 128, 18, false},
    {GgmlType::Q2_0, "Q2_0", 64, 18, false},
}};

}  // namespace detail

/// The layout of ggml type number `type`, or nullptr for a number ggml does not (or no longer)
/// define.
[[nodiscard]] constexpr const GgmlTypeInfo* ggml_type_info(std::uint32_t type) noexcept {
  for (const auto& t : detail::ggml_types)
    if (static_cast<std::uint32_t>(t.type) == type) return &t;
  return nullptr;
}

/// "Q4_K", "BF16", ...: the type's name as ggml's enum spells it.
[[nodiscard]] constexpr std::string_view ggml_type_name(GgmlType type) noexcept {
  const GgmlTypeInfo* t = ggml_type_info(static_cast<std::uint32_t>(type));
  return t ? t->name : std::string_view("unknown");
}

/// The C++ types a metadata value reads as, each naming one GgufType (std::string_view: a
/// view of the string in the mapped file, valid while the file or the value lives).
template <class T>
concept GgufReadable =
    std::same_as<T, std::uint8_t> || std::same_as<T, std::int8_t> || std::same_as<T, std::uint16_t> ||
    std::same_as<T, std::int16_t> || std::same_as<T, std::uint32_t> || std::same_as<T, std::int32_t> ||
    std::same_as<T, float> || std::same_as<T, bool> || std::same_as<T, std::string> ||
    std::same_as<T, std::string_view> || std::same_as<T, std::uint64_t> || std::same_as<T, std::int64_t> ||
    std::same_as<T, double>;

/// The C++ types GgufWriter stores a metadata value of.
template <class T>
concept GgufWritable = GgufReadable<T> && !std::same_as<T, std::string_view>;

/// The GgufType of a C++ type: uint8_t -> U8, ..., std::string -> STRING, double -> F64.
template <GgufReadable T>
[[nodiscard]] constexpr GgufType gguf_type_of() noexcept {
  if constexpr (std::same_as<T, std::uint8_t>) return GgufType::U8;
  else if constexpr (std::same_as<T, std::int8_t>) return GgufType::I8;
  else if constexpr (std::same_as<T, std::uint16_t>) return GgufType::U16;
  else if constexpr (std::same_as<T, std::int16_t>) return GgufType::I16;
  else if constexpr (std::same_as<T, std::uint32_t>) return GgufType::U32;
  else if constexpr (std::same_as<T, std::int32_t>) return GgufType::I32;
  else if constexpr (std::same_as<T, float>) return GgufType::F32;
  else if constexpr (std::same_as<T, bool>) return GgufType::BOOL;
  else if constexpr (std::same_as<T, std::uint64_t>) return GgufType::U64;
  else if constexpr (std::same_as<T, std::int64_t>) return GgufType::I64;
  else if constexpr (std::same_as<T, double>) return GgufType::F64;
  else return GgufType::STRING;
}

/// A metadata value of the wrong type for the read, or a key that is absent. key() names it.
class MetadataError : public Error {
 public:
  MetadataError(std::string file, std::string key, const std::string& message)
      : Error(std::move(file), "metadata '" + key + "': " + message), key_(std::move(key)) {}
  [[nodiscard]] const std::string& key() const noexcept { return key_; }

 private:
  std::string key_;
};

/// A requested metadata key is absent from the file.
class MissingMetadataError : public MetadataError {
 public:
  using MetadataError::MetadataError;
};

namespace detail {

/// The file's bytes: a read-only private mapping (GgufFile::open) or a vector (from_bytes).
struct GgufBytes {
  std::string display;
  std::vector<std::byte> owned;
  void* map = nullptr;
  std::size_t map_size = 0;
  const std::byte* data = nullptr;
  std::size_t size = 0;
  int fd = -1;            // kept open with a mapping, for the checks before each read
  FileIdentity identity;  // the mapped file as it was opened

  GgufBytes() = default;
  GgufBytes(const GgufBytes&) = delete;
  GgufBytes& operator=(const GgufBytes&) = delete;
  ~GgufBytes() {
#if MOE_IO_GGUF_MMAP
    if (map != nullptr) ::munmap(map, map_size);
    if (fd >= 0) ::close(fd);
#endif
  }
};

struct GgufState;

}  // namespace detail

/// One metadata key-value pair, validated. Scalars read with as<T>(), arrays with
/// as_array<T>(), where T must be the stored type exactly (a u32 is not read as a u64);
/// as_int() and as_double() accept any integer or float type. A wrong type throws
/// MetadataError naming the key and both types. Values view the file's bytes and keep them
/// alive.
class GgufValue {
 public:
  [[nodiscard]] const std::string& key() const noexcept { return key_; }
  /// The value's type; ARRAY for an array.
  [[nodiscard]] GgufType type() const noexcept { return type_; }
  /// An array's element type; the type itself for a scalar.
  [[nodiscard]] GgufType element_type() const noexcept { return element_type_; }
  [[nodiscard]] bool is_array() const noexcept { return type_ == GgufType::ARRAY; }
  /// An array's length; 1 for a scalar.
  [[nodiscard]] std::uint64_t size() const noexcept { return count_; }

  /// The scalar, when it is stored as T's GgufType.
  template <GgufReadable T>
  [[nodiscard]] T as() const;
  /// The array's elements, when they are stored as T's GgufType.
  template <GgufReadable T>
  [[nodiscard]] std::vector<T> as_array() const;
  /// A scalar of any integer type (u8 ... i64) whose value fits an int64.
  [[nodiscard]] std::int64_t as_int() const;
  /// A scalar f32 or f64.
  [[nodiscard]] double as_double() const;
  /// "u32 8", "string 'llama'", "array of 3 i32 [1, 2, 3]" (long strings and arrays cut short).
  [[nodiscard]] std::string describe() const;

 private:
  friend struct detail::GgufState;
  [[nodiscard]] std::string type_text() const;
  [[noreturn]] void throw_type(const std::string& expected) const;
  template <class T>
  [[nodiscard]] T element_at(std::size_t& pos) const;

  std::shared_ptr<const detail::GgufBytes> bytes_;
  std::string key_;
  GgufType type_ = GgufType::U8;
  GgufType element_type_ = GgufType::U8;
  std::uint64_t count_ = 1;
  std::size_t begin_ = 0;  // the value's bytes: the scalar, or an array's first element
};

/// One tensor info, validated. ne is in GGUF (ggml) order: ne[0] is the fastest-varying
/// dimension, the length of a row; a 2-D tensor with ne = [cols, rows] is the row-major
/// [rows, cols] matrix of PyTorch (a Linear weight [out, in] has ne = [in, out]), and a 3-D
/// expert stack ne = [d, ff, E] is [E, ff, d]. shape() gives that row-major order.
struct GgufTensorInfo {
  std::string name;
  GgmlType type = GgmlType::F32;
  std::vector<std::int64_t> ne;
  std::uint64_t offset = 0;  ///< from the start of the data section
  std::uint64_t nbytes = 0;

  [[nodiscard]] std::int64_t numel() const noexcept {
    std::int64_t n = 1;
    for (std::int64_t d : ne) n *= d;
    return n;
  }
  /// The dimensions slowest first (ne reversed): the row-major shape.
  [[nodiscard]] std::vector<std::int64_t> shape() const { return {ne.rbegin(), ne.rend()}; }
  /// ne[0], and the rows it makes: numel / ne[0].
  [[nodiscard]] std::int64_t cols() const noexcept { return ne.empty() ? 0 : ne[0]; }
  [[nodiscard]] std::int64_t rows() const noexcept { return ne.empty() ? 0 : numel() / ne[0]; }
};

namespace detail {

struct GgufState {
  std::shared_ptr<const GgufBytes> bytes;
  std::uint32_t version = 3;
  std::uint32_t alignment = 32;
  std::size_t data_offset = 0;
  std::vector<GgufValue> metadata;                          // file order
  std::map<std::string, std::size_t, std::less<>> key_index;
  std::vector<GgufTensorInfo> tensors;                      // file order
  std::map<std::string, std::size_t, std::less<>> tensor_index;

  void parse();
};

}  // namespace detail

class GgufFile {
 public:
  /// Maps the file read-only and validates it (docs/gguf.md#validation). Throws Error if it
  /// cannot be opened or mapped, FormatError if it is malformed. The mapping lives as long as
  /// the GgufFile, its copies and the values taken from it. A mapped file that changes would
  /// fault (SIGBUS) or give other bytes on access: raw(), to_float() and to_matrix() first check
  /// that the file is still the one mapped (size, times, path; io/file_identity.hpp) and throw
  /// TensorError naming the file and tensor if not, and to_float checks again after reading.
  static GgufFile open(const std::filesystem::path& path);
  /// As open, for bytes already in memory; display_name stands for the file in messages.
  static GgufFile from_bytes(std::vector<std::byte> bytes, std::string display_name = "<memory>");

  [[nodiscard]] const std::string& display_name() const noexcept { return state_->bytes->display; }
  [[nodiscard]] std::uint32_t version() const noexcept { return state_->version; }
  /// general.alignment, or 32 when the file has none.
  [[nodiscard]] std::uint32_t alignment() const noexcept { return state_->alignment; }
  /// Where the data section starts, in bytes from the start of the file.
  [[nodiscard]] std::size_t data_offset() const noexcept { return state_->data_offset; }
  /// The whole file as mapped.
  [[nodiscard]] std::span<const std::byte> bytes() const noexcept { return {state_->bytes->data, state_->bytes->size}; }

  // Metadata.

  /// Every key-value pair, in file order.
  [[nodiscard]] const std::vector<GgufValue>& metadata() const noexcept { return state_->metadata; }
  [[nodiscard]] bool has(std::string_view key) const { return state_->key_index.count(key) != 0; }
  /// The value of key, or nullptr when the file has none.
  [[nodiscard]] const GgufValue* find(std::string_view key) const;
  /// The value of key; throws MissingMetadataError when the file has none.
  [[nodiscard]] const GgufValue& value(std::string_view key) const;
  /// value(key).as<T>(): throws MissingMetadataError, or MetadataError for another type.
  template <GgufReadable T>
  [[nodiscard]] T get(std::string_view key) const {
    return value(key).as<T>();
  }
  /// get<T>(key), or fallback when the key is absent (a present key of another type throws).
  template <GgufReadable T>
  [[nodiscard]] T get_or(std::string_view key, T fallback) const {
    const GgufValue* v = find(key);
    return v ? v->as<T>() : fallback;
  }
  /// value(key).as_array<T>().
  template <GgufReadable T>
  [[nodiscard]] std::vector<T> get_array(std::string_view key) const {
    return value(key).as_array<T>();
  }
  /// value(key).as_int(): any integer type (counts are u32 in some files, u64 in others).
  [[nodiscard]] std::int64_t get_int(std::string_view key) const { return value(key).as_int(); }

  // Tensors.

  [[nodiscard]] std::size_t size() const noexcept { return state_->tensors.size(); }
  [[nodiscard]] bool contains(std::string_view name) const { return state_->tensor_index.count(name) != 0; }
  /// Throws MissingTensorError naming the tensor and a few close names.
  [[nodiscard]] const GgufTensorInfo& info(std::string_view name) const;
  /// Every tensor info, in file order.
  [[nodiscard]] const std::vector<GgufTensorInfo>& tensors() const noexcept { return state_->tensors; }
  /// Tensor names, in file order.
  [[nodiscard]] std::vector<std::string> names() const;
  /// Up to three present names close to `name` (as SafetensorsFile::close_names).
  [[nodiscard]] std::vector<std::string> close_names(std::string_view name) const;
  /// The tensor's bytes as stored, any type: little-endian, rows of blocks.
  [[nodiscard]] std::span<const std::byte> raw(std::string_view name) const;
  /// Every element as float, in storage order (ne[0] fastest, so row-major in shape()).
  /// F32 and F16, BF16 exactly; Q8_0, Q4_0, Q4_K dequantized by their definitions. Any other
  /// type throws TensorMismatchError naming the type.
  [[nodiscard]] std::vector<float> to_float(std::string_view name) const;
  /// to_float as a row-major [rows(), cols()] matrix: ne[0] columns, the other dimensions
  /// flattened into rows (an expert stack ne = [d, ff, E] reads as [E * ff, d]).
  [[nodiscard]] RowMatrix<float> to_matrix(std::string_view name) const;
  /// As to_matrix, after checking that ne[0] == cols and that the other dimensions multiply
  /// to rows (rows = -1 takes any); throws TensorMismatchError otherwise.
  [[nodiscard]] RowMatrix<float> to_matrix(std::string_view name, Index rows, Index cols) const;

 private:
  explicit GgufFile(std::shared_ptr<const detail::GgufState> s) : state_(std::move(s)) {}
  void require_float(const GgufTensorInfo& t) const;
  /// Throws TensorError naming the file and tensor when the mapped file changed since open.
  void check_unchanged(std::string_view tensor) const {
    const detail::GgufBytes& b = *state_->bytes;
    if (b.fd >= 0) b.identity.check(b.fd, b.display, tensor, b.size);
  }
  void convert_into(const GgufTensorInfo& t, float* out) const;
  void convert_mapped(const GgufTensorInfo& t, float* out) const;
  std::shared_ptr<const detail::GgufState> state_;
};

/// Builds a GGUF file (version 3): metadata in the order set, tensors in the order added, each
/// at an offset aligned to general.alignment (32 unless set), the data section and every
/// tensor padded with zeros to it, as llama.cpp's writer lays files out and its reader
/// requires.
class GgufWriter {
 public:
  /// Sets key to a scalar of T's type (uint32_t -> U32, double -> F64, std::string -> STRING,
  /// ...), replacing an earlier value of the key in its place. general.alignment must be a
  /// uint32_t power of two. Throws std::invalid_argument for an empty key, one longer than
  /// 65535 bytes or not UTF-8.
  template <GgufWritable T>
  GgufWriter& set(std::string key, T value);
  GgufWriter& set(std::string key, const char* value) { return set(std::move(key), std::string(value)); }
  /// Sets key to an array of T's type.
  template <GgufWritable T>
  GgufWriter& set_array(std::string key, const std::vector<T>& values);

  /// Adds a tensor of any ggml type from its bytes (rows of blocks, little-endian). ne is in
  /// GGUF order (ne[0] the row length). Throws std::invalid_argument for a name empty,
  /// repeated, longer than 63 bytes (llama.cpp's limit) or not UTF-8; 0 or more than 4
  /// dimensions; a dimension < 1; ne[0] not a multiple of the type's block; an element count
  /// past 2^63; a byte count other than the shape's.
  GgufWriter& add_tensor(std::string name, GgmlType type, std::vector<std::int64_t> ne, std::vector<std::byte> bytes);
  /// Adds a tensor from float values in storage order, converted to F32, F16, BF16 (rounded
  /// to nearest even) or quantized to Q8_0, Q4_0, Q4_K (kernels/quant_blocks.hpp). Throws as
  /// the raw overload, for another type, for values.size() other than the element count, and
  /// for values a quantizer refuses (NaN, inf, scales past fp16).
  GgufWriter& add_tensor(std::string name, GgmlType type, std::vector<std::int64_t> ne, std::span<const float> values);

  [[nodiscard]] std::uint32_t alignment() const noexcept { return alignment_; }
  /// The file.
  [[nodiscard]] std::vector<std::byte> to_bytes() const;
  /// Writes to_bytes() to path; throws Error when the file cannot be written.
  void save(const std::filesystem::path& path) const;

 private:
  struct Entry {
    std::string key;
    std::vector<std::byte> encoded;  // type (and element type, length) and value
  };
  struct Tensor {
    std::string name;
    GgmlType type;
    std::vector<std::int64_t> ne;
    std::vector<std::byte> bytes;
  };
  GgufWriter& put(std::string key, std::vector<std::byte> encoded, std::string_view where);
  void check_tensor(const std::string& name, GgmlType type, const std::vector<std::int64_t>& ne,
                    std::uint64_t& numel, std::string_view where) const;

  std::vector<Entry> metadata_;
  std::vector<Tensor> tensors_;
  std::uint32_t alignment_ = 32;
};

// =============================================================================================
// Bodies

namespace detail {

inline constexpr std::uint64_t gguf_max_key_bytes = 65535;     // the spec's bound on a key
inline constexpr std::uint64_t gguf_max_name_bytes = 64;       // the spec's bound on a tensor name
inline constexpr std::uint64_t gguf_writer_max_name_bytes = 63;  // llama.cpp's (GGML_MAX_NAME - 1)
inline constexpr std::uint64_t gguf_min_kv_bytes = 8 + 4 + 1;  // key length, value type, a u8
inline constexpr std::uint64_t gguf_min_tensor_info_bytes = 8 + 4 + 8 + 4 + 8;  // one dimension

/// Bytes of one scalar of t; 0 for STRING and ARRAY (variable) and for numbers past 12.
constexpr std::size_t gguf_scalar_size(GgufType t) noexcept {
  switch (t) {
    case GgufType::U8: case GgufType::I8: case GgufType::BOOL: return 1;
    case GgufType::U16: case GgufType::I16: return 2;
    case GgufType::U32: case GgufType::I32: case GgufType::F32: return 4;
    case GgufType::U64: case GgufType::I64: case GgufType::F64: return 8;
    default: return 0;
  }
}

inline std::string gguf_type_list() {
  return "0-12 (u8, i8, u16, i16, u32, i32, f32, bool, string, array, u64, i64, f64)";
}

inline std::string ggml_type_list() {
  std::string s;
  for (const auto& t : ggml_types) s += (s.empty() ? "" : ", ") + std::to_string(static_cast<std::uint32_t>(t.type));
  return s;
}

inline std::string ggml_type_text(GgmlType t) {
  return std::string(ggml_type_name(t)) + " (type " + std::to_string(static_cast<std::uint32_t>(t)) + ")";
}

inline std::string ne_text(const std::vector<std::int64_t>& ne) { return "ne " + format_shape(ne); }

/// A text for a message: printable ASCII kept, anything else as \xNN, cut at 60 characters.
inline std::string printable(std::string_view s) {
  std::string out;
  for (std::size_t i = 0; i < s.size() && out.size() < 60; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7F) {
      out.push_back(static_cast<char>(c));
    } else {
      constexpr char hexdigits[] = "0123456789abcdef";
      out += "\\x";
      out.push_back(hexdigits[c >> 4]);
      out.push_back(hexdigits[c & 15]);
    }
  }
  if (out.size() >= 60 && s.size() > 60) out += "...";
  return out;
}

/// Reads the file front to back; every read checks the bytes are there first.
class GgufCursor {
 public:
  explicit GgufCursor(const GgufBytes& b) : b_(b) {}

  [[nodiscard]] std::size_t pos() const noexcept { return pos_; }
  [[nodiscard]] std::size_t left() const noexcept { return b_.size - pos_; }

  [[noreturn]] void fail(const std::string& message) const { throw FormatError(b_.display, message); }

  void need(std::size_t n, const std::string& what) const {
    if (left() < n)
      fail(what + ": expected " + std::to_string(n) + " bytes at byte " + std::to_string(pos_) + ", got " +
           std::to_string(left()) + " (the file ends)");
  }

  template <class T>
  T read(const std::string& what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, b_.data + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }

  /// A string's length field and bytes; returns the view and leaves the cursor after it.
  std::string_view read_string(const std::string& what) {
    const auto len = read<std::uint64_t>(what + " length");
    if (len > left())
      fail(what + " length: expected at most " + std::to_string(left()) + " (the bytes left in the file), got " +
           std::to_string(len));
    const std::string_view s(reinterpret_cast<const char*>(b_.data + pos_), static_cast<std::size_t>(len));
    pos_ += static_cast<std::size_t>(len);
    return s;
  }

  void skip(std::size_t n) { pos_ += n; }

 private:
  const GgufBytes& b_;
  std::size_t pos_ = 0;
};

inline void GgufState::parse() {
  const GgufBytes& b = *bytes;
  GgufCursor c(b);
  const auto fail = [&](const std::string& m) { c.fail(m); };

  // Header.
  if (b.size < 4)
    fail("magic: expected the 4 bytes 'GGUF', got a file of " + std::to_string(b.size) + " bytes");
  const std::string_view magic(reinterpret_cast<const char*>(b.data), 4);
  if (magic != "GGUF") fail("magic: expected 'GGUF', got '" + printable(magic) + "'");
  c.skip(4);
  version = c.read<std::uint32_t>("version");
  if (version != 3 && version != 2) {
    std::string why;
    if (version == 1) why = " (version 1, with 32-bit counts, is not read)";
    else if (version != 0 && (version & 0xFFFFu) == 0) why = " (a big-endian file? only little-endian files are read)";
    fail("version: expected 2 or 3, got " + std::to_string(version) + why);
  }
  const auto n_tensors = c.read<std::uint64_t>("tensor_count");
  const auto n_kv = c.read<std::uint64_t>("metadata_kv_count");
  // Every pair and every tensor info takes some bytes: counts the rest of the file cannot hold
  // are refused before anything is sized by them.
  const std::uint64_t rest = c.left();
  if (n_kv > rest / gguf_min_kv_bytes)
    fail("metadata_kv_count: expected at most " + std::to_string(rest / gguf_min_kv_bytes) + " (" +
         std::to_string(rest) + " bytes left, 13 the smallest pair), got " + std::to_string(n_kv));
  if (n_tensors > (rest - n_kv * gguf_min_kv_bytes) / gguf_min_tensor_info_bytes)
    fail("tensor_count: expected at most " +
         std::to_string((rest - n_kv * gguf_min_kv_bytes) / gguf_min_tensor_info_bytes) + " (" +
         std::to_string(rest) + " bytes left, " + std::to_string(n_kv) +
         " pairs of at least 13, tensor infos of at least 32), got " + std::to_string(n_tensors));

  // Metadata.
  metadata.reserve(static_cast<std::size_t>(n_kv));
  for (std::uint64_t i = 0; i < n_kv; ++i) {
    const std::string where = "metadata[" + std::to_string(i) + "] key";
    const std::string_view key = c.read_string(where);
    if (key.empty()) fail(where + ": expected a non-empty string, got an empty one");
    if (key.size() > gguf_max_key_bytes)
      fail(where + ": expected at most 65535 bytes, got " + std::to_string(key.size()));
    if (find_invalid_utf8(key)) fail(where + ": expected UTF-8 text, got '" + printable(key) + "'");
    const std::string field = "metadata '" + std::string(key) + "'";
    if (const auto it = key_index.find(key); it != key_index.end())
      fail(field + ": expected each key once, got it twice (pairs " + std::to_string(it->second) + " and " +
           std::to_string(i) + ")");

    GgufValue v;
    v.bytes_ = bytes;
    v.key_ = std::string(key);
    const auto type = c.read<std::uint32_t>(field + " value type");
    if (type > 12) fail(field + " value type: expected " + gguf_type_list() + ", got " + std::to_string(type));
    v.type_ = v.element_type_ = static_cast<GgufType>(type);
    std::uint64_t count = 1;
    if (v.type_ == GgufType::ARRAY) {
      const auto et = c.read<std::uint32_t>(field + " array element type");
      if (et > 12)
        fail(field + " array element type: expected " + gguf_type_list() + ", got " + std::to_string(et));
      if (et == static_cast<std::uint32_t>(GgufType::ARRAY))
        fail(field + " array element type: expected a scalar or string type (arrays of arrays are not read, as "
                     "llama.cpp reads none), got 9 (array)");
      v.element_type_ = static_cast<GgufType>(et);
      count = c.read<std::uint64_t>(field + " array length");
      const std::size_t min_size = v.element_type_ == GgufType::STRING ? 8 : gguf_scalar_size(v.element_type_);
      if (count > c.left() / min_size)
        fail(field + " array length: expected at most " + std::to_string(c.left() / min_size) + " (" +
             std::to_string(c.left()) + " bytes left, " + std::to_string(min_size) + " per " +
             std::string(gguf_type_name(v.element_type_)) + "), got " + std::to_string(count));
    }
    v.count_ = count;
    v.begin_ = c.pos();
    const std::string what = field + (v.is_array() ? " element" : " value");
    if (v.element_type_ == GgufType::STRING) {
      for (std::uint64_t k = 0; k < count; ++k) (void)c.read_string(what);
    } else {
      const std::size_t size = gguf_scalar_size(v.element_type_);
      c.need(static_cast<std::size_t>(count) * size, what);
      if (v.element_type_ == GgufType::BOOL)
        for (std::uint64_t k = 0; k < count; ++k) {
          const auto byte = static_cast<unsigned>(b.data[c.pos() + k]);
          if (byte > 1)
            fail(what + ": expected a bool (0 or 1), got " + std::to_string(byte) +
                 (v.is_array() ? " at index " + std::to_string(k) : std::string()));
        }
      c.skip(static_cast<std::size_t>(count) * size);
    }
    key_index.emplace(v.key_, metadata.size());
    metadata.push_back(std::move(v));
  }

  if (const auto it = key_index.find("general.alignment"); it != key_index.end()) {
    const GgufValue& a = metadata[it->second];
    if (a.type() != GgufType::U32)
      fail("metadata 'general.alignment': expected a value of type u32, got " + a.type_text());
    alignment = a.as<std::uint32_t>();
    if (alignment == 0 || (alignment & (alignment - 1)) != 0)
      fail("metadata 'general.alignment': expected a power of two, got " + std::to_string(alignment));
  }

  // Tensor infos.
  tensors.reserve(static_cast<std::size_t>(n_tensors));
  for (std::uint64_t i = 0; i < n_tensors; ++i) {
    const std::string where = "tensor info " + std::to_string(i) + " name";
    const std::string_view name = c.read_string(where);
    if (name.empty()) fail(where + ": expected a non-empty string, got an empty one");
    if (name.size() > gguf_max_name_bytes)
      fail(where + ": expected at most 64 bytes, got " + std::to_string(name.size()) + " ('" + printable(name) + "')");
    if (find_invalid_utf8(name)) fail(where + ": expected UTF-8 text, got '" + printable(name) + "'");
    const std::string field = "tensor '" + std::string(name) + "'";
    if (const auto it = tensor_index.find(name); it != tensor_index.end())
      fail(field + ": expected each name once, got it twice (tensor infos " + std::to_string(it->second) + " and " +
           std::to_string(i) + ")");

    GgufTensorInfo t;
    t.name = std::string(name);
    const auto n_dims = c.read<std::uint32_t>(field + " n_dims");
    if (n_dims < 1 || n_dims > 4) fail(field + " n_dims: expected 1 to 4, got " + std::to_string(n_dims));
    for (std::uint32_t d = 0; d < n_dims; ++d) {
      const std::string dim = field + " ne[" + std::to_string(d) + "]";
      const auto n = c.read<std::uint64_t>(dim);
      if (n < 1 || n > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
        fail(dim + ": expected 1 to 2^63 - 1, got " + std::to_string(n));
      t.ne.push_back(static_cast<std::int64_t>(n));
    }
    std::uint64_t numel = 1;
    for (const std::int64_t n : t.ne)
      if (!checked_mul(numel, static_cast<std::uint64_t>(n), numel) ||
          numel > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
        fail(field + ": expected an element count below 2^63, got " + ne_text(t.ne) + ", which overflows");
    const auto type = c.read<std::uint32_t>(field + " type");
    const GgmlTypeInfo* ti = ggml_type_info(type);
    if (ti == nullptr)
      fail(field + " type: expected a ggml type (" + ggml_type_list() + "), got " + std::to_string(type));
    t.type = ti->type;
    if (static_cast<std::uint64_t>(t.ne[0]) % ti->block != 0)
      fail(field + " ne[0]: expected a multiple of " + std::to_string(ti->block) + " (the block of " +
           std::string(ti->name) + "), got " + std::to_string(t.ne[0]));
    if (!checked_mul(numel / ti->block, ti->bytes, t.nbytes))
      fail(field + ": expected a byte count below 2^64, got " + ne_text(t.ne) + " of " + std::string(ti->name) +
           ", which overflows");
    t.offset = c.read<std::uint64_t>(field + " offset");
    tensor_index.emplace(t.name, tensors.size());
    tensors.push_back(std::move(t));
  }

  // Data section: after the infos, padded to the alignment.
  const std::uint64_t end_of_infos = c.pos();
  const std::uint64_t start = (end_of_infos + alignment - 1) / alignment * alignment;
  if (start > b.size) {
    if (!tensors.empty())
      fail("data section: expected it to start within the file, at byte " + std::to_string(start) +
           " (the tensor infos end at byte " + std::to_string(end_of_infos) + ", padded to the alignment " +
           std::to_string(alignment) + "), got a file of " + std::to_string(b.size) + " bytes");
    data_offset = b.size;
  } else {
    data_offset = static_cast<std::size_t>(start);
  }
  const std::uint64_t data_size = b.size - data_offset;
  for (const GgufTensorInfo& t : tensors) {
    const std::string field = "tensor '" + t.name + "'";
    if (t.offset % alignment != 0)
      fail(field + " offset: expected a multiple of the alignment " + std::to_string(alignment) + ", got " +
           std::to_string(t.offset));
    if (t.offset > data_size || t.nbytes > data_size - t.offset)
      fail(field + " data: expected offset + size <= " + std::to_string(data_size) + " (the data section's size), got " +
           std::to_string(t.offset) + " + " + std::to_string(t.nbytes) + " (" + ne_text(t.ne) + " of " +
           std::string(ggml_type_name(t.type)) + ")");
  }
  // Overlap: in offset order, each range must start at or after the furthest end so far (every
  // range is non-empty: dimensions are >= 1).
  std::vector<const GgufTensorInfo*> order;
  order.reserve(tensors.size());
  for (const GgufTensorInfo& t : tensors) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](const GgufTensorInfo* x, const GgufTensorInfo* y) {
    return std::tie(x->offset, x->nbytes, x->name) < std::tie(y->offset, y->nbytes, y->name);
  });
  const GgufTensorInfo* reach = nullptr;
  for (const GgufTensorInfo* t : order) {
    if (reach && t->offset < reach->offset + reach->nbytes)
      fail("tensor '" + t->name + "' data: expected a byte range disjoint from every other tensor, got [" +
           std::to_string(t->offset) + ", " + std::to_string(t->offset + t->nbytes) + ") overlapping tensor '" +
           reach->name + "' [" + std::to_string(reach->offset) + ", " + std::to_string(reach->offset + reach->nbytes) +
           ")");
    if (!reach || t->offset + t->nbytes > reach->offset + reach->nbytes) reach = t;
  }
}

/// n elements of a block format at src (any alignment) to float: blocks copied to an aligned
/// buffer a few at a time, then dequantized.
template <class Block, class Dequantize>
void dequantize_unaligned(const std::byte* src, float* out, std::size_t n, Dequantize dequantize) {
  constexpr std::size_t per = kernels::block_elements<Block>;
  constexpr std::size_t chunk = 32;
  Block buf[chunk];
  std::size_t done = 0;
  while (done < n) {
    const std::size_t blocks = std::min(chunk, (n - done) / per);
    std::memcpy(static_cast<void*>(buf), src + done / per * sizeof(Block), blocks * sizeof(Block));
    dequantize(buf, out + done, blocks * per);
    done += blocks * per;
  }
}

inline void append_bytes(std::vector<std::byte>& out, const void* p, std::size_t n) {
  const auto* b = static_cast<const std::byte*>(p);
  out.insert(out.end(), b, b + n);
}

template <class T>
void append_value(std::vector<std::byte>& out, const T& v) {
  if constexpr (std::same_as<T, std::string>) {
    const std::uint64_t len = v.size();
    append_bytes(out, &len, 8);
    append_bytes(out, v.data(), v.size());
  } else if constexpr (std::same_as<T, bool>) {
    const std::uint8_t byte = v ? 1 : 0;
    append_bytes(out, &byte, 1);
  } else {
    append_bytes(out, &v, sizeof(T));
  }
}

}  // namespace detail

// ---------------------------------------------------------------------------------------------
// GgufValue

inline std::string GgufValue::type_text() const {
  if (!is_array()) return std::string(gguf_type_name(type_));
  return "an array of " + std::string(gguf_type_name(element_type_));
}

inline void GgufValue::throw_type(const std::string& expected) const {
  throw MetadataError(bytes_->display, key_, "expected " + expected + ", got " + type_text());
}

template <class T>
T GgufValue::element_at(std::size_t& pos) const {
  const std::byte* p = bytes_->data + pos;
  if constexpr (std::same_as<T, std::string> || std::same_as<T, std::string_view>) {
    std::uint64_t len = 0;
    std::memcpy(&len, p, 8);  // validated when the file was read
    pos += 8 + static_cast<std::size_t>(len);
    return T(reinterpret_cast<const char*>(p + 8), static_cast<std::size_t>(len));
  } else if constexpr (std::same_as<T, bool>) {
    pos += 1;
    return *p != std::byte{0};
  } else {
    T v;
    std::memcpy(&v, p, sizeof(T));
    pos += sizeof(T);
    return v;
  }
}

template <GgufReadable T>
T GgufValue::as() const {
  if (is_array() || type_ != gguf_type_of<T>()) throw_type("a value of type " + std::string(gguf_type_name(gguf_type_of<T>())));
  std::size_t pos = begin_;
  return element_at<T>(pos);
}

template <GgufReadable T>
std::vector<T> GgufValue::as_array() const {
  if (!is_array() || element_type_ != gguf_type_of<T>())
    throw_type("an array of " + std::string(gguf_type_name(gguf_type_of<T>())));
  std::vector<T> out;
  out.reserve(static_cast<std::size_t>(count_));  // bounded by the file's size when it was read
  std::size_t pos = begin_;
  for (std::uint64_t i = 0; i < count_; ++i) out.push_back(element_at<T>(pos));
  return out;
}

inline std::int64_t GgufValue::as_int() const {
  const std::string expected = "an integer (u8, i8, u16, i16, u32, i32, u64, i64)";
  if (is_array()) throw_type(expected);
  switch (type_) {
    case GgufType::U8: return as<std::uint8_t>();
    case GgufType::I8: return as<std::int8_t>();
    case GgufType::U16: return as<std::uint16_t>();
    case GgufType::I16: return as<std::int16_t>();
    case GgufType::U32: return as<std::uint32_t>();
    case GgufType::I32: return as<std::int32_t>();
    case GgufType::I64: return as<std::int64_t>();
    case GgufType::U64: {
      const auto v = as<std::uint64_t>();
      if (v > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
        throw MetadataError(bytes_->display, key_, "expected an integer below 2^63, got u64 " + std::to_string(v));
      return static_cast<std::int64_t>(v);
    }
    default: throw_type(expected);
  }
}

inline double GgufValue::as_double() const {
  if (!is_array() && type_ == GgufType::F32) return as<float>();
  if (!is_array() && type_ == GgufType::F64) return as<double>();
  throw_type("a float (f32, f64)");
}

inline std::string GgufValue::describe() const {
  std::size_t pos = begin_;
  const auto one = [&](GgufType t) -> std::string {
    switch (t) {
      case GgufType::U8: return std::to_string(element_at<std::uint8_t>(pos));
      case GgufType::I8: return std::to_string(element_at<std::int8_t>(pos));
      case GgufType::U16: return std::to_string(element_at<std::uint16_t>(pos));
      case GgufType::I16: return std::to_string(element_at<std::int16_t>(pos));
      case GgufType::U32: return std::to_string(element_at<std::uint32_t>(pos));
      case GgufType::I32: return std::to_string(element_at<std::int32_t>(pos));
      case GgufType::U64: return std::to_string(element_at<std::uint64_t>(pos));
      case GgufType::I64: return std::to_string(element_at<std::int64_t>(pos));
      case GgufType::F32: return moe::detail::concat(element_at<float>(pos));
      case GgufType::F64: return moe::detail::concat(element_at<double>(pos));
      case GgufType::BOOL: return element_at<bool>(pos) ? "true" : "false";
      default: return "'" + detail::printable(element_at<std::string_view>(pos)) + "'";
    }
  };
  if (!is_array()) return std::string(gguf_type_name(type_)) + " " + one(type_);
  std::string s = "array of " + std::to_string(count_) + " " + std::string(gguf_type_name(element_type_)) + " [";
  for (std::uint64_t i = 0; i < count_; ++i) {
    if (i == 8) {
      s += ", ...";
      break;
    }
    s += (i ? ", " : "") + one(element_type_);
  }
  return s + "]";
}

// ---------------------------------------------------------------------------------------------
// GgufFile

inline GgufFile GgufFile::open(const std::filesystem::path& path) {
  auto bytes = std::make_shared<detail::GgufBytes>();
  bytes->display = path.string();
#if MOE_IO_GGUF_MMAP
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(bytes->display, std::string("cannot open for reading: ") + std::strerror(errno));
  struct ::stat st {};
  if (::fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    throw Error(bytes->display, std::string("cannot stat: ") + std::strerror(e));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(bytes->display, "cannot open: not a regular file");
  }
  const auto size = static_cast<std::size_t>(st.st_size);
  if (size > 0) {
    void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
      const int e = errno;
      ::close(fd);
      throw Error(bytes->display, std::string("cannot map into memory: ") + std::strerror(e));
    }
    bytes->map = map;
    bytes->map_size = size;
    bytes->data = static_cast<const std::byte*>(map);
    bytes->size = size;
  }
  bytes->fd = fd;  // kept: each read checks the file is still the one mapped
  bytes->identity = detail::FileIdentity::of(fd, path, bytes->display);
#else
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) throw Error(bytes->display, "cannot open: not a regular file");
  const std::uintmax_t size = std::filesystem::file_size(path, ec);
  if (ec) throw Error(bytes->display, "cannot open: " + ec.message());
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(bytes->display, "cannot open for reading");
  bytes->owned.resize(static_cast<std::size_t>(size));
  if (size > 0) in.read(reinterpret_cast<char*>(bytes->owned.data()), static_cast<std::streamsize>(size));
  if (static_cast<std::uintmax_t>(in.gcount()) != size) throw Error(bytes->display, "cannot read the whole file");
  bytes->data = bytes->owned.data();
  bytes->size = bytes->owned.size();
#endif
  auto state = std::make_shared<detail::GgufState>();
  state->bytes = std::move(bytes);
  state->parse();
  return GgufFile(std::move(state));
}

inline GgufFile GgufFile::from_bytes(std::vector<std::byte> bytes, std::string display_name) {
  auto held = std::make_shared<detail::GgufBytes>();
  held->display = std::move(display_name);
  held->owned = std::move(bytes);
  held->data = held->owned.data();
  held->size = held->owned.size();
  auto state = std::make_shared<detail::GgufState>();
  state->bytes = std::move(held);
  state->parse();
  return GgufFile(std::move(state));
}

inline const GgufValue* GgufFile::find(std::string_view key) const {
  const auto it = state_->key_index.find(key);
  return it == state_->key_index.end() ? nullptr : &state_->metadata[it->second];
}

inline const GgufValue& GgufFile::value(std::string_view key) const {
  if (const GgufValue* v = find(key)) return *v;
  throw MissingMetadataError(display_name(), std::string(key),
                             "expected a key of this name, got none among the file's " +
                                 std::to_string(state_->metadata.size()) + " keys" +
                                 detail::close_names_clause(detail::close_names(state_->key_index, key)));
}

inline const GgufTensorInfo& GgufFile::info(std::string_view name) const {
  const auto it = state_->tensor_index.find(name);
  if (it != state_->tensor_index.end()) return state_->tensors[it->second];
  throw MissingTensorError(display_name(), std::string(name),
                           "expected a tensor of this name, got none among the file's " +
                               std::to_string(state_->tensors.size()) + " tensors" +
                               detail::close_names_clause(close_names(name)));
}

inline std::vector<std::string> GgufFile::names() const {
  std::vector<std::string> out;
  out.reserve(state_->tensors.size());
  for (const auto& t : state_->tensors) out.push_back(t.name);
  return out;
}

inline std::vector<std::string> GgufFile::close_names(std::string_view name) const {
  return detail::close_names(state_->tensor_index, name);
}

inline std::span<const std::byte> GgufFile::raw(std::string_view name) const {
  const GgufTensorInfo& t = info(name);
  check_unchanged(t.name);
  return {state_->bytes->data + state_->data_offset + t.offset, static_cast<std::size_t>(t.nbytes)};
}

inline void GgufFile::require_float(const GgufTensorInfo& t) const {
  if (!ggml_type_info(static_cast<std::uint32_t>(t.type))->to_float)
    throw TensorMismatchError(display_name(), t.name,
                              "expected a type read as float (F32, F16, BF16, Q8_0, Q4_0, Q4_K), got " +
                                  detail::ggml_type_text(t.type) + "; raw() gives its bytes");
}

inline void GgufFile::convert_into(const GgufTensorInfo& t, float* out) const {
  check_unchanged(t.name);
  convert_mapped(t, out);
  check_unchanged(t.name);  // and after: a change during the read leaves bytes of two versions
}

inline void GgufFile::convert_mapped(const GgufTensorInfo& t, float* out) const {
  const std::byte* src = state_->bytes->data + state_->data_offset + t.offset;
  const auto n = static_cast<std::size_t>(t.numel());
  switch (t.type) {
    case GgmlType::F32: std::memcpy(out, src, n * sizeof(float)); return;
    case GgmlType::F16:
      for (std::size_t i = 0; i < n; ++i) {
        std::uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        out[i] = kernels::fp16_to_float(h);
      }
      return;
    case GgmlType::BF16:
      for (std::size_t i = 0; i < n; ++i) {
        std::uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        out[i] = static_cast<float>(bf16::from_bits(h));
      }
      return;
    case GgmlType::Q8_0:
      detail::dequantize_unaligned<kernels::BlockQ8_0>(src, out, n, kernels::dequantize_row_q8_0);
      return;
    case GgmlType::Q4_0:
      detail::dequantize_unaligned<kernels::BlockQ4_0>(src, out, n, kernels::dequantize_row_q4_0);
      return;
    case GgmlType::Q4_K:
      detail::dequantize_unaligned<kernels::BlockQ4_K>(src, out, n, kernels::dequantize_row_q4_k);
      return;
    default:
      require_float(t);  // throws: callers check first, before they allocate
  }
}

inline std::vector<float> GgufFile::to_float(std::string_view name) const {
  const GgufTensorInfo& t = info(name);
  require_float(t);
  std::vector<float> out(static_cast<std::size_t>(t.numel()));
  convert_into(t, out.data());
  return out;
}

inline RowMatrix<float> GgufFile::to_matrix(std::string_view name) const { return to_matrix(name, -1, info(name).cols()); }

inline RowMatrix<float> GgufFile::to_matrix(std::string_view name, Index rows, Index cols) const {
  if (rows < -1 || cols < 0)
    moe::detail::throw_invalid("GgufFile::to_matrix()", "rows and cols", "rows >= -1 and cols >= 0",
                               moe::detail::concat(rows, ", ", cols));
  const GgufTensorInfo& t = info(name);
  if (t.cols() != cols || (rows != -1 && t.rows() != rows))
    throw TensorMismatchError(display_name(), t.name,
                              "expected ne[0] = " + std::to_string(cols) +
                                  (rows == -1 ? std::string()
                                              : " and the other dimensions multiplying to " + std::to_string(rows)) +
                                  " (read as [" + (rows == -1 ? std::string("*") : std::to_string(rows)) + ", " +
                                  std::to_string(cols) + "]), got " + detail::ne_text(t.ne));
  require_float(t);
  RowMatrix<float> m(static_cast<Index>(t.rows()), static_cast<Index>(t.cols()));
  convert_into(t, m.data());
  return m;
}

// ---------------------------------------------------------------------------------------------
// GgufWriter

inline GgufWriter& GgufWriter::put(std::string key, std::vector<std::byte> encoded, std::string_view where) {
  if (key.empty() || key.size() > detail::gguf_max_key_bytes || detail::find_invalid_utf8(key))
    moe::detail::throw_invalid(where, "key", "a non-empty string of at most 65535 bytes of UTF-8",
                               "'" + detail::printable(key) + "'");
  for (Entry& e : metadata_)
    if (e.key == key) {
      e.encoded = std::move(encoded);
      return *this;
    }
  metadata_.push_back({std::move(key), std::move(encoded)});
  return *this;
}

template <GgufWritable T>
GgufWriter& GgufWriter::set(std::string key, T value) {
  if (key == "general.alignment") {
    if constexpr (std::same_as<T, std::uint32_t>) {
      if (value == 0 || (value & (value - 1)) != 0)
        moe::detail::throw_invalid("GgufWriter::set()", "general.alignment", "a power of two", value);
      alignment_ = value;
    } else {
      moe::detail::throw_invalid("GgufWriter::set()", "general.alignment", "a std::uint32_t (u32, as llama.cpp reads it)",
                                 gguf_type_name(gguf_type_of<T>()));
    }
  }
  std::vector<std::byte> enc;
  detail::append_value(enc, static_cast<std::uint32_t>(gguf_type_of<T>()));
  detail::append_value(enc, value);
  return put(std::move(key), std::move(enc), "GgufWriter::set()");
}

template <GgufWritable T>
GgufWriter& GgufWriter::set_array(std::string key, const std::vector<T>& values) {
  if (key == "general.alignment")
    moe::detail::throw_invalid("GgufWriter::set_array()", "general.alignment", "a std::uint32_t scalar", "an array");
  std::vector<std::byte> enc;
  detail::append_value(enc, static_cast<std::uint32_t>(GgufType::ARRAY));
  detail::append_value(enc, static_cast<std::uint32_t>(gguf_type_of<T>()));
  detail::append_value(enc, static_cast<std::uint64_t>(values.size()));
  for (const auto& v : values) detail::append_value(enc, static_cast<T>(v));  // vector<bool> gives proxies
  return put(std::move(key), std::move(enc), "GgufWriter::set_array()");
}

inline void GgufWriter::check_tensor(const std::string& name, GgmlType type, const std::vector<std::int64_t>& ne,
                                     std::uint64_t& numel, std::string_view where) const {
  if (name.empty() || name.size() > detail::gguf_writer_max_name_bytes || detail::find_invalid_utf8(name))
    moe::detail::throw_invalid(where, "tensor name", "a non-empty string of at most 63 bytes of UTF-8 (llama.cpp's limit)",
                               "'" + detail::printable(name) + "'");
  for (const Tensor& t : tensors_)
    if (t.name == name) moe::detail::throw_invalid(where, "tensor name", "a name not added before", "'" + name + "' again");
  const GgmlTypeInfo* ti = ggml_type_info(static_cast<std::uint32_t>(type));
  if (ti == nullptr)
    moe::detail::throw_invalid(where, "type", "a ggml type", static_cast<std::uint32_t>(type));
  if (ne.empty() || ne.size() > 4)
    moe::detail::throw_invalid(where, "ne (dimensions)", "1 to 4 dimensions", detail::format_shape(ne));
  numel = 1;
  for (std::int64_t d : ne) {
    if (d < 1) moe::detail::throw_invalid(where, "ne", "dimensions >= 1", detail::format_shape(ne));
    if (!detail::checked_mul(numel, static_cast<std::uint64_t>(d), numel) ||
        numel > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
      moe::detail::throw_invalid(where, "ne", "an element count below 2^63", detail::format_shape(ne));
  }
  if (static_cast<std::uint64_t>(ne[0]) % ti->block != 0)
    moe::detail::throw_invalid(where, "ne[0]",
                               moe::detail::concat("a multiple of ", ti->block, " (the block of ", ti->name, ")"), ne[0]);
}

inline GgufWriter& GgufWriter::add_tensor(std::string name, GgmlType type, std::vector<std::int64_t> ne,
                                          std::vector<std::byte> bytes) {
  constexpr std::string_view where = "GgufWriter::add_tensor()";
  std::uint64_t numel = 0;
  check_tensor(name, type, ne, numel, where);
  const GgmlTypeInfo* ti = ggml_type_info(static_cast<std::uint32_t>(type));
  std::uint64_t nbytes = 0;
  if (!detail::checked_mul(numel / ti->block, ti->bytes, nbytes) || nbytes != bytes.size())
    moe::detail::throw_invalid(where, "byte count",
                               moe::detail::concat(numel / ti->block * ti->bytes, " (", detail::ne_text(ne), " of ",
                                                   ti->name, ")"),
                               bytes.size());
  tensors_.push_back({std::move(name), type, std::move(ne), std::move(bytes)});
  return *this;
}

inline GgufWriter& GgufWriter::add_tensor(std::string name, GgmlType type, std::vector<std::int64_t> ne,
                                          std::span<const float> values) {
  constexpr std::string_view where = "GgufWriter::add_tensor()";
  std::uint64_t numel = 0;
  check_tensor(name, type, ne, numel, where);
  const GgmlTypeInfo* ti = ggml_type_info(static_cast<std::uint32_t>(type));
  if (!ti->to_float)
    moe::detail::throw_invalid(where, "type", "one written from float (F32, F16, BF16, Q8_0, Q4_0, Q4_K)",
                               detail::ggml_type_text(type));
  if (values.size() != numel)
    moe::detail::throw_invalid(where, "values size", moe::detail::concat(numel, " (", detail::ne_text(ne), ")"),
                               values.size());
  const std::size_t n = values.size();
  std::vector<std::byte> bytes(static_cast<std::size_t>(numel / ti->block * ti->bytes));
  const auto quantize = [&]<class Block>(auto fn) {
    std::vector<Block> blocks(n / kernels::block_elements<Block>);
    try {
      fn(values.data(), blocks.data(), n);
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(std::string(where) + ": tensor '" + name + "': " + e.what());
    }
    if (!bytes.empty()) std::memcpy(bytes.data(), blocks.data(), bytes.size());
  };
  switch (type) {
    case GgmlType::F32:
      if (n != 0) std::memcpy(bytes.data(), values.data(), n * sizeof(float));
      break;
    case GgmlType::F16:
      for (std::size_t i = 0; i < n; ++i) {
        const std::uint16_t h = kernels::float_to_fp16(values[i]);
        std::memcpy(bytes.data() + 2 * i, &h, 2);
      }
      break;
    case GgmlType::BF16:
      for (std::size_t i = 0; i < n; ++i) {
        const std::uint16_t h = bf16(values[i]).bits;
        std::memcpy(bytes.data() + 2 * i, &h, 2);
      }
      break;
    case GgmlType::Q8_0: quantize.template operator()<kernels::BlockQ8_0>(kernels::quantize_row_q8_0); break;
    case GgmlType::Q4_0: quantize.template operator()<kernels::BlockQ4_0>(kernels::quantize_row_q4_0); break;
    default: quantize.template operator()<kernels::BlockQ4_K>(kernels::quantize_row_q4_k); break;
  }
  tensors_.push_back({std::move(name), type, std::move(ne), std::move(bytes)});
  return *this;
}

inline std::vector<std::byte> GgufWriter::to_bytes() const {
  const auto pad = [&](std::vector<std::byte>& out) {
    out.resize((out.size() + alignment_ - 1) / alignment_ * alignment_, std::byte{0});
  };
  std::vector<std::byte> out;
  detail::append_bytes(out, "GGUF", 4);
  detail::append_value(out, std::uint32_t{3});
  detail::append_value(out, static_cast<std::uint64_t>(tensors_.size()));
  detail::append_value(out, static_cast<std::uint64_t>(metadata_.size()));
  for (const Entry& e : metadata_) {
    detail::append_value(out, e.key);
    out.insert(out.end(), e.encoded.begin(), e.encoded.end());
  }
  std::uint64_t offset = 0;
  for (const Tensor& t : tensors_) {
    detail::append_value(out, t.name);
    detail::append_value(out, static_cast<std::uint32_t>(t.ne.size()));
    for (std::int64_t d : t.ne) detail::append_value(out, static_cast<std::uint64_t>(d));
    detail::append_value(out, static_cast<std::uint32_t>(t.type));
    detail::append_value(out, offset);
    offset += (t.bytes.size() + alignment_ - 1) / alignment_ * alignment_;
  }
  pad(out);
  for (const Tensor& t : tensors_) {
    out.insert(out.end(), t.bytes.begin(), t.bytes.end());
    pad(out);
  }
  return out;
}

inline void GgufWriter::save(const std::filesystem::path& path) const {
  const std::vector<std::byte> bytes = to_bytes();
  detail::write_file(path, bytes.data(), bytes.size());
}

}  // namespace moe::io

#endif  // MOE_IO_GGUF_HPP
