// ExpertChoiceRouter against a scalar reference written from Zhou et al. 2022: S = softmax
// over experts; expert e takes the c = floor(T cf / E) tokens with the largest S[:, e].
#include <moe/layer/moe_layer.hpp>
#include <moe/core/traits.hpp>
#include <moe/router/expert_choice_router.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "support/reference_moe.hpp"
#include "support/random.hpp"

namespace {

using moe::Index;
using moe::RowMatrix;

using moe::test::random_matrix;

RowMatrix<double> reference_softmax(const RowMatrix<double>& x, const RowMatrix<double>& w) {
  RowMatrix<double> s(x.rows(), w.rows());
  for (Index t = 0; t < x.rows(); ++t) {
    std::vector<double> z(static_cast<size_t>(w.rows()));
    for (Index e = 0; e < w.rows(); ++e) {
      double v = 0;
      for (Index j = 0; j < x.cols(); ++j) v += x(t, j) * w(e, j);
      z[size_t(e)] = v;
    }
    const double m = *std::max_element(z.begin(), z.end());
    double sum = 0;
    for (double v : z) sum += std::exp(v - m);
    for (Index e = 0; e < w.rows(); ++e) s(t, e) = std::exp(z[size_t(e)] - m) / sum;
  }
  return s;
}

// Per expert: the c tokens with the largest score, best first (ties: lower token index).
std::vector<std::vector<Index>> reference_choice(const RowMatrix<double>& s, Index c) {
  std::vector<std::vector<Index>> chosen;
  for (Index e = 0; e < s.cols(); ++e) {
    std::vector<Index> idx(static_cast<size_t>(s.rows()));
    std::iota(idx.begin(), idx.end(), Index{0});
    std::stable_sort(idx.begin(), idx.end(), [&](Index a, Index b) { return s(a, e) > s(b, e); });
    idx.resize(static_cast<size_t>(c));
    chosen.push_back(idx);
  }
  return chosen;
}

}  // namespace

TEST_CASE("expert choice matches the scalar reference in selection, order and gates", "[router][expert_choice]") {
  for (const Index E : {Index{1}, Index{3}, Index{8}}) {
    for (const Index T : {Index{1}, Index{7}, Index{40}, Index{97}}) {
      for (const double cf : {0.5, 1.0, 2.0, 3.0}) {
        INFO("E = " << E << ", T = " << T << ", cf = " << cf);
        const auto w = random_matrix(E, 10, 1 + unsigned(E)), x = random_matrix(T, 10, 2 + unsigned(T));
        moe::ExpertChoiceRouter<double> router(w, cf);
        const Index c = std::min(T, static_cast<Index>(std::floor(double(T) * cf / double(E))));
        REQUIRE(router.tokens_per_expert(T) == c);
        moe::RoutingResult<double> out;
        router.route(x, out);
        const auto s = reference_softmax(x, w);
        const auto chosen = reference_choice(s, c);
        REQUIRE(out.size() == E * c);
        REQUIRE(out.k == 0);
        RowMatrix<double> gates = RowMatrix<double>::Zero(T, E);
        for (Index e = 0; e < E; ++e)
          for (Index j = 0; j < c; ++j) {
            const auto i = size_t(e * c + j);
            REQUIRE(out.expert[i] == e);
            REQUIRE(out.token[i] == chosen[size_t(e)][size_t(j)]);
            gates(out.token[i], e) = s(out.token[i], e);
          }
        REQUIRE((out.dense_gates() - gates).cwiseAbs().maxCoeff() < 1e-15);
        REQUIRE((out.logits - x * w.transpose()).cwiseAbs().maxCoeff() < 1e-12);
        REQUIRE((out.scores - s).cwiseAbs().maxCoeff() < 1e-15);
        // Every expert is exactly full.
        for (Index n : out.expert_counts()) REQUIRE(n == c);
      }
    }
  }
}

TEST_CASE("expert choice breaks equal scores by the lower token index", "[router][expert_choice]") {
  // Zero weights: every score is 1/E, so each expert takes tokens 0 .. c-1 in order.
  moe::ExpertChoiceRouter<float> router(4, 3, 2.0);
  moe::RoutingResult<float> out;
  router.route(RowMatrix<float>::Random(10, 3), out);
  REQUIRE(router.tokens_per_expert(10) == 5);
  for (Index e = 0; e < 4; ++e)
    for (Index j = 0; j < 5; ++j) {
      REQUIRE(out.token[size_t(e * 5 + j)] == j);
      REQUIRE(out.gate[size_t(e * 5 + j)] == 0.25f);
    }
  // A duplicated row ties with its original in every column: the lower index wins.
  const auto w = random_matrix(3, 4, 3);
  RowMatrix<double> x = random_matrix(6, 4, 4);
  x.row(5) = x.row(2);
  moe::ExpertChoiceRouter<double> r2(w, 0.5);  // c = 1
  moe::RoutingResult<double> o2;
  r2.route(x, o2);
  for (Index e = 0; e < 3; ++e) REQUIRE(o2.token[size_t(e)] != 5);
}

