// Reading and writing safetensors files (https://huggingface.co/docs/safetensors).
//
// A file is an 8-byte little-endian header length N, N bytes of JSON describing each tensor
// (dtype, shape, byte range in the data section) plus an optional string map __metadata__, and the
// data section. The reader loads the whole file, checks every field before any tensor is read, and
// converts on request; nothing in a malformed file can make it read out of bounds.
#ifndef MOE_IO_SAFETENSORS_HPP
#define MOE_IO_SAFETENSORS_HPP

#include "moe/core/types.hpp"
#include "moe/io/dtype.hpp"
#include "moe/io/error.hpp"

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace moe::io {

/// One tensor entry of the header, validated.
struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<std::int64_t> shape;
  std::size_t begin = 0, end = 0;  ///< byte offsets relative to the data section

  /// Product of the shape (1 for a scalar, shape []).
  [[nodiscard]] std::int64_t numel() const noexcept {
    std::int64_t n = 1;
    for (std::int64_t d : shape) n *= d;
    return n;
  }
  [[nodiscard]] std::size_t nbytes() const noexcept { return end - begin; }
};

/// The element types the converting readers produce.
template <class S>
concept ReadableScalar = std::same_as<S, float> || std::same_as<S, double> || std::same_as<S, std::int64_t>;

/// The element types SafetensorsWriter::add stores: float -> F32, double -> F64, int64 -> I64.
template <class S>
concept WritableScalar = ReadableScalar<S>;

class SafetensorsFile {
 public:
  /// Reads the whole file into memory and validates the header and every tensor entry.
  /// Throws Error if the file cannot be read, FormatError if it is malformed.
  static SafetensorsFile open(const std::filesystem::path& path);

  /// As open, for bytes already in memory; display_name stands for the file in messages.
  static SafetensorsFile from_bytes(std::vector<std::byte> bytes, std::string display_name = "<memory>");

  /// The path as given to open (or the display name), used in every message.
  [[nodiscard]] const std::string& display_name() const noexcept { return display_name_; }

  [[nodiscard]] bool contains(std::string_view name) const;
  /// Throws MissingTensorError naming the file, the tensor and a few close names.
  [[nodiscard]] const TensorInfo& info(std::string_view name) const;
  /// Up to three present names close to `name`, nearest first: names within a few edits (a
  /// typo), then names ending in the same dot-separated components (a wrong layer prefix).
  /// Empty for files of more than 20,000 tensors. Missing-tensor errors quote these.
  [[nodiscard]] std::vector<std::string> close_names(std::string_view name) const;
  /// Tensor names, sorted.
  [[nodiscard]] std::vector<std::string> names() const;
  [[nodiscard]] std::size_t size() const noexcept { return tensors_.size(); }

  /// The header's __metadata__ map (empty when the file has none).
  [[nodiscard]] const std::map<std::string, std::string, std::less<>>& metadata() const noexcept {
    return metadata_;
  }
  [[nodiscard]] std::optional<std::string> metadata(std::string_view key) const;

  /// The tensor's bytes as stored (little-endian, possibly unaligned).
  [[nodiscard]] std::span<const std::byte> raw(std::string_view name) const;

  // Converting readers. F64, F32, F16, BF16 read as float or double (F64 -> float rounds to
  // nearest; the others are exact). Signed integers and U8/U16/U32 read as std::int64_t. Any
  // other pairing throws TensorMismatchError naming the dtype.

