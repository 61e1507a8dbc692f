// routing_switch_capacity: top-1 routing with a capacity, under both priority rules (Switch).
//
// The rule (moe::SwitchMoE = softmax top-1 not renormalised, moe::Capacity):
//   p = softmax(x Wg^T); each token goes to its argmax expert with gate p_max (<= 1)
//   capacity = ceil(capacity_factor * T * k / E) slots per expert (Capacity::from_factor)
//   when more tokens want an expert than it has slots, the first ones served keep a slot and
//   the rest are dropped: a dropped token gets y = 0 from the layer (in a Transformer block
//   the residual connection carries x past it)
//   Priority::position           serves tokens in batch order (GShard, Switch)
//   Priority::batch_prioritized  serves the most confident first: larger p_max first, equal
//                                p_max by token index (V-MoE's Batch Prioritized Routing)
// Priority only decides who is dropped; the kept rows stay in token order in the expert.
//   Capacity::rerouted(tries)    overflow rerouting: after the base policy (here position), a
//                                token whose expert is full goes to its next-best expert with a
//                                free slot (by p, up to `tries` of them), gate = its p there
//                                (docs/capacity.md#rerouting)
//
//   ./routing_switch_capacity
#include <moe/moe.hpp>

#include <cmath>
#include <cstdio>

#include "../example_util.hpp"

int main() {
  using S = double;  // double: the printed digits do not depend on the SIMD width
  constexpr moe::Index T = 8, E = 4, d = 8, ff = 16;
  constexpr double capacity_factor = 1.0;

  moe::FFNExperts<S, moe::Activation::relu> experts(E, d, ff);
  moe::examples::fill_normal(experts.wi(), 1, 1.0 / std::sqrt(double(d)));
  moe::examples::fill_normal(experts.wo(), 2, 1.0 / std::sqrt(double(ff)));
  moe::SoftmaxTopKRouter<S> router(E, d, 1, moe::SoftmaxTopK<S>{.renormalize = false});
  moe::examples::fill_normal(router.weight(), 3, 0.5);
  moe::SwitchMoE<S> layer(std::move(experts), std::move(router), {},
                          moe::Capacity::from_factor(capacity_factor, 0, moe::Priority::position));

  moe::RowMatrix<S> x(T, d);
  moe::examples::fill_normal(x, 4, 1.0);
  moe::Workspace<S> by_position, by_confidence, rerouting;
  const moe::RowMatrix<S> y_position = layer.forward(x, by_position);
  layer.set_capacity(moe::Capacity::from_factor(capacity_factor, 0, moe::Priority::batch_prioritized));
  const moe::RowMatrix<S> y_bpr = layer.forward(x, by_confidence);
  layer.set_capacity(moe::Capacity::from_factor(capacity_factor, 0, moe::Priority::position).rerouted(E - 1));
  (void)layer.forward(x, rerouting);

  const moe::RoutingResult<S>& r = by_position.routing;  // the same routing in both runs
  std::printf("Switch top-1 with capacity: %ld tokens, %ld experts, capacity factor %.2f -> %ld slots per expert\n",
              long(T), long(E), capacity_factor, long(by_position.plan.capacity));
  std::printf("token | p = softmax(x Wg^T)         | expert | gate = p_max | position | batch prioritized | rerouted\n");
  for (moe::Index t = 0; t < T; ++t) {
    std::printf("%5ld |", long(t));
    for (moe::Index e = 0; e < E; ++e) std::printf(" %.3f ", r.scores(t, e));
    // Each kept token has a nonzero output row; a dropped one gets exactly 0.
    std::printf("|   %ld    |    %.3f     |   %s   |   %s              |", long(r.expert[std::size_t(t)]),
                r.gate[std::size_t(t)], by_position.plan.kept(t) ? "kept" : (y_position.row(t).isZero(0) ? "DROP" : "????"),
                by_confidence.plan.kept(t) ? "kept" : (y_bpr.row(t).isZero(0) ? "DROP" : "????"));
    // Rerouting moves the assignment: the routing then holds the expert it landed on.
    const auto tu = std::size_t(t);
    if (!rerouting.plan.kept(t)) std::printf(" DROP\n");
    else if (rerouting.routing.expert[tu] != r.expert[tu])
      std::printf(" -> e%ld, gate %.3f\n", long(rerouting.routing.expert[tu]), rerouting.routing.gate[tu]);
    else std::printf(" kept\n");
  }
  const auto demand = r.expert_counts();
  for (const moe::Workspace<S>* ws : {&by_position, &by_confidence, &rerouting}) {
    std::printf("%-17s load (kept / wanted):",
                ws == &by_position ? "position" : ws == &by_confidence ? "batch prioritized" : "rerouted");
    for (moe::Index e = 0; e < E; ++e)
      std::printf(" e%ld %ld/%ld", long(e), long(ws->stats.expert_load[std::size_t(e)]), long(demand[std::size_t(e)]));
    std::printf("; dropped tokens:");
    for (moe::Index i : ws->plan.dropped) std::printf(" %ld", long(r.token[std::size_t(i)]));
    if (ws->plan.dropped.empty()) std::printf(" none");
    std::printf("\n");
  }
  return 0;
}