TEST_CASE("expert choice capacity: floor(T cf / E), capped at T, robust to rounding", "[router][expert_choice]") {
  REQUIRE(moe::ExpertChoiceRouter<double>(8, 2, 2.0).tokens_per_expert(40) == 10);
  REQUIRE(moe::ExpertChoiceRouter<double>(8, 2, 2.0).tokens_per_expert(43) == 10);
  REQUIRE(moe::ExpertChoiceRouter<double>(8, 2, 2.0).tokens_per_expert(3) == 0);
  REQUIRE(moe::ExpertChoiceRouter<double>(8, 2, 0.25).tokens_per_expert(100) == 3);
  REQUIRE(moe::ExpertChoiceRouter<double>(2, 2, 5.0).tokens_per_expert(7) == 7);
  // 100 * 0.29 / 29 is 1 on paper and 0.9999999999999999 in double.
  REQUIRE(moe::ExpertChoiceRouter<double>(29, 2, 0.29).tokens_per_expert(100) == 1);
  REQUIRE(moe::ExpertChoiceRouter<double>(29, 2, 0.29).tokens_per_expert(0) == 0);
}

TEST_CASE("expert choice in a layer: chosen tokens get the gated mixture, others 0", "[router][expert_choice][layer]") {
  const Index E = 4, d = 6, ff = 5, T = 13;
  moe::SwiGLUExperts<double> experts(E, d, ff);
  experts.gate_up() = random_matrix(E * 2 * ff, d, 5, 0.5);
  experts.down() = random_matrix(E * d, ff, 6, 0.5);
  const auto w = random_matrix(E, d, 7, 2.0), x = random_matrix(T, d, 8);
  const moe::ExpertChoiceMoE<double> layer(experts, moe::ExpertChoiceRouter<double>(w, 1.0));  // c = 3
  moe::Workspace<double> ws;
  const RowMatrix<double> y = layer.forward(x, ws);

  const auto s = reference_softmax(x, w);
  const auto chosen = reference_choice(s, 3);
  RowMatrix<double> gates = RowMatrix<double>::Zero(T, E);
  for (Index e = 0; e < E; ++e)
    for (Index t : chosen[size_t(e)]) gates(t, e) = s(t, e);
  const auto expected = moe::test::ref_mixture(
      x, gates,
      [&](Index e, const moe::RowVector<double>& row) {
        return moe::test::ref_swiglu(row, experts.gate_proj(e), experts.up_proj(e), experts.down_proj(e));
      },
      d);
  REQUIRE((y - expected).cwiseAbs().maxCoeff() < 1e-12);
  // 4 experts * 3 slots cover at most 12 of 13 tokens: some token is left out, with output 0.
  Index unrouted = 0;
  for (Index t = 0; t < T; ++t)
    if (gates.row(t).cwiseAbs().maxCoeff() == 0.0) {
      ++unrouted;
      REQUIRE(y.row(t).cwiseAbs().maxCoeff() == 0.0);
    }
  REQUIRE(unrouted >= 1);

  // T * cf < E: c = 0, nothing routed, all zeros.
  RowMatrix<double> y2 = RowMatrix<double>::Ones(3, d);
  layer.forward(x.topRows(3), y2, ws);
  REQUIRE(ws.routing.size() == 0);
  REQUIRE(y2.cwiseAbs().maxCoeff() == 0.0);
}

TEST_CASE("expert choice traits: not token choice", "[router][expert_choice]") {
  STATIC_REQUIRE_FALSE(moe::router_traits<moe::ExpertChoiceRouter<float>>::token_choice);
  STATIC_REQUIRE_FALSE(moe::router_traits<moe::ExpertChoiceRouter<float>>::needs_rng);
  STATIC_REQUIRE_FALSE(moe::router_traits<moe::ExpertChoiceRouter<float>>::needs_token_ids);
  STATIC_REQUIRE(moe::Router<moe::ExpertChoiceRouter<double>>);
}

TEST_CASE("expert choice errors name the call, what was expected and what came", "[router][expert_choice]") {
  using R = moe::ExpertChoiceRouter<float>;
  REQUIRE_THROWS_WITH(R(0, 8, 1.0), "ExpertChoiceRouter::ExpertChoiceRouter(): num_experts expected >= 1, got 0");
  REQUIRE_THROWS_WITH(R(4, 0, 1.0), "ExpertChoiceRouter::ExpertChoiceRouter(): input_dim expected >= 1, got 0");
  REQUIRE_THROWS_WITH(R(4, 8, 0.0),
                      "ExpertChoiceRouter::ExpertChoiceRouter(): capacity_factor expected finite and > 0, got 0");
  REQUIRE_THROWS_WITH(R(4, 8, std::nan("")),
                      "ExpertChoiceRouter::ExpertChoiceRouter(): capacity_factor expected finite and > 0, got nan");
  R router(4, 8, 1.0);
  moe::RoutingResult<float> out;
  REQUIRE_THROWS_WITH(router.route(RowMatrix<float>::Zero(3, 7), out),
                      "ExpertChoiceRouter::route(): x columns (input_dim) expected 8, got 7");
}
