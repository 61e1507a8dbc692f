// ModalityRouter's backward, through a whole MoELayer (SwiGLU experts, weighted sum), against
// central finite differences in double: L = sum(y * G) (+ w * ModalityLoadBalancingLoss), for
// dx and every parameter, over several tables (with and without cross-modal experts, a
// modality with one open expert and k = 1), k, M and gating settings. Routing decisions are
// piecewise constant: the data are random, and every perturbed forward must route as the
// unperturbed one did (no selection flips under the step of 1e-6).
#include <moe/moe.hpp>

#include <catch2/catch.hpp>

#include <cstdint>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "support/finite_difference.hpp"
#include "support/gradient_check.hpp"
#include "support/random.hpp"

namespace {

using moe::Index;
using moe::RowMatrix;
using moe::test::random_matrix;

using ModalityLayer = moe::MoELayer<moe::SwiGLUExperts<double>, moe::ModalitySoftmaxTopKRouter<double>,
                                    moe::WeightedSumCombiner<double>>;

struct ModalityGradConfig {
  std::vector<Index> table;
  Index M = 1;
  Index k = 1;
  bool renormalize = true;
  /// Modalities the batch holds (ids cycle through them, then random among them); empty: all.
  std::vector<std::int64_t> present{};
};

/// A layer of the config's E experts over width d = 5 (ff 4), N(0, 1) router weight and
/// N(0, 0.3^2) experts, from seed.
ModalityLayer modality_grad_layer(const ModalityGradConfig& c, unsigned seed) {
  const auto E = static_cast<Index>(c.table.size());
  moe::ModalitySoftmaxTopKRouter<double> router(
      moe::SoftmaxTopKRouter<double>(random_matrix(E, 5, seed), c.k, moe::SoftmaxTopK<double>{c.renormalize}),
      c.table, c.M);
  return ModalityLayer(moe::test::swiglu<double>(E, 5, 4, seed + 1), std::move(router));
}

std::vector<std::int64_t> modality_grad_ids(const ModalityGradConfig& c, Index T, unsigned seed) {
  std::vector<std::int64_t> present = c.present;
  if (present.empty())
    for (Index m = 0; m < c.M; ++m) present.push_back(m);
  std::mt19937 gen(seed);
  std::uniform_int_distribution<std::size_t> pick(0, present.size() - 1);
  std::vector<std::int64_t> ids(static_cast<std::size_t>(T));
  for (std::size_t t = 0; t < ids.size(); ++t) ids[t] = t < present.size() ? present[t] : present[pick(gen)];
  return ids;
}

/// Checks dx and every parameter gradient of layer for L = sum(y * G) + aux_weight * the
/// per-modality balancing loss (aux_weight 0: the loss list is empty).
void modality_gradcheck(ModalityLayer& layer, const std::vector<std::int64_t>& ids, double aux_weight,
                        unsigned seed) {
  const auto T = static_cast<Index>(ids.size());
  RowMatrix<double> x = random_matrix(T, layer.input_dim(), seed);
  const RowMatrix<double> G = random_matrix(T, layer.output_dim(), seed + 1);
  moe::ForwardContext ctx;
  ctx.mode = moe::Mode::training;
  ctx.modality_ids = ids;
  const moe::ModalityLoadBalancingLoss aux(layer.router().expert_modality(), layer.router().num_modalities());

  moe::Workspace<double> ws;
  RowMatrix<double> y(T, layer.output_dim());
  layer.forward(x, y, ws, ctx);
  const std::vector<Index> experts0 = ws.routing.expert;
  auto grads = layer.make_gradients();
  RowMatrix<double> dx(T, layer.input_dim());
  if (aux_weight == 0)
    layer.backward(G, dx, ws, grads, moe::no_losses);
  else
    layer.backward(G, dx, ws, grads, moe::losses(moe::weighted(aux, aux_weight)));

  moe::Workspace<double> ws2;
  const auto loss = [&] {
    layer.forward(x, y, ws2, ctx);
    REQUIRE(ws2.routing.expert == experts0);
    double l = (y.array() * G.array()).sum();
    if (aux_weight != 0) l += aux_weight * aux.value(moe::LossInput<double>{ws2.routing, moe::BackwardContext{ctx}});
    return l;
  };
  CHECK(moe::test::relative_gap(dx, moe::test::numeric_gradient(x, loss)) < 1e-6);
  moe::test::check_parameter_gradients(layer, grads, loss, 1e-6);
}

const std::vector<ModalityGradConfig>& modality_grad_configs() {
  static const std::vector<ModalityGradConfig> configs = {
      {{0, 0, 1, 1, -1, -1}, 2, 2},                                 // contiguous, two shared
      {{2, -1, 0, 1, 0, 2, 1, -1}, 3, 3},                           // interleaved, k = 3
      {{1, 0, 1, 0, 0, 1}, 2, 2},                                   // no cross-modal expert
      {{0, 1, 1, 2, 2}, 3, 1},                                      // modality 0: one open expert, k = 1, none shared
      {{0, 1, 1, 1, -1, 1}, 2, 1, false},                           // Switch-like: k = 1, not renormalised
      {{0, -1, 0, 1, 1, 2, 2, -1}, 3, 2, true, {0, 2}},             // modality 1 absent from the batch
      {{-1, 0, 0, 0}, 1, 2},                                        // one modality
  };
  return configs;
}

}  // namespace

