// Routing record and replay through MoELayer::forward (docs/replay.md): a replayed forward
// equals the recorded one bit for bit, also after the router's weights changed; replay_experts
// recomputes the gates by the router's rule on the recorded experts, and its gradients match
// finite differences; misuse is refused with a clear message.
#include <moe/moe.hpp>

#include <catch2/catch.hpp>
#include <support/bits.hpp>

#include <cmath>
#include <string>
#include <vector>

#include "support/finite_difference.hpp"
#include "support/gradient_check.hpp"
#include "support/random.hpp"

namespace {

using moe::Index;
using moe::RowMatrix;
using moe::TapeMode;

template <class S>
RowMatrix<S> matrix(Index r, Index c, unsigned seed, double scale = 1.0) {
  return moe::test::random_matrix(r, c, seed, scale).cast<S>();
}

/// True when a and b hold the same bits (NaN-free data: == on every element).
template <class S>
using Mixtral = moe::MoELayer<moe::SwiGLUExperts<S>, moe::SoftmaxTopKRouter<S>, moe::WeightedSumCombiner<S>>;

template <class S>
Mixtral<S> mixtral(Index E, Index d, Index k, moe::Capacity capacity, unsigned seed) {
  return Mixtral<S>(moe::test::swiglu<S>(E, d, 2 * d, seed),
                    moe::SoftmaxTopKRouter<S>(matrix<S>(E, d, seed + 7), k, moe::SoftmaxTopK<S>{true}), {}, capacity);
}

}  // namespace

TEMPLATE_TEST_CASE("replay: a replayed forward equals the recorded one bit for bit, after the router changed",
                   "[layer][replay]", float, double) {
  using S = TestType;
  constexpr Index T = 48, d = 12, E = 6, k = 2;
  // Capacity 1.0 with batch-prioritized rerouting: drops and reroutes both occur, so the
  // kept flags and the rerouted experts are part of what is replayed.
  auto layer = mixtral<S>(E, d, k, moe::Capacity::from_factor(1.0, 0, moe::Priority::batch_prioritized).rerouted(1), 3);
  const RowMatrix<S> x = matrix<S>(T, d, 5);
  moe::Workspace<S> ws;
  moe::RoutingTape tape;
  moe::ForwardContext ctx;
  ctx.routing_tape = &tape;
  const RowMatrix<S> recorded = layer.forward(x, ws, ctx);
  REQUIRE(tape.size() == 1);
  REQUIRE(ws.stats.dropped > 0);
  REQUIRE(ws.stats.rerouted > 0);
  const std::vector<Index> load = ws.stats.expert_load;
  const moe::RoutingRecord& record = tape.records()[0];
  CHECK(record.num_tokens == T);
  CHECK(record.k == k);
  for (Index i = 0; i < record.size(); ++i) {
    const auto iu = static_cast<std::size_t>(i);
    CHECK(record.expert[iu] == ws.routing.expert[iu]);
    CHECK(static_cast<S>(record.gate[iu]) == ws.routing.gate[iu]);
    CHECK((record.kept[iu] == 1) == ws.plan.kept(i));
  }

  // New router weights: routing afresh gives another output.
  layer.router().weight() = matrix<S>(E, d, 99);
  moe::Workspace<S> fresh_ws;
  const RowMatrix<S> fresh = layer.forward(x, fresh_ws);
  REQUIRE_FALSE(moe::test::same_bits(fresh, recorded));

  SECTION("replay: decisions from the tape, the router skipped") {
    tape.set_mode(TapeMode::replay);
    moe::Workspace<S> replay_ws;
    const RowMatrix<S> replayed = layer.forward(x, replay_ws, ctx);
    CHECK(moe::test::same_bits(replayed, recorded));
    CHECK(replay_ws.stats.expert_load == load);
    CHECK(replay_ws.stats.dropped == ws.stats.dropped);
    CHECK(replay_ws.routing.logits.rows() == 0);  // no router call
    CHECK(tape.cursor() == 1);
    // Twice, after rewind, on a used workspace: the same bits again.
    tape.rewind();
    CHECK(moe::test::same_bits(layer.forward(x, replay_ws, ctx), recorded));
  }
  SECTION("replay_experts with the original router: the same bits (regate reproduces select)") {
    layer.router().weight() = matrix<S>(E, d, 3 + 7);
    tape.set_mode(TapeMode::replay_experts);
    moe::Workspace<S> replay_ws;
    CHECK(moe::test::same_bits(layer.forward(x, replay_ws, ctx), recorded));
  }
  SECTION("replay_experts with the new router: recorded experts and drops, gates by the rule on the new scores") {
    tape.set_mode(TapeMode::replay_experts);
    moe::Workspace<S> replay_ws;
    (void)layer.forward(x, replay_ws, ctx);
    CHECK(replay_ws.stats.expert_load == load);
    // The rule, in double: p = softmax(x W^T) over all experts, renormalised over the token's
    // recorded experts.
    const RowMatrix<double> logits = x.template cast<double>() * layer.router().weight().template cast<double>().transpose();
    for (Index t = 0; t < T; ++t) {
      const RowMatrix<double> row = logits.row(t);
      const double m = row.maxCoeff();
      double z = 0;
      for (Index e = 0; e < E; ++e) z += std::exp(row(0, e) - m);
      double sum = 0;
      for (Index j = 0; j < k; ++j) sum += std::exp(row(0, record.expert[static_cast<std::size_t>(t * k + j)]) - m) / z;
      for (Index j = 0; j < k; ++j) {
        const auto i = static_cast<std::size_t>(t * k + j);
        CHECK(replay_ws.routing.expert[i] == record.expert[i]);
        const double expected = std::exp(row(0, record.expert[i]) - m) / z / sum;
        CHECK(static_cast<double>(replay_ws.routing.gate[i]) ==
              Approx(expected).epsilon(std::is_same_v<S, float> ? 1e-5 : 1e-12));
      }
    }
  }
}

