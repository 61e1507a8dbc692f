// routing_hash_routing: hash routing by token id (Roller et al. 2021).
//
// The rule (moe::HashRouter, moe::HashMoE):
//   expert(t) = table[token_ids[t]]        a fixed table over the vocabulary, or
//   expert(t) = hash(token_ids[t]) mod E   the stateless mode (no table)
//   gate      = 1
// The router reads the token ids, never the activations, and has no parameters: there is
// nothing to learn and no balancing loss. HashRouter::balanced builds a random table in which
// every expert gets floor(V / E) or ceil(V / E) ids, so the load over the vocabulary is
// balanced; the load of one batch depends on which ids it holds. The same id always goes to
// the same expert, wherever it sits in the batch.
//
//   ./routing_hash_routing
#include <moe/moe.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "../example_util.hpp"

int main() {
  using S = double;  // double: the printed digits do not depend on the SIMD width
  constexpr moe::Index T = 8, E = 4, d = 8, ff = 16, vocab = 12;

  moe::SwiGLUExperts<S> experts(E, d, ff);
  moe::examples::fill_normal(experts.gate_up(), 1, 1.0 / std::sqrt(double(d)));
  moe::examples::fill_normal(experts.down(), 2, 1.0 / std::sqrt(double(ff)));
  const moe::HashMoE<S> layer(std::move(experts), moe::HashRouter<S>::balanced(vocab, E, d, /*seed=*/7));

  moe::RowMatrix<S> x(T, d);
  moe::examples::fill_normal(x, 4, 1.0);
  // Token ids of this batch ("the cat sat on the mat , the"): id 3 comes three times.
  const std::vector<std::int64_t> ids = {3, 8, 5, 10, 3, 1, 0, 3};
  moe::ForwardContext ctx;
  ctx.token_ids = ids;
  moe::Workspace<S> ws;
  const moe::RowMatrix<S> y = layer.forward(x, ws, ctx);

  const std::vector<moe::Index>& table = layer.router().table();
  std::printf("hash routing (Roller 2021): balanced table over %ld ids, %ld experts\n", long(vocab), long(E));
  std::printf("table: id -> expert\n ");
  for (moe::Index v = 0; v < vocab; ++v) std::printf(" %ld->%ld", long(v), long(table[std::size_t(v)]));
  std::printf("\nids per expert:");
  for (moe::Index e = 0; e < E; ++e) {
    int n = 0;
    for (moe::Index v : table) n += v == e;
    std::printf(" e%ld %d", long(e), n);
  }
  std::printf("\ntoken | id | expert | gate\n");
  const moe::RoutingResult<S>& r = ws.routing;  // one triple per token, in token order
  for (moe::Index t = 0; t < T; ++t)
    std::printf("%5ld | %2ld |   %ld    | %.3f\n", long(t), long(ids[std::size_t(t)]), long(r.expert[std::size_t(t)]),
                r.gate[std::size_t(t)]);
  std::printf("per-expert load:");
  for (moe::Index e = 0; e < E; ++e) std::printf(" e%ld %ld", long(e), long(ws.stats.expert_load[std::size_t(e)]));
  std::printf("; dropped %ld of %ld (dropless)\n", long(ws.stats.dropped), long(ws.stats.assignments));

  // The stateless mode needs no table: any id >= 0 routes, by a hash of the id.
  const auto stateless = moe::HashRouter<S>::stateless(E, d, /*seed=*/7);
  std::printf("stateless hash, seed 7: id -> expert\n ");
  for (std::int64_t id : {0, 1, 3, 5, 8, 10, 50000, 123456789})
    std::printf(" %ld->%ld", long(id), long(stateless.expert_of(id)));
  std::printf("\noutput [%ld x %ld], finite: %s\n", long(y.rows()), long(y.cols()), y.allFinite() ? "yes" : "no");
  return 0;
}
