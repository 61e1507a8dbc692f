// A bank that holds a contiguous block of a layer's experts and reports the layer's E: what a
// rank holds under expert parallelism (docs/expert_parallel.md). MPI-free.
#ifndef MOE_PARALLEL_EXPERT_SLICE_HPP
#define MOE_PARALLEL_EXPERT_SLICE_HPP

#include <moe/core/context.hpp>
#include <moe/core/error.hpp>
#include <moe/core/traits.hpp>
#include <moe/core/types.hpp>
#include <moe/parallel/expert_partition.hpp>

#include <cstddef>
#include <string>
#include <utility>
#include <vector>
#include <xsimd/xsimd.hpp>

namespace moe::parallel {

/// Experts [first, first + local().num_experts()) of a layer of num_experts() experts. The
/// router sees num_experts() (the global E); only the owned experts have weights: local()
/// is an ordinary bank of the block, its expert i being the layer's expert first + i.
///
/// forward(e) and backward(e) take the layer's expert index and run local expert e - first
/// (e must be owned); the expert-parallel executor calls local() directly. Parameters are
/// local()'s, named as local() names them (the local index: expert first + i is named i);
/// a gradient is a zeroed copy, so it holds the owned experts' gradients only.
///
/// Banks whose experts read an ExpertContext (token indices, positions, other tokens) are not
/// supported: under expert parallelism an owner does not hold the senders' batches.
template <class Bank>
class ExpertSlice {
  static_assert(!expert_traits<Bank>::needs_context,
                "ExpertSlice: the bank must not need an ExpertContext (an owner does not hold the other ranks' "
                "batches; docs/expert_parallel.md)");

 public:
  using scalar_type = typename Bank::scalar_type;
  using bank_type = Bank;
  using weight_type = typename expert_traits<Bank>::weight_type;
  static constexpr bool whole_slabs = expert_traits<Bank>::whole_slabs;

  /// local holds the experts [first, first + local.num_experts()) of num_experts.
  ExpertSlice(Bank local, Index num_experts, Index first) : local_(std::move(local)), num_experts_(num_experts), first_(first) {
    constexpr const char* where = "ExpertSlice::ExpertSlice()";
    detail::require(first >= 0 && first + local_.num_experts() <= num_experts, where,
                    "the block [first, first + local experts)", detail::concat("inside [0, ", num_experts, ")"),
                    detail::concat("[", first, ", ", first + local_.num_experts(), ")"));
  }
  /// Rank r's block of a partition.
  ExpertSlice(Bank local, const ExpertPartition& partition, Index rank)
      : ExpertSlice(std::move(local), partition.num_experts(), partition.first(rank)) {
    detail::require(local_.num_experts() == partition.count(rank), "ExpertSlice::ExpertSlice()",
                    detail::concat("local experts (rank ", rank, "'s block)"), partition.count(rank),
                    local_.num_experts());
  }

  [[nodiscard]] Index num_experts() const noexcept { return num_experts_; }
  [[nodiscard]] Index input_dim() const noexcept { return local_.input_dim(); }
  [[nodiscard]] Index output_dim() const noexcept { return local_.output_dim(); }
  [[nodiscard]] Index hidden_cols() const noexcept { return local_.hidden_cols(); }
  /// The first owned expert and the number owned.
  [[nodiscard]] Index first() const noexcept { return first_; }
  [[nodiscard]] Index local_count() const noexcept { return local_.num_experts(); }
  [[nodiscard]] bool owns(Index e) const noexcept { return e >= first_ && e < first_ + local_.num_experts(); }

  [[nodiscard]] Bank& local() noexcept { return local_; }
  [[nodiscard]] const Bank& local() const noexcept { return local_; }

  void check_shapes() const {
    if constexpr (requires { local_.check_shapes(); }) local_.check_shapes();
  }

  template <class F>
  void for_each_parameter(F&& f) {
    local_.for_each_parameter(f);
  }
  template <class F>
  void for_each_parameter(F&& f) const {
    local_.for_each_parameter(f);
  }

  template <class Arch = xsimd::default_arch>
  void forward(Index e, const ConstMatrixRef<scalar_type>& x, MatrixRef<scalar_type> hidden,
               MatrixRef<scalar_type> y) const {
    local_.template forward<Arch>(local_index(e, "forward"), x, hidden, y);
  }
  template <class Arch = xsimd::default_arch>
  void forward(Index e, const ConstMatrixRef<scalar_type>& x, MatrixRef<scalar_type> hidden, MatrixRef<scalar_type> y,
               GemmKernel kernel) const
    requires requires(const Bank& b, const ConstMatrixRef<scalar_type>& xs, MatrixRef<scalar_type> hs,
                      MatrixRef<scalar_type> ys) { b.template forward<Arch>(Index{}, xs, hs, ys, GemmKernel{}); }
  {
    local_.template forward<Arch>(local_index(e, "forward"), x, hidden, y, kernel);
  }

