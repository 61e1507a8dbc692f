// Low-rank (LoRA) experts over a shared base, trained through a whole MoELayer under several
// routers, against central finite differences in double: L = sum(y * G) for dx, the router,
// every adapter and the base when it trains; a frozen base lists no parameter and gets no
// gradient. Routing decisions are piecewise constant: the data are random and every perturbed
// forward must route as the unperturbed one did.
#include <moe/moe.hpp>
#include <moe/train/optimizer.hpp>

#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "support/finite_difference.hpp"
#include "support/gradient_check.hpp"
#include "support/random.hpp"

namespace {

using moe::Index;
using moe::RowMatrix;
using moe::test::random_matrix;
using LowRankBase = moe::SharedExpertCombiner<moe::LinearExperts<double>, moe::SharedGate::none>;

template <class Router>
using LowRankLayer = moe::MoELayer<moe::LowRankExperts<double>, Router, LowRankBase>;

template <class Router>
LowRankLayer<Router> low_rank_layer(Index E, Index r, Router router, bool train_base, unsigned seed) {
  const Index d = router.input_dim();
  moe::LowRankExperts<double> adapters(E, d, r, 2.0 / static_cast<double>(r));
  adapters.a() = random_matrix(E * r, d, seed, 0.5);
  adapters.b() = random_matrix(E * d, r, seed + 1, 0.5);
  moe::LinearExperts<double> base(1, d, d);
  base.weights() = random_matrix(d, d, seed + 2, 0.5);
  base.set_trainable(train_base);
  return LowRankLayer<Router>(std::move(adapters), std::move(router), LowRankBase(std::move(base)));
}

template <class Router>
void low_rank_gradcheck(LowRankLayer<Router>& layer, Index T, unsigned seed) {
  RowMatrix<double> x = random_matrix(T, layer.input_dim(), seed);
  const RowMatrix<double> G = random_matrix(T, layer.output_dim(), seed + 1);
  moe::ForwardContext ctx;
  ctx.mode = moe::Mode::training;
  moe::Workspace<double> ws;
  RowMatrix<double> y(T, layer.output_dim()), dx(T, layer.input_dim());
  layer.forward(x, y, ws, ctx);
  const std::vector<Index> experts0 = ws.routing.expert;
  auto grads = layer.make_gradients();
  layer.backward(G, dx, ws, grads, moe::no_losses);
  moe::Workspace<double> ws2;
  const auto loss = [&] {
    layer.forward(x, y, ws2, ctx);
    REQUIRE(ws2.routing.expert == experts0);
    return (y.array() * G.array()).sum();
  };
  CHECK(moe::test::relative_gap(dx, moe::test::numeric_gradient(x, loss)) < 1e-6);
  moe::test::check_parameter_gradients(layer, grads, loss, 1e-6);
}

bool lists_base(const auto& layer) {
  bool found = false;
  layer.for_each_parameter([&](const std::string& name, const auto&) { found = found || name == "base.weight"; });
  return found;
}

}  // namespace

TEST_CASE("low-rank layers: dx, the router, the adapters and a trained base match finite differences",
          "[expert][low_rank][backward]") {
  for (const bool train_base : {true, false}) {
    INFO("base trains: " << train_base);
    {
      INFO("softmax top-2, E 4, r 2");
      auto layer = low_rank_layer(4, 2, moe::SoftmaxTopKRouter<double>(random_matrix(4, 6, 700), 2), train_base, 701);
      layer.combiner().shared_expert().names().weight = "base.weight";
      CHECK(lists_base(layer) == train_base);
      low_rank_gradcheck(layer, 9, 705);
    }
    {
      INFO("top-k then softmax (GPT-OSS rule), E 6, k 3, r 3");
      auto layer = low_rank_layer(6, 3, moe::TopKSoftmaxRouter<double>(random_matrix(6, 5, 710), 3), train_base, 711);
      low_rank_gradcheck(layer, 8, 715);
    }
    {
      INFO("top-p 0.7, at most 3 of E 5, r 1");
      auto layer = low_rank_layer(5, 1, moe::TopPRouter<double>(random_matrix(5, 4, 720, 1.5), 3, moe::TopP<double>{0.7}),
                                  train_base, 721);
      low_rank_gradcheck(layer, 10, 725);
    }
  }
}

TEST_CASE("a frozen base gets no gradient and stays put under an optimiser step", "[expert][low_rank][backward]") {
  auto layer = low_rank_layer(4, 2, moe::SoftmaxTopKRouter<double>(random_matrix(4, 6, 730), 2), false, 731);
  const RowMatrix<double> w0 = layer.combiner().shared_expert().weights();
  const RowMatrix<double> x = random_matrix(7, 6, 732);
  moe::ForwardContext ctx;
  ctx.mode = moe::Mode::training;
  moe::Workspace<double> ws;
  const RowMatrix<double> y = layer.forward(x, ws, ctx);
  auto grads = layer.make_gradients();
  (void)layer.backward(y, ws, grads, moe::no_losses);
  moe::Adam<double> opt(0.1);
  opt.step(layer, grads);
  CHECK(layer.combiner().shared_expert().weights() == w0);  // the optimiser never saw it
  CHECK(layer.experts().a() != low_rank_layer(4, 2, moe::SoftmaxTopKRouter<double>(random_matrix(4, 6, 730), 2), false, 731)
                                   .experts()
                                   .a());  // the adapters moved
}
