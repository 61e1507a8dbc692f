// The whole layer's backward against central finite differences in double, for every router
// x expert bank: dL/dx and every parameter gradient (layer.for_each_parameter paired in order
// with grads.for_each_parameter), L = sum(y * G) (+ weighted auxiliary losses where a
// configuration asks). Routing decisions are piecewise constant: the inputs are random (no
// near-ties at these seeds), and every perturbed forward must route and drop exactly as the
// unperturbed one did.
#include <moe/loss/importance_loss.hpp>
#include <moe/moe.hpp>
#include <moe/router/expert_choice_router.hpp>
#include <moe/router/hash_router.hpp>
#include <moe/router/jitter.hpp>
#include <moe/router/noisy_top_k_router.hpp>

#include <catch2/catch.hpp>

#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "support/finite_difference.hpp"
#include "support/gradient_check.hpp"
#include "support/random.hpp"

namespace {

using moe::Index;
using moe::RowMatrix;
using S = double;

constexpr Index kTokens = 6, kDim = 4, kFF = 3, kExperts = 4;

using moe::test::random_matrix;

/// An expert bank of E experts with every parameter (biases included, where the bank has
/// optional ones) drawn at random.
template <class ExpertType>
ExpertType random_experts(Index E, unsigned seed) {
  ExpertType experts(E, kDim, kFF);
  if constexpr (requires { experts.enable_biases(); }) experts.enable_biases();
  std::mt19937 gen(seed);
  std::normal_distribution<double> n(0.0, 0.5);
  experts.for_each_parameter([&](const std::string&, auto&& block) {
    for (Index r = 0; r < block.rows(); ++r)
      for (Index c = 0; c < block.cols(); ++c) block(r, c) = n(gen);
  });
  return experts;
}

/// What a configuration adds to L besides sum(y * G), for losses the layer's LossWeights
/// read but RoutingResult alone cannot give (noisy top-k's importance and load).
template <class Layer>
using ExtraLoss = std::function<double(const Layer&, const RowMatrix<S>&, const moe::Workspace<S>&)>;

template <class Layer>
void gradcheck(Layer& layer, moe::ForwardContext ctx, const moe::LossWeights<S>& weights = {},
               ExtraLoss<Layer> extra = {}) {
  ctx.mode = moe::Mode::training;
  RowMatrix<S> x = random_matrix(kTokens, layer.input_dim(), 101);
  const RowMatrix<S> g = random_matrix(kTokens, layer.output_dim(), 102);
  moe::Workspace<S> ws;
  RowMatrix<S> y(kTokens, layer.output_dim());
  layer.forward(x, y, ws, ctx);
  const std::vector<Index> experts0 = ws.routing.expert, tokens0 = ws.routing.token;
  const std::vector<Index> slots0 = ws.plan.slot_of;

  auto grads = layer.make_gradients();
  const RowMatrix<S> dx = layer.backward(g, ws, grads, weights);

  moe::Workspace<S> ws2;
  const auto loss = [&] {
    layer.forward(x, y, ws2, ctx);
    REQUIRE(ws2.routing.expert == experts0);
    REQUIRE(ws2.routing.token == tokens0);
    REQUIRE(ws2.plan.slot_of == slots0);
    double l = (y.array() * g.array()).sum();
    if (weights.aux != 0) l += weights.aux * moe::LoadBalancingLoss{}(ws2.routing);
    if (weights.z != 0) l += weights.z * moe::RouterZLoss{}(ws2.routing);
    if (extra) l += extra(layer, x, ws2);
    return l;
  };

  CHECK(moe::test::relative_gap(dx, moe::test::numeric_gradient(x, loss)) < 1e-6);
  moe::test::check_parameter_gradients(layer, grads, loss, 1e-6);
}

template <class Experts, class Router, class Combiner = moe::WeightedSumCombiner<S>>
void check(Experts experts, Router router, Combiner combiner = {}, moe::Capacity capacity = {},
           moe::ForwardContext ctx = {}, const moe::LossWeights<S>& weights = {}) {
  moe::MoELayer<Experts, Router, Combiner> layer(std::move(experts), std::move(router), std::move(combiner), capacity);
  gradcheck(layer, ctx, weights);
}

template <class Kind>
struct ExpertKind {
  using type = Kind;
};
using ExpertKinds = std::tuple<ExpertKind<moe::SwiGLUExperts<S>>, ExpertKind<moe::GptOssExperts<S>>,
                               ExpertKind<moe::FFNExperts<S, moe::Activation::relu>>,
                               ExpertKind<moe::FFNExperts<S, moe::Activation::gelu_erf>>,
                               ExpertKind<moe::FFNExperts<S, moe::Activation::gelu_tanh>>,
                               ExpertKind<moe::FFNExperts<S, moe::Activation::silu>>>;

const Index all_k[] = {1, 2, kExperts};

}  // namespace