TEST_CASE("replay: top-p's variable expert counts and a stack of two layers replay in order", "[layer][replay]") {
  using S = float;
  constexpr Index T = 40, d = 10, E = 5;
  moe::TopPMoE<S> first(moe::test::swiglu<S>(E, d, 16, 11),
                        moe::TopPRouter<S>(matrix<S>(E, d, 12), 3, moe::TopP<S>{0.6f}));
  auto second = mixtral<S>(E, d, 2, moe::Capacity::from_factor(1.0), 13);
  const RowMatrix<S> x = matrix<S>(T, d, 14);
  moe::RoutingTape tape;
  moe::ForwardContext ctx0, ctx1;
  ctx0.routing_tape = ctx1.routing_tape = &tape;
  ctx1.layer_index = 1;
  moe::Workspace<S> ws0, ws1;
  const auto run = [&] {
    const RowMatrix<S> h = x + first.forward(x, ws0, ctx0);
    return RowMatrix<S>(h + second.forward(h, ws1, ctx1));
  };
  const RowMatrix<S> recorded = run();
  REQUIRE(tape.size() == 2);
  CHECK(tape.records()[0].k == 0);  // top-p: 1..3 experts per token
  CHECK(tape.records()[1].layer_index == 1);
  first.router().weight() = matrix<S>(E, d, 15);
  second.router().weight() = matrix<S>(E, d, 16);
  REQUIRE_FALSE(moe::test::same_bits(run(), recorded));  // still recording: two more records
  REQUIRE(tape.size() == 4);
  tape.set_mode(TapeMode::replay);
  CHECK(moe::test::same_bits(run(), recorded));
  // The next call pair reads records 2 and 3: the second run with the new routers.
  const RowMatrix<S> second_run = run();
  tape.set_mode(TapeMode::record);
  tape.clear();
  CHECK(moe::test::same_bits(run(), second_run));
}

TEST_CASE("replay_experts trains through a fixed routing: gradients match finite differences",
          "[layer][replay][gradcheck]") {
  using S = double;
  constexpr Index T = 7, d = 4, E = 4;
  RowMatrix<S> x = matrix<S>(T, d, 21);  // perturbed by the finite differences
  const RowMatrix<S> g = matrix<S>(T, d, 22);
  const auto check = [&](auto layer, Index expect_reroutes) {
    moe::RoutingTape tape;
    moe::ForwardContext ctx;
    ctx.routing_tape = &tape;
    moe::Workspace<S> ws;
    (void)layer.forward(x, ws, ctx);  // record with the first router
    REQUIRE(ws.stats.rerouted >= expect_reroutes);
    layer.router().weight() = matrix<S>(E, d, 23);  // then train another router through that routing
    tape.set_mode(TapeMode::replay_experts);
    ctx.mode = moe::Mode::training;
    moe::Workspace<S> train_ws;
    RowMatrix<S> y(T, d);
    layer.forward(x, y, train_ws, ctx);
    // The replay really differs from what the new router would choose.
    moe::Workspace<S> own_ws;
    (void)layer.forward(x, own_ws);
    REQUIRE(own_ws.routing.expert != train_ws.routing.expert);
    auto grads = layer.make_gradients();
    moe::LossWeights<S> w;
    w.aux = 0.3;
    w.z = 0.2;
    RowMatrix<S> dx(T, d);
    layer.backward(g, dx, train_ws, grads, w);
    moe::Workspace<S> fd_ws;
    const auto loss = [&] {
      tape.rewind();
      layer.forward(x, y, fd_ws, ctx);
      return (y.array() * g.array()).sum() + w.aux * moe::LoadBalancingLoss{}(fd_ws.routing) +
             w.z * moe::RouterZLoss{}(fd_ws.routing);
    };
    CHECK(moe::test::relative_gap(dx, moe::test::numeric_gradient(x, loss)) < 1e-6);
    moe::test::check_parameter_gradients(layer, grads, loss, 1e-6);
  };
  SECTION("Mixtral, top-2 renormalised, capacity with rerouting in the recording") {
    check(mixtral<S>(E, d, 2, moe::Capacity::fixed(3).rerouted(2), 24), 1);
  }
  SECTION("GPT-OSS, softmax over the selected biased logits") {
    moe::GptOssMoE<S> layer(moe::GptOssExperts<S>(E, d, 3),
                            moe::TopKSoftmaxRouter<S>(matrix<S>(E, d, 25), 2, {}, matrix<S>(E, 1, 26)));
    layer.experts().for_each_parameter([](const std::string&, auto&& p) { moe::test::fill(p, 27, 0.5); });
    check(std::move(layer), 0);
  }
  SECTION("threshold skipping, 1..3 experts per token") {
    moe::ThresholdSkipMoE<S> layer(moe::test::swiglu<S>(E, d, 3, 28),
                                   moe::ThresholdSkipRouter<S>(matrix<S>(E, d, 29), 3, moe::ThresholdSkip<S>{0.3}));
    check(std::move(layer), 0);
  }
}

