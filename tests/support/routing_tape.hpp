// A small routing record the routing-tape tests (dispatch and io) share.
#ifndef MOE_TESTS_SUPPORT_ROUTING_TAPE_HPP
#define MOE_TESTS_SUPPORT_ROUTING_TAPE_HPP

#include <moe/dispatch/routing_tape.hpp>

namespace moe::test {

/// 3 tokens, top-2 over 4 experts, capacity 2, layer 5; token 2's first choice dropped.
inline RoutingRecord small_routing_record() {
  RoutingRecord r;
  r.layer_index = 5;
  r.num_tokens = 3;
  r.num_experts = 4;
  r.k = 2;
  r.capacity = 2;
  r.token = {0, 0, 1, 1, 2, 2};
  r.expert = {1, 3, 1, 0, 1, 2};
  r.gate = {0.75, 0.25, 0.5, 0.5, 0.125, 0.875};
  r.kept = {1, 1, 1, 1, 0, 1};
  return r;
}

}  // namespace moe::test

#endif  // MOE_TESTS_SUPPORT_ROUTING_TAPE_HPP