TEMPLATE_LIST_TEST_CASE("softmax top-k layers' gradients match finite differences", "[layer][backward][gradcheck]",
                        ExpertKinds) {
  using E = typename TestType::type;
  for (const bool renorm : {true, false})
    for (const Index k : all_k) {
      INFO("softmax top-k, renormalise " << renorm << ", k " << k);
      check(random_experts<E>(kExperts, 1),
            moe::SoftmaxTopKRouter<S>(random_matrix(kExperts, kDim, 2), k, moe::SoftmaxTopK<S>{renorm}));
    }
  INFO("softmax top-2 with aux and z losses");
  moe::LossWeights<S> w;
  w.aux = 0.3;
  w.z = 0.05;
  check(random_experts<E>(kExperts, 1), moe::SoftmaxTopKRouter<S>(random_matrix(kExperts, kDim, 2), 2),
        moe::WeightedSumCombiner<S>{}, {}, {}, w);
}

TEMPLATE_LIST_TEST_CASE("top-k-then-softmax layers with a router bias: gradients match finite differences",
                        "[layer][backward][gradcheck]", ExpertKinds) {
  using E = typename TestType::type;
  for (const Index k : all_k) {
    INFO("top-k softmax, k " << k);
    check(random_experts<E>(kExperts, 3),
          moe::TopKSoftmaxRouter<S>(random_matrix(kExperts, kDim, 4), k, {}, random_matrix(kExperts, 1, 5)));
  }
}

TEMPLATE_LIST_TEST_CASE("group-limited sigmoid layers with shared experts: gradients match finite differences",
                        "[layer][backward][gradcheck]", ExpertKinds) {
  using E = typename TestType::type;
  for (const bool renorm : {true, false})
    for (const Index k : {Index{1}, Index{2}}) {
      INFO("group-limited, renormalise " << renorm << ", k " << k);
      moe::SigmoidGroupLimited<S> rule;
      rule.n_group = 2;
      rule.topk_group = 1;
      rule.routed_scaling_factor = 2.5;
      rule.renormalize = renorm;
      rule.correction_bias = random_matrix(kExperts, 1, 6, 0.3);
      check(random_experts<E>(kExperts, 7), moe::GroupLimitedRouter<S>(random_matrix(kExperts, kDim, 8), k, rule),
            moe::SharedExpertCombiner<E, moe::SharedGate::none>(random_experts<E>(1, 9)));
    }
}

TEMPLATE_LIST_TEST_CASE("softmax top-k layers with a sigmoid-gated shared expert: gradients match",
                        "[layer][backward][gradcheck]", ExpertKinds) {
  using E = typename TestType::type;
  for (const Index k : all_k) {
    INFO("Qwen2-MoE style, k " << k);
    moe::SharedExpertCombiner<E, moe::SharedGate::sigmoid> combiner(random_experts<E>(1, 10));
    combiner.gate_weight() = random_matrix(kDim, 1, 11);
    check(random_experts<E>(kExperts, 12),
          moe::SoftmaxTopKRouter<S>(random_matrix(kExperts, kDim, 13), k, moe::SoftmaxTopK<S>{false}),
          std::move(combiner));
  }
}

