// What every loader shares: reading one layer's tensors under its prefix, with messages that
// name the loader, and the per-expert recipe (check every expert's tensors, then allocate,
// then read).
#ifndef MOE_IO_LAYER_TENSORS_HPP
#define MOE_IO_LAYER_TENSORS_HPP

#include <moe/core/error.hpp>
#include <moe/core/types.hpp>
#include <moe/io/checkpoint.hpp>
#include <moe/io/error.hpp>
#include <moe/io/safetensors.hpp>

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace moe::io::detail {

inline std::string shape_string(const std::vector<std::int64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

/// A per-expert name pattern with "{e}" replaced by the expert index.
inline std::string expert_name(std::string_view pattern, Index e) {
  std::string out(pattern);
  const std::size_t at = out.find("{e}");
  if (at != std::string::npos) out.replace(at, 3, std::to_string(e));
  return out;
}

/// Reads tensors under one layer prefix, with errors that name the loader, the tensor, what
/// was expected and what the file holds. Messages about a present tensor name the file holding
/// it (a shard of a sharded checkpoint); a missing one names the checkpoint (file or index).
class LayerTensors {
 public:
  /// The checkpoint is held by value (a pointer and a shared state), so one built from a
  /// SafetensorsFile in the call does not dangle.
  LayerTensors(Checkpoint file, std::string_view prefix, std::string_view loader)
      : file_(std::move(file)), prefix_(prefix), loader_(loader) {}

  [[nodiscard]] std::string name(std::string_view suffix) const { return prefix_ + std::string(suffix); }

  /// A missing name: the message quotes close names present in the file, since a typo or a
  /// wrong layer prefix is the usual cause.
  [[noreturn]] void throw_missing(const std::string& full_name, std::string_view what = "expected this tensor",
                                  std::string_view got = {}) const {
    if (got.empty()) got = file_.is_sharded() ? "the index lists no such name" : "the file has no such name";
    throw MissingTensorError(file_.display_name(), full_name,
                             loader_ + "(): " + std::string(what) + " (prefix '" + prefix_ + "'), but " +
                                 std::string(got) + close_names_clause(file_.close_names(full_name)));
  }

  [[nodiscard]] const TensorInfo& info(std::string_view suffix) const {
    const std::string n = name(suffix);
    if (!file_.contains(n)) throw_missing(n);
    const TensorInfo& t = file_.info(n);
    if (t.dtype != DType::F32 && t.dtype != DType::F64 && t.dtype != DType::F16 && t.dtype != DType::BF16)
      throw TensorMismatchError(file_.file_name(n), n,
                                loader_ + "(): expected a floating dtype (F32, F64, F16, BF16), got " +
                                    std::string(dtype_name(t.dtype)));
    return t;
  }

  /// The shape of a tensor that must have the given rank.
  [[nodiscard]] std::vector<std::int64_t> shape(std::string_view suffix, std::size_t rank) const {
    const TensorInfo& t = info(suffix);
    if (t.shape.size() != rank)
      throw TensorMismatchError(file_.file_name(name(suffix)), name(suffix),
                                loader_ + "(): expected a " + std::to_string(rank) + "-D tensor, got shape " +
                                    shape_string(t.shape));
    return t.shape;
  }

  /// Checks that the tensor exists with a floating dtype and the expected shape.
  void check(std::string_view suffix, const std::vector<std::int64_t>& expected) const {
    const TensorInfo& t = info(suffix);
    if (t.shape != expected)
      throw TensorMismatchError(file_.file_name(name(suffix)), name(suffix),
                                loader_ + "(): expected shape " + shape_string(expected) + ", got " +
                                    shape_string(t.shape));
  }

  template <class S>
  [[nodiscard]] std::vector<S> read(std::string_view suffix, const std::vector<std::int64_t>& expected) const {
    check(suffix, expected);
    return file_.read<S>(name(suffix));
  }

  /// Copies a tensor of the expected shape into dst (any Eigen block with as many elements,
  /// filled row-major).
  template <class S, class Dst>
  void read_into(std::string_view suffix, const std::vector<std::int64_t>& expected, Dst&& dst) const {
    fill_row_major(read<S>(suffix, expected), dst);
  }

  /// Entries [first, first + count) along the leading dimension of a tensor of the expected
  /// shape into dst (as many elements, filled row-major): a range of experts of a fused tensor.
  template <class S, class Dst>
  void read_leading_into(std::string_view suffix, const std::vector<std::int64_t>& expected, Index first, Index count,
                         Dst&& dst) const {
    check(suffix, expected);
    fill_row_major(file_.read_leading<S>(name(suffix), expected, first, count), dst);
  }

  [[nodiscard]] const std::string& loader() const noexcept { return loader_; }
  [[nodiscard]] const std::string& prefix() const noexcept { return prefix_; }
  [[nodiscard]] const Checkpoint& file() const noexcept { return file_; }

 private:
  /// Copies v into dst (any Eigen block with as many elements), row-major.
  template <class S, class Dst>
  static void fill_row_major(const std::vector<S>& v, Dst&& dst) {
    Index i = 0;
    for (Index r = 0; r < dst.rows(); ++r)
      for (Index c = 0; c < dst.cols(); ++c) dst(r, c) = v[static_cast<std::size_t>(i++)];
  }

  Checkpoint file_;
  std::string prefix_;
  std::string loader_;
};

/// Router settings are checked by the router's own constructor; its invalid_argument is
/// rethrown naming the loader.
template <class F>
auto with_loader_name(const std::string& loader, F&& build) {
  try {
    return build();
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(loader + "(): " + e.what());
  }
}

/// One tensor every expert has: its name pattern under the layer prefix ("{e}" stands for the
/// expert index) and its exact shape.
struct ExpertTensor {
  std::string pattern;
  std::vector<std::int64_t> shape;
};

/// The per-expert recipe every loader uses. Checks every expert's every tensor (present,
/// floating, exact shape) BEFORE make() allocates the bank, then reads tensor i of expert e
/// into dst(bank, e, i). A small malformed file (a router claiming 2^20 experts, one expert
/// present) is refused naming the first missing tensor instead of allocating E times the
/// expert size first.
///
/// With `first` > 0 the bank's expert e is the checkpoint's expert first + e: a rank of an
/// expert-parallel layer reads its block only (docs/expert_parallel.md#loading); no other expert's
/// tensors are looked at.
template <class S, class Make, class Dst>
auto read_experts(const LayerTensors& t, Index num_experts, const std::vector<ExpertTensor>& tensors, Make&& make,
                  Dst&& dst, Index first = 0) {
  for (Index e = 0; e < num_experts; ++e)
    for (const ExpertTensor& x : tensors) t.check(expert_name(x.pattern, first + e), x.shape);
  auto bank = with_loader_name(t.loader(), make);
  for (Index e = 0; e < num_experts; ++e)
    for (std::size_t i = 0; i < tensors.size(); ++i)
      t.template read_into<S>(expert_name(tensors[i].pattern, first + e), tensors[i].shape, dst(bank, e, i));
  return bank;
}

}  // namespace moe::io::detail

#endif  // MOE_IO_LAYER_TENSORS_HPP
