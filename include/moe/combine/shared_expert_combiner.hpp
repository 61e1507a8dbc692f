// Step 5 with always-on shared experts (Qwen2-MoE, DeepSeek-V3).
#ifndef MOE_COMBINE_SHARED_EXPERT_COMBINER_HPP
#define MOE_COMBINE_SHARED_EXPERT_COMBINER_HPP

#include <moe/combine/weighted_sum_combiner.hpp>
#include <moe/core/error.hpp>
#include <moe/core/scratch.hpp>
#include <moe/core/traits.hpp>
#include <moe/core/types.hpp>
#include <moe/contracts/combine.hpp>
#include <moe/contracts/training.hpp>
#include <moe/expert/local_executor.hpp>
#include <moe/kernels/activations.hpp>
#include <moe/kernels/gemm.hpp>

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <xsimd/xsimd.hpp>

namespace moe {

enum class SharedGate : std::uint8_t {
  none,     ///< y += shared(x)  (DeepSeek-V3 shared_experts)
  sigmoid,  ///< y += sigmoid(x w) * shared(x)  (Qwen2-MoE shared_expert_gate, w [1, d])
};

/// The weighted sum of routed experts plus a shared expert every token goes through.
/// SharedType is an expert bank of one expert (e.g. SwiGLUExperts<S>(1, d, shared_ff)).
template <class SharedType, SharedGate Gate>
class SharedExpertCombiner {
  static_assert(!expert_traits<SharedType>::needs_context,
                "SharedExpertCombiner: the shared expert bank must not need an ExpertContext (every token "
                "goes through it; docs/combiners.md)");

 public:
  using scalar_type = typename SharedType::scalar_type;
  using shared_type = SharedType;
  static constexpr SharedGate gate_kind = Gate;

  explicit SharedExpertCombiner(SharedType shared)
      : shared_(std::move(shared)), gate_weight_(Vector<scalar_type>::Zero(shared_.input_dim())) {
    detail::require(shared_.num_experts() == 1, "SharedExpertCombiner::SharedExpertCombiner()",
                    "shared expert bank size", 1, shared_.num_experts());
  }

  /// Checkpoint name of the gate's weight [1, d] (Qwen2-MoE: shared_expert_gate.weight). The
  /// shared expert's own names live in shared_expert().names().
  [[nodiscard]] std::string& gate_name() noexcept { return gate_name_; }
  [[nodiscard]] const std::string& gate_name() const noexcept { return gate_name_; }

  template <class F>
  void for_each_parameter(F&& f) {
    shared_.for_each_parameter(f);
    if constexpr (Gate == SharedGate::sigmoid) f(gate_name_, gate_weight_.transpose());
  }
  template <class F>
  void for_each_parameter(F&& f) const {
    shared_.for_each_parameter(f);
    if constexpr (Gate == SharedGate::sigmoid) f(gate_name_, gate_weight_.transpose());
  }

  [[nodiscard]] SharedType& shared_expert() noexcept { return shared_; }
  [[nodiscard]] const SharedType& shared_expert() const noexcept { return shared_; }
  /// The shared expert gate's weight [d] (Gate == sigmoid); unused otherwise.
  [[nodiscard]] Vector<scalar_type>& gate_weight() noexcept { return gate_weight_; }
  [[nodiscard]] const Vector<scalar_type>& gate_weight() const noexcept { return gate_weight_; }