TEMPLATE_LIST_TEST_CASE("Switch top-1 layers with capacity and drops: gradients match finite differences",
                        "[layer][backward][gradcheck][capacity]", ExpertKinds) {
  using E = typename TestType::type;
  for (const auto priority : {moe::Priority::position, moe::Priority::batch_prioritized}) {
    INFO("capacity 1, priority " << int(priority));
    moe::MoELayer<E, moe::SoftmaxTopKRouter<S>, moe::WeightedSumCombiner<S>> layer(
        random_experts<E>(kExperts, 14),
        moe::SoftmaxTopKRouter<S>(random_matrix(kExperts, kDim, 15), 1, moe::SoftmaxTopK<S>{false}), {},
        moe::Capacity::fixed(1, priority));
    moe::Workspace<S> ws;
    (void)layer.forward(random_matrix(kTokens, kDim, 101), ws);
    REQUIRE(ws.stats.dropped >= 2);  // the configuration really drops (6 tokens, 4 slots)
    moe::LossWeights<S> w;
    w.aux = 0.2;
    w.z = 0.1;
    gradcheck(layer, {}, w);
  }
}

TEMPLATE_LIST_TEST_CASE("layers with overflow rerouting: gradients match finite differences",
                        "[layer][backward][gradcheck][capacity][reroute]", ExpertKinds) {
  // The rerouted assignment's gate is the router's rule on the token's new set of experts, so
  // its gradient reaches the logit of the expert it landed on (and, renormalised, the others').
  using E = typename TestType::type;
  const auto run = [](const char* name, auto router, moe::Capacity capacity) {
    INFO(name);
    using R = decltype(router);
    moe::MoELayer<E, R, moe::WeightedSumCombiner<S>> layer(random_experts<E>(kExperts, 14), std::move(router), {},
                                                           capacity);
    moe::Workspace<S> ws;
    (void)layer.forward(random_matrix(kTokens, kDim, 101), ws);
    REQUIRE(ws.stats.rerouted >= 1);  // the configuration really reroutes
    moe::LossWeights<S> w;
    w.aux = 0.2;
    w.z = 0.1;
    gradcheck(layer, {}, w);
  };
  for (const auto priority : {moe::Priority::position, moe::Priority::batch_prioritized}) {
    for (const Index tries : {Index{1}, kExperts}) {
      INFO("priority " << int(priority) << ", tries " << tries);
      // Switch: top-1, raw probability; 6 tokens, 4 experts of 1 slot.
      run("switch", moe::SoftmaxTopKRouter<S>(random_matrix(kExperts, kDim, 15), 1, moe::SoftmaxTopK<S>{false}),
          moe::Capacity::fixed(1, priority).rerouted(tries));
      // Mixtral: top-2 renormalised; 12 assignments, 4 experts of 3 slots.
      run("mixtral", moe::SoftmaxTopKRouter<S>(random_matrix(kExperts, kDim, 22), 2, moe::SoftmaxTopK<S>{true}),
          moe::Capacity::fixed(3, priority).rerouted(tries));
      // GPT-OSS: softmax over the selected biased logits.
      run("gpt-oss", moe::TopKSoftmaxRouter<S>(random_matrix(kExperts, kDim, 17), 2, {}, random_matrix(kExperts, 1, 18)),
          moe::Capacity::fixed(3, priority).rerouted(tries));
      // Adaptive: top-p (raw) and threshold skipping (renormalised) keep 1..3 experts.
      run("top-p", moe::TopPRouter<S>(random_matrix(kExperts, kDim, 19), 3, moe::TopP<S>{0.7}),
          moe::Capacity::fixed(3, priority).rerouted(tries));
      run("threshold-skip", moe::ThresholdSkipRouter<S>(random_matrix(kExperts, kDim, 20), 3, moe::ThresholdSkip<S>{0.3}),
          moe::Capacity::fixed(3, priority).rerouted(tries));
    }
  }
}

