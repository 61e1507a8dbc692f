// routing_modality_experts: modality-specific experts with shared cross-modal experts (MoMa,
// Lin et al. 2024; VLMo, Bao et al. 2021).
//
// The rule (moe::ModalityRouter, moe::ModalitySoftmaxTopKRouter):
//   open(t) = { e : expert_modality[e] == modality(t) or expert_modality[e] == -1 (shared) }
//   logits  = x Wg^T, set to -inf outside open(t)
//   p       = softmax over the open experts (0 elsewhere);  chosen = the top 2;  gates = p / sum
// A text token can only reach the text experts and the shared ones, an image token the image
// experts and the shared ones, and so on: the routing never crosses a modality. The
// modality of each token comes with the batch (ForwardContext::modality_ids). The balancing
// loss is per modality (moe::ModalityLoadBalancingLoss): for modality m with N_m tokens and
// E_m open experts, aux_m = E_m * sum_{e open} f_e P_e, f_e the share of m's assignments on
// e, P_e the mean of p_e over m's tokens; the loss is the mean over the modalities present,
// and equals k = 2 when every modality spreads its tokens evenly over its open experts.
//
//   ./routing_modality_experts
#include <moe/moe.hpp>

#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "../example_util.hpp"

int main() {
  using S = double;  // double: the printed digits do not depend on the SIMD width
  constexpr moe::Index T = 12, E = 8, d = 8, ff = 16, k = 2, M = 3;
  const std::array<const char*, M> modality_name = {"text", "image", "audio"};
  // Two experts per modality, then two shared (cross-modal) experts.
  const std::vector<moe::Index> expert_modality = {0, 0, 1, 1, 2, 2, -1, -1};

  moe::SwiGLUExperts<S> experts(E, d, ff);
  moe::examples::fill_normal(experts.gate_up(), 1, 1.0 / std::sqrt(double(d)));
  moe::examples::fill_normal(experts.down(), 2, 1.0 / std::sqrt(double(ff)));
  moe::ModalitySoftmaxTopKRouter<S> router(E, d, k, expert_modality, M, moe::SoftmaxTopK<S>{.renormalize = true});
  moe::examples::fill_normal(router.weight(), 3, 0.5);
  // The same weights without the mask, to show where the tokens would have gone.
  moe::SoftmaxTopKRouter<S> unmasked(E, d, k, moe::SoftmaxTopK<S>{.renormalize = true});
  unmasked.weight() = router.weight();
  using Layer = moe::MoELayer<moe::SwiGLUExperts<S>, moe::ModalitySoftmaxTopKRouter<S>, moe::WeightedSumCombiner<S>>;
  const Layer layer(std::move(experts), std::move(router), moe::WeightedSumCombiner<S>{});

  moe::RowMatrix<S> x(T, d);
  moe::examples::fill_normal(x, 4, 1.0);
  // One interleaved multimodal batch: a caption, four image patches, a word, three audio
  // frames, a word.
  const std::vector<std::int64_t> ids = {0, 0, 0, 1, 1, 1, 1, 0, 2, 2, 2, 0};
  moe::ForwardContext ctx;
  ctx.modality_ids = ids;
  moe::Workspace<S> ws;
  const moe::RowMatrix<S> y = layer.forward(x, ws, ctx);
  moe::RoutingResult<S> free_routing;
  unmasked.route(x, free_routing);

  const auto& r = ws.routing;  // k triples per token, best first
  std::printf("modality experts (MoMa, VLMo): %ld tokens, %ld modalities, %ld experts, top-%ld renormalised\n",
              long(T), long(M), long(E), long(k));
  std::printf("experts:");
  for (moe::Index e = 0; e < E; ++e) {
    const moe::Index m = expert_modality[std::size_t(e)];
    std::printf(" e%ld %s%s", long(e), m < 0 ? "shared" : modality_name[std::size_t(m)], e + 1 < E ? "," : "\n");
  }
  std::printf("\ntoken modality | %-47s | top-%ld | gates       | unmasked top-%ld\n",
              "p = softmax over the open experts (. = closed)", long(k), long(k));
  moe::Index would_cross = 0;
  for (moe::Index t = 0; t < T; ++t) {
    const auto m = moe::Index(ids[std::size_t(t)]);
    std::printf("%5ld %-8s |", long(t), modality_name[std::size_t(m)]);
    for (moe::Index e = 0; e < E; ++e) {
      if (layer.router().allows(m, e)) std::printf(" %.3f", r.scores(t, e));
      else std::printf("   .  ");
    }
    std::printf(" |  %ld %ld  | %.3f %.3f |", long(r.expert[std::size_t(t * k)]), long(r.expert[std::size_t(t * k + 1)]),
                r.gate[std::size_t(t * k)], r.gate[std::size_t(t * k + 1)]);
    bool crosses = false;
    for (moe::Index j = 0; j < k; ++j) {
      const moe::Index e = free_routing.expert[std::size_t(t * k + j)];
      crosses = crosses || !layer.router().allows(m, e);
      std::printf(" %ld", long(e));
    }
    if (crosses) {
      ++would_cross;
      std::printf("  (crosses)");
    }
    std::printf("\n");
  }
  std::printf("without the mask, %ld of %ld tokens would route to an expert of another modality\n\n",
              long(would_cross), long(T));

  // Where each modality's tokens went: its own experts, the shared ones, nowhere else.
  const moe::ModalityLoad load = layer.router().load(r, ids);
  std::printf("assignments per modality (router.load):\n");
  std::printf("modality tokens |");
  for (moe::Index e = 0; e < E; ++e) std::printf(" e%ld", long(e));
  std::printf(" | own shared other\n");
  moe::Index outside = 0;
  for (moe::Index m = 0; m < M; ++m) {
    std::printf("%-8s %6ld |", modality_name[std::size_t(m)], long(load.tokens[std::size_t(m)]));
    moe::Index own = 0, shared = 0, other = 0;
    for (moe::Index e = 0; e < E; ++e) {
      const moe::Index n = load.count(m, e);
      const moe::Index owner = expert_modality[std::size_t(e)];
      if (owner == m) own += n;
      else if (owner == moe::ModalitySoftmaxTopKRouter<S>::shared) shared += n;
      else other += n;
      if (layer.router().allows(m, e)) std::printf(" %2ld", long(n));
      else std::printf("  .");
    }
    std::printf(" | %3ld %6ld %5ld\n", long(own), long(shared), long(other));
    outside += other;
  }
  std::printf("assignments outside a modality's experts: %ld of %ld\n\n", long(outside), long(r.size()));

  // The per-modality balancing loss, read from the routing and the forward's context.
  const moe::ModalityLoadBalancingLoss aux(layer.router().expert_modality(), M);
  const moe::LossInput<S> in{r, moe::BackwardContext{ctx}};
  const std::vector<S> per_modality = aux.per_modality(in);
  std::printf("modality load-balancing loss (aux_m = E_m * sum f_e P_e over m's open experts; %ld at balance):\n",
              long(k));
  for (moe::Index m = 0; m < M; ++m)
    std::printf("  aux_%-5s = %.4f   (%ld open experts, %ld tokens)\n", modality_name[std::size_t(m)],
                per_modality[std::size_t(m)], long(layer.router().open_experts(m)), long(load.tokens[std::size_t(m)]));
  std::printf("  value     = %.4f   (mean over the %ld modalities present)\n", aux.value(in), long(M));
  std::printf("output [%ld x %ld], finite: %s\n", long(y.rows()), long(y.cols()), y.allFinite() ? "yes" : "no");
  return 0;
}
