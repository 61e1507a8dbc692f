// Step 2 of the dense path (Soft MoE): the plan of E slabs of B*p slots.
#ifndef MOE_DISPATCH_SLOT_PLAN_HPP
#define MOE_DISPATCH_SLOT_PLAN_HPP

#include <moe/contracts/dispatch_plan.hpp>
#include <moe/contracts/slot_layout.hpp>
#include <moe/core/types.hpp>

namespace moe {

/// Step 2 of the dense path: expert e's slab is rows [e*B*p, (e+1)*B*p). Every slot is
/// filled, so capacity (= B*p, the rows each expert takes) never drops anything. A dense plan
/// has offsets only: token, gate, assignment and slot_of stay empty, since a slot mixes every
/// token of its sequence.
template <class S>
void build_slot_plan(const SlotLayout& layout, Index num_tokens, DispatchPlan<S>& plan) {
  const Index E = layout.num_experts;
  plan.num_tokens = num_tokens;
  plan.num_experts = E;
  plan.capacity = layout.rows_per_expert();
  plan.offsets.resize(static_cast<std::size_t>(E) + 1);
  for (Index e = 0; e <= E; ++e) plan.offsets[static_cast<std::size_t>(e)] = e * layout.rows_per_expert();
  plan.token.clear();
  plan.gate.clear();
  plan.assignment.clear();
  plan.slot_of.clear();
  plan.dropped.clear();
}

}  // namespace moe

#endif  // MOE_DISPATCH_SLOT_PLAN_HPP
