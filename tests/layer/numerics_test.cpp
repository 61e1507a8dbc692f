// Hostile numbers through the layer: logits of +-1e4, NaN and infinity in x (refused by
// default, carried with NonFinitePolicy::propagate), denormal inputs, the edge sizes (E = 1,
// k = E, T = 1, d off the SIMD width) and a million tokens, against scalar references.
#include <moe/moe.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "support/random.hpp"
#include "support/reference_moe.hpp"

namespace {

using moe::Index;
using moe::RowMatrix;

using moe::test::fill;

template <class S = double>
moe::MixtralMoE<S> random_mixtral(Index E, Index d, Index ff, Index k, bool renormalize = true) {
  moe::SwiGLUExperts<S> experts(E, d, ff);
  fill(experts.gate_up(), 11, 0.3);
  fill(experts.down(), 12, 0.3);
  moe::SoftmaxTopKRouter<S> router(E, d, k, moe::SoftmaxTopK<S>{renormalize});
  fill(router.weight(), 13);
  return {std::move(experts), std::move(router)};
}

/// The dense scalar oracle of a SwiGLU layer under the gates the layer chose.
RowMatrix<double> oracle(const moe::MixtralMoE<double>& layer, const RowMatrix<double>& x, const RowMatrix<double>& gates) {
  const auto& ex = layer.experts();
  return moe::test::ref_mixture(
      x, gates,
      [&](Index e, const moe::RowVector<double>& xt) {
        return moe::test::ref_swiglu(xt, ex.gate_proj(e), ex.up_proj(e), ex.down_proj(e));
      },
      layer.output_dim());
}

/// Softmax top-k gates computed in long double from the layer's own router weight.
RowMatrix<double> ref_gates(const moe::MixtralMoE<double>& layer, const RowMatrix<double>& x, Index k) {
  const RowMatrix<double>& w = layer.router().weight();
  const Index E = w.rows();
  RowMatrix<double> g = RowMatrix<double>::Zero(x.rows(), E);
  for (Index t = 0; t < x.rows(); ++t) {
    std::vector<long double> logit(static_cast<std::size_t>(E));
    for (Index e = 0; e < E; ++e) {
      long double s = 0;
      for (Index c = 0; c < x.cols(); ++c) s += static_cast<long double>(x(t, c)) * w(e, c);
      logit[static_cast<std::size_t>(e)] = s;
    }
    std::vector<Index> order(static_cast<std::size_t>(E));
    for (Index e = 0; e < E; ++e) order[static_cast<std::size_t>(e)] = e;
    std::stable_sort(order.begin(), order.end(), [&](Index a, Index b) {
      return logit[static_cast<std::size_t>(a)] > logit[static_cast<std::size_t>(b)];
    });
    long double top = logit[static_cast<std::size_t>(order[0])], sum = 0;
    for (Index j = 0; j < k; ++j) sum += std::exp(logit[static_cast<std::size_t>(order[static_cast<std::size_t>(j)])] - top);
    for (Index j = 0; j < k; ++j) {
      const Index e = order[static_cast<std::size_t>(j)];
      g(t, e) = static_cast<double>(std::exp(logit[static_cast<std::size_t>(e)] - top) / sum);
    }
  }
  return g;
}

}  // namespace

TEST_CASE("kernels stay finite on logits of +-1e4", "[layer][numerics]") {
  for (const double big : {1e4, 1e30}) {
    std::vector<double> row{big, -big, 0.0, big / 2, -big / 2};
    std::vector<double> lse(1);
    moe::kernels::logsumexp_rows(row.data(), 1, 5, 5, lse.data());
    REQUIRE(lse[0] == big);  // big + log(1 + exp(-big/2) + ...) rounds to big
    moe::kernels::softmax_rows(row.data(), 1, 5, 5);
    REQUIRE(row == std::vector<double>{1.0, 0.0, 0.0, 0.0, 0.0});
    std::vector<float> s{static_cast<float>(big), static_cast<float>(-big), 0.0f};
    moe::kernels::sigmoid(s.data(), 3);
    REQUIRE(s == std::vector<float>{1.0f, 0.0f, 0.5f});
  }
}

