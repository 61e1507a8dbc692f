// DomainAwareRouter's backward, through a whole MoELayer (SwiGLU experts, weighted sum),
// against central finite differences in double: L = sum(y * G) (+ w * DomainLoss, the
// cross-entropy of q = softmax(x C^T) against ForwardContext::domain_ids, computed here by a
// scalar loop), for dx, Wg, C, A and the experts, over several E, D and k. Routing decisions
// are piecewise constant: the data are random, and every perturbed forward must route as the
// unperturbed one did.
#include <moe/moe.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
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

using DomainLayer = moe::MoELayer<moe::SwiGLUExperts<double>, moe::DomainAwareSoftmaxTopKRouter<double>,
                                  moe::WeightedSumCombiner<double>>;

/// mean over tokens of -log softmax(x C^T)[t, ids[t]], by loops (log-sum-exp).
double domain_grad_cross_entropy(const RowMatrix<double>& x, const RowMatrix<double>& C,
                                 const std::vector<std::int64_t>& ids) {
  double total = 0;
  for (Index t = 0; t < x.rows(); ++t) {
    std::vector<double> z(static_cast<size_t>(C.rows()), 0.0);
    for (Index j = 0; j < C.rows(); ++j)
      for (Index i = 0; i < x.cols(); ++i) z[size_t(j)] += x(t, i) * C(j, i);
    const double max = *std::max_element(z.begin(), z.end());
    double sum = 0;
    for (const double v : z) sum += std::exp(v - max);
    total += -(z[size_t(ids[size_t(t)])] - max - std::log(sum));
  }
  return total / static_cast<double>(x.rows());
}

/// A layer of E SwiGLU experts over width 5 (ff 4), D domains, top-k; router tensors N(0, 1)
/// (affinity N(0, 1.5^2), so the domain term moves the logits), experts N(0, 0.3^2).
DomainLayer domain_grad_layer(Index E, Index D, Index k, unsigned seed) {
  moe::DomainAwareSoftmaxTopKRouter<double> router(moe::SoftmaxTopKRouter<double>(random_matrix(E, 5, seed), k),
                                                   random_matrix(D, 5, seed + 1), random_matrix(D, E, seed + 2, 1.5));
  return DomainLayer(moe::test::swiglu<double>(E, 5, 4, seed + 3), std::move(router));
}

/// Checks dx and every parameter gradient for L = sum(y * G) + domain_weight * CE(q, ids)
/// (domain_weight 0: no loss in the list). g_scale 0 drops the sum(y * G) term.
void domain_gradcheck(DomainLayer& layer, Index T, double domain_weight, unsigned seed, double g_scale = 1.0) {
  const Index D = layer.router().num_domains();
  RowMatrix<double> x = random_matrix(T, layer.input_dim(), seed);
  const RowMatrix<double> G = g_scale * random_matrix(T, layer.output_dim(), seed + 1);
  std::mt19937 gen(seed + 2);
  std::uniform_int_distribution<std::int64_t> pick(0, D - 1);
  std::vector<std::int64_t> ids(static_cast<size_t>(T));
  for (auto& id : ids) id = pick(gen);
  moe::ForwardContext ctx;
  ctx.mode = moe::Mode::training;
  ctx.domain_ids = ids;

  moe::Workspace<double> ws;
  RowMatrix<double> y(T, layer.output_dim());
  layer.forward(x, y, ws, ctx);
  const std::vector<Index> experts0 = ws.routing.expert;
  auto grads = layer.make_gradients();
  RowMatrix<double> dx(T, layer.input_dim());
  if (domain_weight == 0)
    layer.backward(G, dx, ws, grads, moe::no_losses);
  else
    layer.backward(G, dx, ws, grads, moe::losses(moe::weighted(moe::DomainLoss{}, domain_weight)));

  moe::Workspace<double> ws2;
  const auto loss = [&] {
    layer.forward(x, y, ws2, ctx);
    REQUIRE(ws2.routing.expert == experts0);
    double l = (y.array() * G.array()).sum();
    if (domain_weight != 0) l += domain_weight * domain_grad_cross_entropy(x, layer.router().classifier(), ids);
    return l;
  };
  CHECK(moe::test::relative_gap(dx, moe::test::numeric_gradient(x, loss)) < 1e-6);
  moe::test::check_parameter_gradients(layer, grads, loss, 1e-6);
}

struct DomainGradConfig {
  Index E, D, k;
};
constexpr DomainGradConfig domain_grad_configs[] = {{4, 2, 1}, {6, 3, 2}, {5, 4, 3}, {8, 3, 2}, {4, 1, 2}, {3, 5, 3}};

}  // namespace