TEMPLATE_LIST_TEST_CASE("noisy top-k layers with supplied noise: gradients match, with and without its losses",
                        "[layer][backward][gradcheck][noisy]", ExpertKinds) {
  using E = typename TestType::type;
  using Layer = moe::MoELayer<E, moe::NoisyTopKRouter<S>, moe::WeightedSumCombiner<S>>;
  for (const Index k : all_k) {
    INFO("noisy top-k, k " << k);
    moe::NoisyTopKRouter<S> router(random_matrix(kExperts, kDim, 16), random_matrix(kExperts, kDim, 17, 0.5), k);
    router.set_noise(random_matrix(kTokens, kExperts, 18));
    Layer layer(random_experts<E>(kExperts, 19), std::move(router));
    gradcheck(layer, {});
    moe::LossWeights<S> w;
    w.importance = 0.4;
    w.load = 0.6;
    const ExtraLoss<Layer> extra = [&](const Layer& l, const RowMatrix<S>& x, const moe::Workspace<S>& ws) {
      moe::ForwardContext ctx;
      ctx.mode = moe::Mode::training;
      moe::NoisyGatingTerms<S> terms;
      l.router().gating_terms(x, ctx, terms);
      return w.importance * moe::ImportanceLoss{}(ws.routing) + w.load * moe::LoadLoss{}(terms, k);
    };
    gradcheck(layer, {}, w, extra);
  }
}

TEMPLATE_LIST_TEST_CASE("expert-choice layers: gradients match finite differences", "[layer][backward][gradcheck]",
                        ExpertKinds) {
  using E = typename TestType::type;
  for (const double cf : {1.0, 2.0, 4.0}) {  // c = 1, 3, 6 = T
    INFO("expert choice, capacity factor " << cf);
    check(random_experts<E>(kExperts, 20), moe::ExpertChoiceRouter<S>(random_matrix(kExperts, kDim, 21), cf));
  }
}

TEMPLATE_LIST_TEST_CASE("hash-routed layers: gradients (experts only) match finite differences",
                        "[layer][backward][gradcheck]", ExpertKinds) {
  using E = typename TestType::type;
  const std::vector<std::int64_t> ids = {3, 0, 7, 3, 5, 1};
  moe::ForwardContext ctx;
  ctx.token_ids = ids;
  moe::LossWeights<S> w;  // losses on the hash router's constant logits change nothing
  w.aux = 0.5;
  w.z = 0.5;
  check(random_experts<E>(kExperts, 22), moe::HashRouter<S>::balanced(8, kExperts, kDim, 23), {}, {}, ctx, w);
}

TEMPLATE_LIST_TEST_CASE("jittered softmax top-k layers: gradients match finite differences",
                        "[layer][backward][gradcheck][jitter]", ExpertKinds) {
  using E = typename TestType::type;
  for (const Index k : all_k) {
    INFO("jittered softmax top-k, k " << k);
    moe::Jittered<moe::SoftmaxTopKRouter<S>> router(moe::SoftmaxTopKRouter<S>(random_matrix(kExperts, kDim, 24), k),
                                                    0.3);
    // The layer's backward passes no context, so the factors are supplied: those of (3, 9).
    RowMatrix<S> u(kTokens, kDim);
    const moe::CounterRng rng(3, 9);
    for (Index t = 0; t < kTokens; ++t)
      for (Index c = 0; c < kDim; ++c) u(t, c) = router.factor(rng, t, c);
    router.set_factors(u);
    check(random_experts<E>(kExperts, 25), std::move(router));
  }
}
