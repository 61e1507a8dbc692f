// The expert bank of a layer whose SwiGLU experts live on disk: shapes and names only. The
// weights come from an OnDemandExecutor's source; as a gradient (make_gradients) it holds one
// slice per expert that a backward ran through (docs/store.md).
#ifndef MOE_STORE_ON_DEMAND_SWIGLU_HPP
#define MOE_STORE_ON_DEMAND_SWIGLU_HPP

#include <moe/core/context.hpp>
#include <moe/core/error.hpp>
#include <moe/core/parameters.hpp>
#include <moe/core/types.hpp>
#include <moe/expert/swiglu_experts.hpp>

#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <xsimd/xsimd.hpp>

namespace moe::store {

/// E SwiGLU experts of d_model x d_ff whose weights are not here. MoELayer sees the sizes it
/// checks (num_experts, input_dim, output_dim, hidden_cols); step 4 must run through
/// OnDemandExecutor, which materialises experts as resident_type (a one-expert SwiGLUExperts).
/// forward / backward called directly throw std::logic_error.
///
/// The layer's own bank has no parameters (for_each_parameter visits nothing: the expert
/// weights stay in the files). A gradient bank (layer.make_gradients()) gets a zeroed
/// one-expert slice for each expert a backward ran, named as in the checkpoint; only those
/// are visited, in ascending expert order.
template <class S>
class OnDemandSwiGLU {
 public:
  using scalar_type = S;
  using resident_type = SwiGLUExperts<S>;
  using Names = typename SwiGLUExperts<S>::Names;

  OnDemandSwiGLU(Index num_experts, Index d_model, Index d_ff, Names names = {})
      : num_experts_(num_experts), d_model_(d_model), d_ff_(d_ff), names_(std::move(names)) {
    constexpr const char* where = "OnDemandSwiGLU::OnDemandSwiGLU()";
    detail::require(num_experts >= 1, where, "num_experts", ">= 1", num_experts);
    detail::require(d_model >= 1, where, "d_model", ">= 1", d_model);
    detail::require(d_ff >= 1, where, "d_ff", ">= 1", d_ff);
  }

  [[nodiscard]] Index num_experts() const noexcept { return num_experts_; }
  [[nodiscard]] Index input_dim() const noexcept { return d_model_; }
  [[nodiscard]] Index output_dim() const noexcept { return d_model_; }
  [[nodiscard]] Index d_ff() const noexcept { return d_ff_; }
  [[nodiscard]] Index hidden_cols() const noexcept { return 3 * d_ff_; }
  [[nodiscard]] const Names& names() const noexcept { return names_; }

  template <class Arch = xsimd::default_arch>
  void forward(Index, const ConstMatrixRef<S>&, MatrixRef<S>, MatrixRef<S>, GemmKernel = GemmKernel::fast) const {
    throw std::logic_error(
        "OnDemandSwiGLU::forward(): the weights are not in memory; run the layer with store::OnDemandExecutor");
  }
  template <class Arch = xsimd::default_arch>
  void backward(Index, const ConstMatrixRef<S>&, const ConstMatrixRef<S>&, const ConstMatrixRef<S>&, MatrixRef<S>,
                MatrixRef<S>, OnDemandSwiGLU&) const {
    throw std::logic_error(
        "OnDemandSwiGLU::backward(): the weights are not in memory; run the layer with store::OnDemandExecutor");
  }

  /// Expert e's gradient slice, created zeroed on first use. Not thread-safe: the executor
  /// creates the slices of a wave before its tasks start.
  resident_type& slice(Index e) {
    detail::require(e >= 0 && e < num_experts_, "OnDemandSwiGLU::slice()", "expert index",
                    detail::concat("in [0, ", num_experts_, ")"), e);
    auto it = slices_.find(e);
    if (it == slices_.end()) it = slices_.emplace(e, resident_type(1, d_model_, d_ff_)).first;
    return it->second;
  }
  /// The slice, or nullptr when no backward ran through expert e.
  [[nodiscard]] const resident_type* find_slice(Index e) const {
    const auto it = slices_.find(e);
    return it == slices_.end() ? nullptr : &it->second;
  }
  [[nodiscard]] Index num_slices() const noexcept { return static_cast<Index>(slices_.size()); }

  template <class F>
  void for_each_parameter(F&& f) {
    for (auto& [e, s] : slices_) {
      f(detail::expand_name(names_.gate, e), s.gate_proj(0));
      f(detail::expand_name(names_.up, e), s.up_proj(0));
      f(detail::expand_name(names_.down, e), s.down_proj(0));
    }
  }
  template <class F>
  void for_each_parameter(F&& f) const {
    for (const auto& [e, s] : slices_) {
      f(detail::expand_name(names_.gate, e), s.gate_proj(0));
      f(detail::expand_name(names_.up, e), s.up_proj(0));
      f(detail::expand_name(names_.down, e), s.down_proj(0));
    }
  }

 private:
  Index num_experts_, d_model_, d_ff_;
  Names names_;
  std::map<Index, resident_type> slices_;
};

}  // namespace moe::store

#endif  // MOE_STORE_ON_DEMAND_SWIGLU_HPP