TEST_CASE("modality router layer: dx and every parameter gradient match finite differences",
          "[router][backward][modality]") {
  unsigned seed = 100;
  for (const auto& c : modality_grad_configs()) {
    INFO("E " << c.table.size() << ", M " << c.M << ", k " << c.k << ", renormalise " << c.renormalize);
    ModalityLayer layer = modality_grad_layer(c, seed);
    modality_gradcheck(layer, modality_grad_ids(c, 9, seed + 2), 0.0, seed + 3);
    seed += 10;
  }
}

TEST_CASE("modality router layer with the per-modality balancing loss: gradients match finite differences",
          "[router][backward][modality][loss]") {
  unsigned seed = 200;
  for (const auto& c : modality_grad_configs())
    for (const double w : {0.3, 2.0}) {
      INFO("E " << c.table.size() << ", M " << c.M << ", k " << c.k << ", renormalise " << c.renormalize
                << ", weight " << w);
      ModalityLayer layer = modality_grad_layer(c, seed);
      modality_gradcheck(layer, modality_grad_ids(c, 11, seed + 2), w, seed + 3);
      seed += 10;
    }
}

TEST_CASE("the per-modality balancing loss alone reaches the gate weight only, and only the open rows",
          "[router][backward][modality][loss]") {
  // G = 0: L = w * aux. The experts get nothing; gate row e gets gradient only from the
  // modalities present that allow e (expert 5 belongs to modality 2, absent here).
  const ModalityGradConfig c{{0, 1, -1, 0, 1, 2}, 3, 2, true, {0, 1}};
  ModalityLayer layer = modality_grad_layer(c, 300);
  const auto ids = modality_grad_ids(c, 10, 301);
  RowMatrix<double> x = random_matrix(10, 5, 302);
  moe::ForwardContext ctx;
  ctx.mode = moe::Mode::training;
  ctx.modality_ids = ids;
  const moe::ModalityLoadBalancingLoss aux(c.table, c.M);
  moe::Workspace<double> ws;
  RowMatrix<double> y(10, 5);
  layer.forward(x, y, ws, ctx);
  const std::vector<Index> experts0 = ws.routing.expert;
  auto grads = layer.make_gradients();
  RowMatrix<double> dx(10, 5);
  layer.backward(RowMatrix<double>::Zero(10, 5), dx, ws, grads, moe::losses(moe::weighted(aux, 0.7)));
  moe::Workspace<double> ws2;
  const auto loss = [&] {
    layer.forward(x, y, ws2, ctx);
    REQUIRE(ws2.routing.expert == experts0);
    return 0.7 * aux.value(moe::LossInput<double>{ws2.routing, moe::BackwardContext{ctx}});
  };
  CHECK(moe::test::relative_gap(dx, moe::test::numeric_gradient(x, loss)) < 1e-6);
  moe::test::check_parameter_gradients(layer, grads, loss, 1e-6);
  grads.experts.for_each_parameter([](const std::string& name, const auto& g) {
    INFO(name);
    CHECK(g.isZero(0.0));
  });
  CHECK(grads.router.weight().row(5).isZero(0.0));
  CHECK(grads.router.weight().row(2).cwiseAbs().maxCoeff() > 0);
}