TEST_CASE("a router whose logits reach +-1e4 gives finite gates and the winning expert's output", "[layer][numerics]") {
  const Index E = 4, d = 3;
  for (const bool renormalize : {true, false}) {
    auto layer = random_mixtral(E, d, 5, 2, renormalize);
    // x = (1, 0, 0) reads the router's first column: logits (1e4, -1e4, 5e3, -5e3) for token 0.
    auto& w = layer.router().weight();
    w.col(0) << 1e4, -1e4, 5e3, -5e3;
    RowMatrix<double> x = RowMatrix<double>::Zero(3, d);
    x(0, 0) = 1.0;
    x(1, 0) = -1.0;  // logits negated: expert 1 wins
    x(2, 0) = 1e-4;  // logits (1, -1, 0.5, -0.5): an ordinary mixture
    fill(x.rightCols(2), 21, 0.5);
    moe::Workspace<double> ws;
    const RowMatrix<double> y = layer.forward(x, ws);
    REQUIRE(y.allFinite());
    REQUIRE(ws.routing.logits.allFinite());
    const RowMatrix<double> gates = ws.routing.dense_gates();
    REQUIRE(gates(0, 0) == 1.0);
    REQUIRE(gates(0, 2) == 0.0);  // exp(-5e3) underflows to exactly 0, not NaN
    REQUIRE(gates(1, 1) == 1.0);
    const RowMatrix<double> expected = oracle(layer, x, ref_gates(layer, x, 2));
    if (renormalize) {
      REQUIRE((y - expected).cwiseAbs().maxCoeff() < 1e-12);
    }
    REQUIRE((y.topRows(2) - oracle(layer, x.topRows(2), gates.topRows(2))).cwiseAbs().maxCoeff() < 1e-12);
  }
}

TEST_CASE("sigmoid and top-k-then-softmax routers stay finite at logits of +-1e4", "[layer][numerics]") {
  const Index E = 4, d = 2;
  moe::SwiGLUExperts<float> experts(E, d, 3);
  fill(experts.gate_up(), 1, 0.3);
  fill(experts.down(), 2, 0.3);
  RowMatrix<float> x(2, d);
  x << 1.0f, 0.0f, -1.0f, 0.0f;
  RowMatrix<float> w(E, d);
  w << 1e4f, 1.0f, -1e4f, 1.0f, 5e3f, 1.0f, -5e3f, 1.0f;
  {
    moe::GptOssMoE<float>::expert_type g(E, d, 3, 1.702f, 7.0f);
    fill(g.gate_up(), 3, 0.3);
    fill(g.down(), 4, 0.3);
    moe::GptOssMoE<float> layer(std::move(g), moe::TopKSoftmaxRouter<float>(w, 2));
    moe::Workspace<float> ws;
    const RowMatrix<float> y = layer.forward(x, ws);
    REQUIRE(y.allFinite());
    REQUIRE(ws.routing.dense_gates()(0, 0) == 1.0f);
  }
  {
    moe::SigmoidGroupLimited<float> gating;
    gating.correction_bias = moe::Vector<float>::Zero(E);
    moe::GroupLimitedRouter<float> router(w, 2, gating);
    moe::MoELayer<moe::SwiGLUExperts<float>, moe::GroupLimitedRouter<float>, moe::WeightedSumCombiner<float>> layer(
        experts, std::move(router));
    moe::Workspace<float> ws;
    const RowMatrix<float> y = layer.forward(x, ws);
    REQUIRE(y.allFinite());
    REQUIRE(ws.routing.scores.allFinite());
    REQUIRE(ws.routing.scores(0, 0) == 1.0f);  // sigmoid(1e4)
    REQUIRE(ws.routing.scores(0, 1) == 0.0f);  // sigmoid(-1e4), no overflow on the way
  }
}