  /// All elements, row-major.
  template <ReadableScalar S>
  [[nodiscard]] std::vector<S> read(std::string_view name) const;
  /// As read, after checking the shape is exactly expected_shape.
  template <ReadableScalar S>
  [[nodiscard]] std::vector<S> read(std::string_view name, std::span<const std::int64_t> expected_shape) const;
  /// A tensor of shape exactly [rows, cols].
  template <ReadableScalar S>
  [[nodiscard]] RowMatrix<S> read_matrix(std::string_view name, Index rows, Index cols) const;
  /// A tensor of shape exactly [n].
  template <ReadableScalar S>
  [[nodiscard]] Vector<S> read_vector(std::string_view name, Index n) const;
  /// Any tensor of rank >= 1 whose last dimension is cols and whose leading dimensions multiply
  /// to rows, flattened row-major; rows = -1 takes rows from the leading dimensions (an input
  /// [B, S, d] reads as [B*S, d]).
  template <ReadableScalar S>
  [[nodiscard]] RowMatrix<S> read_rows(std::string_view name, Index rows, Index cols) const;
  /// Entries [first, first + count) along the leading dimension of a tensor whose shape is
  /// exactly expected_shape, row-major: experts first .. first + count - 1 of a fused [E, ...]
  /// tensor. Converts only those bytes.
  template <ReadableScalar S>
  [[nodiscard]] std::vector<S> read_leading(std::string_view name, std::span<const std::int64_t> expected_shape,
                                            Index first, Index count) const;

 private:
  SafetensorsFile() = default;
  void parse_header();
  template <ReadableScalar S>
  void convert_into(const TensorInfo& t, S* out) const { convert_into(t, out, 0, static_cast<std::size_t>(t.numel())); }
  /// Elements [first, first + n) of t, converted into out.
  template <ReadableScalar S>
  void convert_into(const TensorInfo& t, S* out, std::size_t first, std::size_t n) const;
  /// The tensor's entry, checked to have exactly expected_shape.
  const TensorInfo& info_of_shape(std::string_view name, std::span<const std::int64_t> expected_shape) const;
  [[noreturn]] void throw_format(const std::string& message) const;
  [[noreturn]] void throw_mismatch(const TensorInfo& t, const std::string& message) const;

  std::string display_name_;
  std::vector<std::byte> bytes_;
  std::size_t data_offset_ = 0;  // 8 + header length: where the data section starts in bytes_
  std::map<std::string, TensorInfo, std::less<>> tensors_;
  std::map<std::string, std::string, std::less<>> metadata_;
};

/// Builds a safetensors file: metadata, then tensors, then to_bytes() or save().
class SafetensorsWriter {
 public:
  SafetensorsWriter& metadata(std::string key, std::string value);

  /// Adds a tensor stored as F32 (float), F64 (double) or I64 (std::int64_t). Throws
  /// std::invalid_argument for a repeated or reserved name, a negative dimension, or a data
  /// size that is not the shape's element count.
  template <WritableScalar S>
  SafetensorsWriter& add(std::string name, std::vector<std::int64_t> shape, std::span<const S> data);

  /// Adds a tensor of any dtype from its little-endian bytes (how tests build F16/BF16 payloads).
  SafetensorsWriter& add_raw(std::string name, DType dtype, std::vector<std::int64_t> shape,
                             std::vector<std::byte> bytes);

  /// The file: header padded with spaces so the data section starts at a multiple of 8, and the
  /// tensors laid out by decreasing element size, then name, so each is naturally aligned.
  [[nodiscard]] std::vector<std::byte> to_bytes() const;

  /// Writes to_bytes() to path; throws Error when the file cannot be written.
  void save(const std::filesystem::path& path) const;

  /// The names of the tensors added so far, sorted.
  [[nodiscard]] std::vector<std::string> names() const;
  /// The sum of the tensors' byte sizes: the data section of to_bytes(), and what a sharded
  /// checkpoint's index calls total_size.
  [[nodiscard]] std::uint64_t data_size() const noexcept;
  /// Moves the tensor `name` (its bytes, not a copy) into `into`, leaving the metadata; how
  /// save_layer_sharded splits one layer into shard files. Throws std::invalid_argument when
  /// this writer has no such tensor or `into` already has one.
  SafetensorsWriter& move_tensor(std::string_view name, SafetensorsWriter& into);

 private:
  struct Entry {
    DType dtype;
    std::vector<std::int64_t> shape;
    std::vector<std::byte> bytes;
  };
  void check_new(const std::string& name, const std::vector<std::int64_t>& shape, DType dtype,
                 std::size_t nbytes, std::string_view where) const;

  std::map<std::string, std::string, std::less<>> metadata_;
  std::map<std::string, Entry, std::less<>> tensors_;
};

}  // namespace moe::io

#include "moe/io/safetensors_impl.hpp"

#endif  // MOE_IO_SAFETENSORS_HPP
