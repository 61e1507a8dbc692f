// experts_recurrent: recurrent (GRU) experts routed once per sequence.
//
// The layer (moe::RecurrentMoE, moe::GRUExperts, moe::SequenceSoftmaxTopKRouter):
//   m_b = mean of sequence b's tokens; gates_b = softmax top-2 of m_b W^T, renormalised
//   every token of b goes to b's two experts, with b's gates
//   expert e runs a GRU (torch.nn.GRU's equations) over the whole sequence from h = 0
//   y_(b,t) = sum over b's experts of gate_(b,e) * h_t^(e)
// ForwardContext::sequence_length tells the layer where sequences end. Each expert's slab then
// holds whole sequences, and the executor hands it over in one call (expert_traits whole_slabs).
//
// The batch: 4 sequences of 6 tokens, two drifting one way and two the other. The program prints
// each sequence's experts and gates, a few outputs, and how a change to a sequence's first
// token carries to its later outputs (the recurrence) and to no other sequence.
//
//   ./experts_recurrent
#include <moe/layer/recurrent_moe.hpp>

#include <cmath>
#include <cstdio>

#include "../example_util.hpp"

int main() {
  using S = double;  // double: the printed digits do not depend on the SIMD width
  constexpr moe::Index B = 4, L = 6, d = 8, H = 8, E = 4, k = 2;

  moe::GRUExperts<S> experts(E, d, H);
  moe::examples::fill_normal(experts.weights_ih(), 1, 1.0 / std::sqrt(double(d)));
  moe::examples::fill_normal(experts.weights_hh(), 2, 1.0 / std::sqrt(double(H)));
  moe::examples::fill_normal(experts.biases_ih(), 3, 0.1);
  moe::examples::fill_normal(experts.biases_hh(), 4, 0.1);
  moe::SequenceSoftmaxTopKRouter<S> router(E, d, k);
  moe::examples::fill_normal(router.weight(), 5, 0.4);
  const moe::RecurrentMoE<S> layer(std::move(experts), std::move(router));

  // Sequences 0 and 2 drift along +direction, 1 and 3 along -direction.
  moe::RowMatrix<S> x(B * L, d), direction(1, d);
  moe::examples::fill_normal(x, 6, 0.5);
  moe::examples::fill_normal(direction, 7, 1.0);
  for (moe::Index b = 0; b < B; ++b)
    for (moe::Index s = 0; s < L; ++s) x.row(b * L + s) += (b % 2 == 0 ? 0.3 : -0.3) * double(s) * direction;

  moe::ForwardContext ctx;
  ctx.sequence_length = L;
  moe::Workspace<S> ws;
  const moe::RowMatrix<S> y = layer.forward(x, ws, ctx);

  std::printf("recurrent experts: %ld GRUs (d %ld -> hidden %ld), top-%ld per sequence; %ld sequences of %ld tokens\n",
              long(E), long(d), long(H), long(k), long(B), long(L));
  moe::RoutingResult<S> seq;
  layer.router().route_sequences(x, seq, ctx);
  std::printf("sequence | experts (gate)             | y[t][0..2] at t = 0 and t = %ld\n", long(L - 1));
  for (moe::Index b = 0; b < B; ++b) {
    std::printf("%8ld |", long(b));
    for (moe::Index j = 0; j < k; ++j)
      std::printf(" e%ld (%.4f)", long(seq.expert[std::size_t(b * k + j)]), seq.gate[std::size_t(b * k + j)]);
    std::printf("    | %+.4f %+.4f %+.4f  %+.4f %+.4f %+.4f\n", y(b * L, 0), y(b * L, 1), y(b * L, 2),
                y(b * L + L - 1, 0), y(b * L + L - 1, 1), y(b * L + L - 1, 2));
  }
  // Every token routed as its sequence: the layer's per-token routing repeats each sequence's pairs.
  bool shared = true;
  for (std::size_t i = 0; i < ws.routing.token.size(); ++i) {
    const std::size_t j = std::size_t(ws.routing.token[i] / L * k) + i % std::size_t(k);
    shared = shared && ws.routing.expert[i] == seq.expert[j] && ws.routing.gate[i] == seq.gate[j];
  }
  std::printf("every token has its sequence's experts and gates: %s\n", shared ? "yes" : "no");
  std::printf("rows per expert (whole sequences):");
  for (moe::Index e = 0; e < E; ++e) std::printf(" e%ld %ld", long(e), long(ws.plan.count(e)));
  std::printf("\n");

  // The recurrence: nudge sequence 0's first token; its later outputs move, other sequences' do not.
  moe::RowMatrix<S> nudged = x;
  nudged(0, 0) += 0.5;
  moe::Workspace<S> ws2;
  const moe::RowMatrix<S> y2 = layer.forward(nudged, ws2, ctx);
  std::printf("x[0][0] += 0.5: max |change of y_t| of sequence 0 by position:");
  for (moe::Index s = 0; s < L; ++s) std::printf(" %.4f", (y2.row(s) - y.row(s)).cwiseAbs().maxCoeff());
  std::printf("\n");
  const double others = (y2.bottomRows((B - 1) * L) - y.bottomRows((B - 1) * L)).cwiseAbs().maxCoeff();
  std::printf("largest change in sequences 1..3: %.1f\n", others);
  return 0;
}