TEST_CASE("domain-aware layer: dx, Wg, C, A and the experts' gradients match finite differences",
          "[router][backward][domain]") {
  unsigned seed = 100;
  for (const auto& c : domain_grad_configs) {
    INFO("E " << c.E << ", D " << c.D << ", k " << c.k);
    DomainLayer layer = domain_grad_layer(c.E, c.D, c.k, seed);
    domain_gradcheck(layer, 9, 0.0, seed + 5);
    seed += 10;
  }
}

TEST_CASE("domain-aware layer with the supervised domain loss: gradients match finite differences",
          "[router][backward][domain][loss]") {
  unsigned seed = 200;
  for (const auto& c : domain_grad_configs)
    for (const double w : {0.4, 3.0}) {
      INFO("E " << c.E << ", D " << c.D << ", k " << c.k << ", weight " << w);
      DomainLayer layer = domain_grad_layer(c.E, c.D, c.k, seed);
      domain_gradcheck(layer, 10, w, seed + 5);
      seed += 10;
    }
}

TEST_CASE("the domain loss alone reaches the classifier only", "[router][backward][domain][loss]") {
  // G = 0: L = w * CE(q). Its gradient reaches C (and x through C), nothing else.
  for (const auto& c : domain_grad_configs) {
    INFO("E " << c.E << ", D " << c.D << ", k " << c.k);
    DomainLayer layer = domain_grad_layer(c.E, c.D, c.k, 400);
    domain_gradcheck(layer, 8, 0.9, 405, /*g_scale=*/0.0);
    // Rerun to look at the gradients themselves.
    RowMatrix<double> x = random_matrix(8, 5, 405);
    std::vector<std::int64_t> ids(8);
    for (size_t t = 0; t < ids.size(); ++t) ids[t] = static_cast<std::int64_t>(t % static_cast<size_t>(c.D));
    moe::ForwardContext ctx;
    ctx.mode = moe::Mode::training;
    ctx.domain_ids = ids;
    moe::Workspace<double> ws;
    RowMatrix<double> y(8, 5), dx(8, 5);
    layer.forward(x, y, ws, ctx);
    auto grads = layer.make_gradients();
    layer.backward(RowMatrix<double>::Zero(8, 5), dx, ws, grads, moe::losses(moe::weighted(moe::DomainLoss{}, 0.9)));
    CHECK(grads.router.weight().isZero(0.0));
    CHECK(grads.router.affinity().isZero(0.0));
    grads.experts.for_each_parameter([](const std::string& name, const auto& g) {
      INFO(name);
      CHECK(g.isZero(0.0));
    });
    if (c.D > 1) CHECK(grads.router.classifier().cwiseAbs().maxCoeff() > 0);
  }
}

TEST_CASE("domain-aware router: the domain loss's weights add up, and a zero weight adds nothing",
          "[router][backward][domain][loss]") {
  DomainLayer layer = domain_grad_layer(6, 3, 2, 500);
  RowMatrix<double> x = random_matrix(7, 5, 501);
  const RowMatrix<double> G = random_matrix(7, 5, 502);
  const std::vector<std::int64_t> ids = {0, 2, 1, 1, 0, 2, 2};
  moe::ForwardContext ctx;
  ctx.mode = moe::Mode::training;
  ctx.domain_ids = ids;
  moe::Workspace<double> ws;
  RowMatrix<double> y(7, 5), dx(7, 5);
  layer.forward(x, y, ws, ctx);
  auto one = layer.make_gradients(), two = layer.make_gradients(), none = layer.make_gradients(),
       zero = layer.make_gradients();
  layer.backward(G, dx, ws, one, moe::losses(moe::weighted(moe::DomainLoss{}, 0.75)));
  layer.backward(G, dx, ws, two,
                 moe::losses(moe::weighted(moe::DomainLoss{}, 0.5), moe::weighted(moe::DomainLoss{}, 0.25)));
  layer.backward(G, dx, ws, none, moe::no_losses);
  layer.backward(G, dx, ws, zero, moe::losses(moe::weighted(moe::DomainLoss{}, 0.0)));
  CHECK((one.router.classifier() - two.router.classifier()).cwiseAbs().maxCoeff() < 1e-14);
  CHECK(none.router.classifier() == zero.router.classifier());
  CHECK((one.router.classifier() - none.router.classifier()).cwiseAbs().maxCoeff() > 1e-3);
}
