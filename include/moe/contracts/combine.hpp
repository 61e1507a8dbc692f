// What step 5 receives besides the plan and the expert outputs: the routing, the forward's
// context and the combiner's own scratch. Defined here, below every stage, so a combiner
// never includes the layer's Workspace.
#ifndef MOE_CONTRACTS_COMBINE_HPP
#define MOE_CONTRACTS_COMBINE_HPP

#include <moe/contracts/routing_result.hpp>
#include <moe/core/context.hpp>
#include <moe/core/types.hpp>

namespace moe {

/// Buffers a combiner may keep between its forward and its backward (a shared expert's
/// activations, output and gate; Soft MoE's combine weights). The Workspace owns one, so the
/// combiner itself stays const and stateless.
template <class S>
struct CombineScratch {
  RowMatrix<S> hidden;   ///< e.g. a shared expert's intermediates [T, hidden_cols]; SoftCombiner: C [T, E*p]
  RowMatrix<S> out;      ///< e.g. a shared expert's output [T, d_out]
  Vector<S> gate;        ///< e.g. a shared expert's sigmoid gate [T]
  RowMatrix<S> dout;     ///< backward scratch
  RowMatrix<S> dx;
  RowMatrix<S> dhidden;
};

/// The combiner's view of one call: the routing of step 1, the forward's context (its pool
/// and product kernel) and the scratch above.
template <class S>
struct CombineContext {
  const RoutingResult<S>& routing;
  const ForwardContext& forward;
  CombineScratch<S>& scratch;
  [[nodiscard]] ThreadPool* pool() const noexcept { return forward.pool; }
};

}  // namespace moe

#endif  // MOE_CONTRACTS_COMBINE_HPP