  template <class Arch = xsimd::default_arch>
  void backward(Index e, const ConstMatrixRef<scalar_type>& x, const ConstMatrixRef<scalar_type>& hidden,
                const ConstMatrixRef<scalar_type>& dy, MatrixRef<scalar_type> dx, MatrixRef<scalar_type> dhidden,
                ExpertSlice& grad) const {
    local_.template backward<Arch>(local_index(e, "backward"), x, hidden, dy, dx, dhidden, grad.local_);
  }

 private:
  Index local_index(Index e, const char* method) const {
    if (!owns(e))
      detail::throw_invalid(detail::concat("ExpertSlice::", method, "()"), "expert index (an owned expert)",
                            detail::concat("in [", first_, ", ", first_ + local_.num_experts(), ")"), e);
    return e - first_;
  }

  Bank local_;
  Index num_experts_;
  Index first_;
};

/// Experts [first, first + count) of `whole` as a bank of their own: make(count) builds an
/// empty bank of count experts of whole's shape; every parameter tensor of the block is then
/// copied from whole's. Two layouts, told apart by the number of tensors:
/// - per expert: for_each_parameter lists each expert's tensors expert by expert, the same
///   number for every expert (SwiGLU, FFN, linear, low-rank banks, ...): the block's tensors
///   are whole's first * per .. (first + count) * per;
/// - fused: the bank lists as many tensors for count experts as for E, each stacking the
///   experts' rows (GPT-OSS: gate_up [E d, 2 ff], down [E ff, d], biases [E, ...]): the
///   block's tensor is rows first * R / E .. (first + count) * R / E of whole's (R rows).
/// Throws std::invalid_argument for a block outside the bank or tensors of any other shape.
template <class Bank, class Make>
[[nodiscard]] Bank copy_experts(const Bank& whole, Index first, Index count, Make&& make) {
  constexpr const char* where = "moe::parallel::copy_experts()";
  const Index E = whole.num_experts();
  detail::require(first >= 0 && count >= 1 && first + count <= E, where, "the block [first, first + count)",
                  detail::concat("inside [0, ", E, ") and not empty"),
                  detail::concat("[", first, ", ", first + count, ")"));
  Bank part = make(count);
  using S = typename Bank::scalar_type;
  std::vector<RowMatrix<S>> tensors;
  whole.for_each_parameter([&](const std::string&, const auto& block) { tensors.emplace_back(block); });
  const auto n = static_cast<Index>(tensors.size());
  Index part_n = 0;
  std::as_const(part).for_each_parameter([&](const std::string&, const auto&) { ++part_n; });
  if (part_n == n) {
    // Fused: one tensor per parameter, the experts' rows stacked (or the whole bank, when
    // count == E, in either layout).
    Index i = 0;
    part.for_each_parameter([&](const std::string& name, auto&& block) {
      const RowMatrix<S>& src = tensors[static_cast<std::size_t>(i++)];
      if (count == E) {
        detail::require_shape(block, src.rows(), src.cols(), where, name);
        block = src;
        return;
      }
      detail::require(src.rows() % E == 0, where, detail::concat("rows of the fused tensor ", name),
                      detail::concat("a multiple of E = ", E), src.rows());
      const Index per = src.rows() / E;
      detail::require_shape(block, count * per, src.cols(), where, name);
      block = src.middleRows(first * per, count * per);
    });
    return part;
  }
  detail::require(n % E == 0, where, "parameter tensors of the bank (the same number per expert)",
                  detail::concat("a multiple of E = ", E), n);
  const Index per = n / E;
  Index i = 0;
  part.for_each_parameter([&](const std::string& name, auto&& block) {
    detail::require(i < count * per, where, "parameter tensors of the block", count * per, i + 1);
    const RowMatrix<S>& src = tensors[static_cast<std::size_t>(first * per + i)];
    detail::require_shape(block, src.rows(), src.cols(), where, name);
    block = src;
    ++i;
  });
  detail::require(i == count * per, where, "parameter tensors of the block", count * per, i);
  return part;
}

}  // namespace moe::parallel

#endif  // MOE_PARALLEL_EXPERT_SLICE_HPP