TEST_CASE("NaN and infinity in x are refused by default, naming the first such entry", "[layer][numerics][errors]") {
  const auto layer = random_mixtral(4, 3, 5, 2);
  moe::Workspace<double> ws;
  RowMatrix<double> x(4, 3);
  fill(x, 5);
  RowMatrix<double> y(4, 3);
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  RowMatrix<double> a = x;
  a(2, 1) = nan;
  a(3, 0) = inf;  // later in row-major order: the NaN is named
  REQUIRE_THROWS_WITH(layer.forward(a, y, ws),
                      "MoELayer::forward(): x expected finite values (ForwardContext::non_finite = error), got NaN at "
                      "row 2, column 1");
  a(2, 1) = 0.0;
  REQUIRE_THROWS_WITH(layer.forward(a, y, ws),
                      "MoELayer::forward(): x expected finite values (ForwardContext::non_finite = error), got inf at "
                      "row 3, column 0");
  a(3, 0) = -inf;
  REQUIRE_THROWS_AS(layer.forward(a, y, ws), std::invalid_argument);
  REQUIRE_THROWS_WITH(layer.forward(a, y, ws), Catch::EndsWith("got -inf at row 3, column 0"));
  // A strided view (a block of a wider matrix) is checked the same way.
  RowMatrix<double> wide = RowMatrix<double>::Zero(4, 6);
  wide(1, 4) = nan;
  REQUIRE_THROWS_WITH(layer.forward(wide.middleCols(2, 3), y, ws), Catch::EndsWith("got NaN at row 1, column 2"));
  REQUIRE_NOTHROW(layer.forward(x, y, ws));
  // Soft MoE (the dense path) refuses the same way.
  moe::FFNExperts<double, moe::Activation::gelu_erf> fe(2, 3, 4);
  moe::SoftMoE<double> soft(std::move(fe), moe::SoftRouter<double>(RowMatrix<double>::Zero(3, 2), 1));
  a = x;
  a(0, 2) = nan;
  REQUIRE_THROWS_WITH(soft.forward(a, y, ws), Catch::EndsWith("got NaN at row 0, column 2"));
}

TEST_CASE("with NonFinitePolicy::propagate a non-finite token gives a NaN row and leaves the others alone",
          "[layer][numerics]") {
  // Per-token routing without capacity: each output row depends on its own input row only, so
  // the other rows must equal a run where the bad row was finite (to a few ulp: the bad row
  // changes which experts' slabs it joins, and Eigen's GEMM kernel depends on a row's position
  // in a slab). The bad row's logits are NaN (x * W^T), so its gates, and then every entry of
  // its output, are NaN.
  const auto layer = random_mixtral(4, 3, 5, 2);
  RowMatrix<double> x(5, 3);
  fill(x, 6);
  moe::Workspace<double> ws;
  const RowMatrix<double> clean = layer.forward(x, ws);
  moe::ForwardContext ctx;
  ctx.non_finite = moe::NonFinitePolicy::propagate;
  for (const double bad : {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity(),
                           -std::numeric_limits<double>::infinity()}) {
    INFO("bad value " << bad);
    RowMatrix<double> a = x;
    a(3, 1) = bad;
    RowMatrix<double> y(5, 3);
    REQUIRE_NOTHROW(layer.forward(a, y, ws, ctx));
    for (Index t = 0; t < 5; ++t) {
      if (t == 3) {
        REQUIRE(y.row(t).unaryExpr([](double v) { return std::isnan(v) ? 1.0 : 0.0; }).sum() == 3.0);
      } else {
        REQUIRE((y.row(t) - clean.row(t)).cwiseAbs().maxCoeff() <= 1e-13 * (1.0 + clean.row(t).cwiseAbs().maxCoeff()));
      }
    }
    // Routing stays well formed: k in-range experts per token, whatever the NaN comparisons did.
    REQUIRE(ws.routing.size() == 10);
    for (Index e : ws.routing.expert) REQUIRE((e >= 0 && e < 4));
  }
}

TEST_CASE("denormal inputs route and run like any other small numbers", "[layer][numerics]") {
  const auto layer = random_mixtral(4, 5, 6, 2);
  RowMatrix<double> x(6, 5);
  fill(x, 7);
  x *= 1e-310;  // every entry subnormal (below 2.2e-308)
  x(0, 0) = std::numeric_limits<double>::denorm_min();
  moe::Workspace<double> ws;
  const RowMatrix<double> y = layer.forward(x, ws);
  REQUIRE(y.allFinite());
  const RowMatrix<double> expected = oracle(layer, x, ref_gates(layer, x, 2));
  // Outputs are ~1e-310 scaled: compare relative to the largest.
  REQUIRE((y - expected).cwiseAbs().maxCoeff() <= 1e-9 * expected.cwiseAbs().maxCoeff());

  auto layer_f = random_mixtral<float>(4, 5, 6, 2);
  RowMatrix<float> xf = x.cast<float>();
  xf.setConstant(std::numeric_limits<float>::denorm_min());
  xf(1, 2) = -1e-39f;
  moe::Workspace<float> wsf;
  const RowMatrix<float> yf = layer_f.forward(xf, wsf);
  REQUIRE(yf.allFinite());
  REQUIRE(wsf.routing.dense_gates().allFinite());
}