TEST_CASE("replay: misuse is refused with a message naming what was expected", "[layer][replay][errors]") {
  using S = float;
  constexpr Index T = 8, d = 6, E = 4;
  auto layer = mixtral<S>(E, d, 2, {}, 31);
  const RowMatrix<S> x = matrix<S>(T, d, 32);
  moe::Workspace<S> ws;
  moe::RoutingTape tape;
  moe::ForwardContext ctx;
  ctx.routing_tape = &tape;
  (void)layer.forward(x, ws, ctx);
  tape.set_mode(TapeMode::replay);

  moe::ForwardContext train = ctx;
  train.mode = moe::Mode::training;
  CHECK_THROWS_WITH(layer.forward(x, ws, train),
                    "MoELayer::forward(): ForwardContext::mode under TapeMode::replay expected Mode::inference "
                    "(replayed gates are constants; TapeMode::replay_experts trains through a replay), got Mode::training");
  const RowMatrix<S> shorter = matrix<S>(T - 1, d, 33);
  CHECK_THROWS_WITH(layer.forward(shorter, ws, ctx),
                    "MoELayer::forward(): routing tape record 0 tokens (rows of x) expected 7, got 8");
  moe::ForwardContext other_layer = ctx;
  other_layer.layer_index = 2;
  tape.rewind();
  CHECK_THROWS_WITH(layer.forward(x, ws, other_layer),
                    "MoELayer::forward(): routing tape record 0 layer_index expected 2, got 0");
  tape.rewind();
  (void)layer.forward(x, ws, ctx);
  CHECK_THROWS_WITH(layer.forward(x, ws, ctx),
                    "MoELayer::forward(): routing tape expected a record for this call, got the end of the tape "
                    "(1 records; rewind() to replay again)");

  // A record of top-2 routing cannot drive a top-3 router's gates (its backward reads T * 3 pairs).
  auto top3 = mixtral<S>(E, d, 3, {}, 31);
  tape.set_mode(TapeMode::replay_experts);
  CHECK_THROWS_WITH(top3.forward(x, ws, ctx),
                    "MoELayer::forward(): routing tape record k (the router's k; 0 when it varies) expected 3, got 2");
  // Routers without a regate cannot replay experts; Soft MoE has nothing to record.
  moe::ExpertChoiceMoE<S> expert_choice(moe::test::swiglu<S>(E, d, 8, 34), moe::ExpertChoiceRouter<S>(matrix<S>(E, d, 35), 1.0));
  tape.rewind();
  CHECK_THROWS_WITH(expert_choice.forward(x, ws, ctx),
                    "MoELayer::forward(): TapeMode::replay_experts expected a router that can regate (TopKRouter with "
                    "SoftmaxTopK, TopKSoftmax, TopP or ThresholdSkip, or Jittered of one; docs/replay.md), got another router");
  moe::SoftMoE<S> soft(moe::FFNExperts<S, moe::Activation::gelu_erf>(E, d, 8), moe::SoftRouter<S>(E, d, 1));
  CHECK_THROWS_WITH(soft.forward(x, ws, ctx),
                    "MoELayer::forward(): ForwardContext::routing_tape expected nullptr for a dense router (Soft MoE "
                    "has no (token, expert) decisions to record), got a tape");
  // Rerouting needs a regate too.
  moe::ExpertChoiceMoE<S> rerouting(moe::test::swiglu<S>(E, d, 8, 34), moe::ExpertChoiceRouter<S>(matrix<S>(E, d, 35), 1.0),
                                    {}, moe::Capacity::fixed(2).rerouted(1));
  CHECK_THROWS_WITH(rerouting.forward(x, ws),
                    "MoELayer::forward(): Capacity::reroute expected 0 for this router (rerouting needs one that can "
                    "regate: TopKRouter with SoftmaxTopK, TopKSoftmax, TopP or ThresholdSkip, or Jittered of one; "
                    "docs/capacity.md#rerouting), got 1");
}