  template <class Arch = xsimd::default_arch>
  void combine(const ConstMatrixRef<scalar_type>& x, const DispatchPlan<scalar_type>& plan,
               const ConstMatrixRef<scalar_type>& y_perm, MatrixRef<scalar_type> y,
               const CombineContext<scalar_type>& cc) const {
    detail::require(x.cols() == shared_.input_dim(), "SharedExpertCombiner::combine()",
                    "x columns (shared expert input_dim)", shared_.input_dim(), x.cols());
    WeightedSumCombiner<scalar_type>{}.template combine<Arch>(x, plan, y_perm, y, cc);
    CombineScratch<scalar_type>& ws = cc.scratch;
    const Index T = x.rows();
    detail::ensure_shape(ws.hidden, T, shared_.hidden_cols());
    detail::ensure_shape(ws.out, T, shared_.output_dim());
    if (T == 0) return;
    detail::forward_expert<Arch, SharedType, scalar_type>(shared_, 0, x, ws.hidden, ws.out,
                                                          cc.forward.gemm);
    if constexpr (Gate == SharedGate::sigmoid) {
      ws.gate.resize(T);
      // [T, d] x [d, 1] through gemm, so a token's gate follows ForwardContext::gemm too.
      kernels::gemm<Arch>(Eigen::Map<RowMatrix<scalar_type>>(ws.gate.data(), T, 1), x, Op::none,
                          Eigen::Map<const RowMatrix<scalar_type>>(gate_weight_.data(), gate_weight_.size(), 1),
                          Op::none, scalar_type(1), scalar_type(0), cc.forward.gemm);
      // One token at a time: over the whole column, whether a token's gate took the SIMD
      // body or the scalar tail would depend on its position in the batch
      // (GemmKernel::batch_invariant); T sigmoids are nothing next to the shared expert.
      for (Index t = 0; t < T; ++t) kernels::Sigmoid<Arch>{}(ws.gate.data() + t, 1);
      y.noalias() += ws.gate.asDiagonal() * ws.out;
    } else {
      y += ws.out;
    }
  }

  /// Backward: the routed part as WeightedSumCombiner, then the shared expert and its gate;
  /// dx receives the shared path's dL/dx.
  template <class Arch = xsimd::default_arch>
  void backward(const CombinerBackward<scalar_type>& in, SharedExpertCombiner& grad,
                const CombineContext<scalar_type>& cc) const {
    WeightedSumCombiner<scalar_type> routed;
    routed.template backward<Arch>(in, routed, cc);
    const auto& x = in.x;
    const auto& dy = in.dy;
    MatrixRef<scalar_type> dx = in.dx;
    CombineScratch<scalar_type>& ws = cc.scratch;
    const Index T = x.rows();
    if (T == 0) return;
    detail::ensure_shape(ws.dout, T, shared_.output_dim());
    detail::ensure_shape(ws.dx, T, shared_.input_dim());
    detail::ensure_shape(ws.dhidden, T, shared_.hidden_cols());
    if constexpr (Gate == SharedGate::sigmoid) {
      // y += g * out with g = sigmoid(x w): d out = g dy; d(x w) = g (1 - g) <dy, out>.
      ws.dout.noalias() = ws.gate.asDiagonal() * dy;
      // dL/d(x w) per token, in the thread's scratch (no heap allocation in steady state).
      detail::ScratchLease<scalar_type, struct SharedGateDpreTag> dpre_lease;
      Eigen::Map<Vector<scalar_type>> dpre(dpre_lease.data(static_cast<std::size_t>(T)), T);
      for (Index t = 0; t < T; ++t) {
        const scalar_type g = ws.gate[t];
        dpre[t] = g * (scalar_type(1) - g) * dy.row(t).dot(ws.out.row(t));
      }
      grad.gate_weight_.noalias() += x.transpose() * dpre;
      dx.noalias() += dpre * gate_weight_.transpose();
    } else {
      ws.dout = dy;
    }
    shared_.template backward<Arch>(0, x, ws.hidden, ws.dout, ws.dx, ws.dhidden, grad.shared_);
    dx += ws.dx;
  }

 private:
  SharedType shared_;
  Vector<scalar_type> gate_weight_;
  std::string gate_name_ = "shared_expert_gate.weight";
};

}  // namespace moe

#endif  // MOE_COMBINE_SHARED_EXPERT_COMBINER_HPP