TEST_CASE("edge sizes match the dense oracle: E = 1, k = E, T = 1, d off the SIMD width", "[layer][numerics]") {
  struct Case {
    Index E, k, T, d;
  };
  for (const Case c : {Case{1, 1, 7, 4}, Case{5, 5, 9, 3}, Case{4, 2, 1, 8}, Case{3, 2, 11, 1}, Case{4, 2, 6, 3},
                       Case{6, 3, 5, 17}, Case{8, 8, 1, 17}}) {
    INFO("E " << c.E << " k " << c.k << " T " << c.T << " d " << c.d);
    const auto layer = random_mixtral(c.E, c.d, 5, c.k);
    RowMatrix<double> x(c.T, c.d);
    fill(x, 8 + static_cast<unsigned>(c.d));
    moe::Workspace<double> ws;
    const RowMatrix<double> y = layer.forward(x, ws);
    const RowMatrix<double> gates = ref_gates(layer, x, c.k);
    REQUIRE((ws.routing.dense_gates() - gates).cwiseAbs().maxCoeff() < 1e-14);
    REQUIRE((y - oracle(layer, x, gates)).cwiseAbs().maxCoeff() < 1e-12);
    if (c.E == 1) REQUIRE(gates.col(0) == moe::Vector<double>::Ones(c.T));
  }
}

TEST_CASE("a million tokens run, and every buffer grows linearly with T", "[layer][numerics][large]") {
  const Index d = 4, E = 4, k = 1, ff = 4;
  moe::SwiGLUExperts<float> experts(E, d, ff);
  fill(experts.gate_up(), 1, 0.3);
  fill(experts.down(), 2, 0.3);
  moe::SoftmaxTopKRouter<float> router(E, d, k);
  fill(router.weight(), 3);
  const moe::MixtralMoE<float> layer(std::move(experts), std::move(router));

  // Elements held by the forward buffers (routing, plan, gathered rows, hidden, outputs).
  const auto held = [](const moe::Workspace<float>& ws) {
    const auto& p = ws.plan;
    const auto& r = ws.routing;
    return static_cast<double>(r.token.size() + r.expert.size() + r.gate.size() + r.logits.size() + r.scores.size() +
                               p.token.size() + p.gate.size() + p.assignment.size() + p.slot_of.size() +
                               p.token_offsets.size() + p.token_slots.size() + p.offsets.size() +
                               ws.x_perm.size() + ws.hidden.size() + ws.y_perm.size());
  };
  double elements[3] = {0, 0, 0};
  const Index sizes[3] = {250000, 500000, 1000000};
  for (int i = 0; i < 3; ++i) {
    const Index T = sizes[i];
    RowMatrix<float> x(T, d);
    for (Index t = 0; t < T; ++t)
      for (Index c = 0; c < d; ++c) x(t, c) = static_cast<float>(((t * 7 + c * 3) % 17) - 8) / 8.0f;
    moe::Workspace<float> ws;
    const RowMatrix<float> y = layer.forward(x, ws);
    REQUIRE(y.rows() == T);
    REQUIRE(y.allFinite());
    REQUIRE(ws.x_perm.rows() == T * k);
    REQUIRE(ws.hidden.rows() == T * k);
    REQUIRE(ws.y_perm.rows() == T * k);
    REQUIRE(ws.routing.size() == T * k);
    REQUIRE(ws.stats.assignments == T * k);
    // The rows of x repeat with period 17, so the outputs do (to rounding: a row's place in a
    // GEMM block may change its kernel).
    for (Index t : {Index{17}, T / 2 - (T / 2) % 17 + 5, T - 1})
      REQUIRE((y.row(t) - y.row(t % 17)).cwiseAbs().maxCoeff() <= 1e-6f * (1.0f + y.row(t % 17).cwiseAbs().maxCoeff()));
    elements[i] = held(ws);
  }
  // Linear in T: doubling T from 500k adds twice what doubling from 250k added (exactly, in
  // elements), and the slope is a few elements per token, nothing per token and expert pair.
  REQUIRE(elements[2] - elements[1] == 2 * (elements[1] - elements[0]));
  const double per_token = (elements[1] - elements[0]) / 250000.0;
  REQUIRE(per_token <= static_cast<double>(2 * k * d + 2 * ff * k + 2 * E + 16));
}
