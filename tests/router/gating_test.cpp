// The gating rules on their own, from logits to k (expert, gate) pairs per token: small cases
// worked by hand, and each rule's backward against finite differences of its gates.
#include <moe/router/gating.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "support/finite_difference.hpp"
#include "support/random.hpp"

using moe::Index;
using moe::RowMatrix;

namespace {

template <class Rule>
moe::RoutingResult<double> select(const Rule& rule, const RowMatrix<double>& logits, Index k) {
  moe::RoutingResult<double> r;
  r.reset(logits.rows(), logits.cols(), logits.rows() * k, k);
  r.logits = logits;
  rule.template select<xsimd::default_arch>(r, k);
  return r;
}

double sigmoid(double v) { return 1.0 / (1.0 + std::exp(-v)); }

/// dlogits from rule.backward against the finite difference of L = sum_i c_i gate_i (the
/// selection stays put: logits are N(0, 1), far apart next to the step).
template <class Rule>
void check_gating_backward(const Rule& rule, Index E, Index k) {
  RowMatrix<double> logits = moe::test::random_matrix(5, E, 31);
  const std::vector<Index> chosen = select(rule, logits, k).expert;
  const RowMatrix<double> c = moe::test::random_matrix(1, 5 * k, 32);
  const auto loss = [&] {
    const moe::RoutingResult<double> r = select(rule, logits, k);
    REQUIRE(r.expert == chosen);
    double s = 0;
    for (Index i = 0; i < r.size(); ++i) s += c(0, i) * r.gate[static_cast<std::size_t>(i)];
    return s;
  };
  const moe::RoutingResult<double> r = select(rule, logits, k);
  RowMatrix<double> dlogits = RowMatrix<double>::Zero(5, E);
  rule.backward(r, k, c.data(), dlogits);
  CHECK(moe::test::relative_gap(dlogits, moe::test::numeric_gradient(logits, loss)) < 1e-7);
}

}  // namespace

TEST_CASE("SoftmaxTopK: the k largest of softmax(logits), renormalised or not", "[router][gating]") {
  RowMatrix<double> logits(1, 4);
  logits << 1, 3, 2, 0;
  const double z = std::exp(1) + std::exp(3) + std::exp(2) + std::exp(0);
  const moe::RoutingResult<double> raw = select(moe::SoftmaxTopK<double>{.renormalize = false}, logits, 2);
  CHECK(raw.expert == std::vector<Index>{1, 2});
  CHECK(raw.token == std::vector<Index>{0, 0});
  CHECK(raw.gate[0] == Approx(std::exp(3) / z).epsilon(1e-14));
  CHECK(raw.gate[1] == Approx(std::exp(2) / z).epsilon(1e-14));
  CHECK(raw.scores.sum() == Approx(1.0).epsilon(1e-14));  // scores: the whole softmax
  const moe::RoutingResult<double> norm = select(moe::SoftmaxTopK<double>{}, logits, 2);
  CHECK(norm.gate[0] == Approx(1.0 / (1.0 + std::exp(-1.0))).epsilon(1e-14));
  CHECK(norm.gate[0] + norm.gate[1] == Approx(1.0).epsilon(1e-15));
}

TEST_CASE("TopKSoftmax: softmax over the k largest logits only", "[router][gating]") {
  RowMatrix<double> logits(2, 4);
  logits << 1, 3, 2, 0,  //
      5, 5, -1, 4;       // a tie: the lower index first
  const moe::RoutingResult<double> r = select(moe::TopKSoftmax<double>{}, logits, 2);
  CHECK(r.expert == std::vector<Index>{1, 2, 0, 1});
  CHECK(r.gate[0] == Approx(1.0 / (1.0 + std::exp(-1.0))).epsilon(1e-14));
  CHECK(r.gate[1] == Approx(1.0 / (1.0 + std::exp(1.0))).epsilon(1e-14));
  CHECK(r.gate[2] == 0.5);
  CHECK(r.gate[3] == 0.5);
  CHECK(r.scores == logits);
}

TEST_CASE("SigmoidGroupLimited: best groups by their top-2 biased scores, gates from unbiased scores",
          "[router][gating]") {
  RowMatrix<double> logits(1, 4);
  logits << 2, 1.9, 3, -5;  // expert 2 scores highest, but its group {2, 3} sums lower
  moe::SigmoidGroupLimited<double> rule;
  rule.n_group = 2;
  rule.topk_group = 1;
  rule.routed_scaling_factor = 2.5;
  rule.validate(4, 2);
  const moe::RoutingResult<double> r = select(rule, logits, 2);
  CHECK(r.expert == std::vector<Index>{0, 1});
  const double s0 = sigmoid(2), s1 = sigmoid(1.9), s2 = sigmoid(3), s3 = sigmoid(-5);
  CHECK(r.gate[0] == Approx(2.5 * s0 / (s0 + s1)).epsilon(1e-14));
  CHECK(r.gate[1] == Approx(2.5 * s1 / (s0 + s1)).epsilon(1e-14));
  // A correction bias steers the choice of group and expert, never the gate values.
  rule.correction_bias.resize(4);
  rule.correction_bias << 0, 0, 1, 1;
  rule.renormalize = false;
  const moe::RoutingResult<double> biased = select(rule, logits, 2);
  CHECK(biased.expert == std::vector<Index>{2, 3});
  CHECK(biased.gate[0] == Approx(2.5 * s2).epsilon(1e-14));
  CHECK(biased.gate[1] == Approx(2.5 * s3).epsilon(1e-14));
}

TEST_CASE("SigmoidGroupLimited::validate names the setting it refuses", "[router][gating][errors]") {
  moe::SigmoidGroupLimited<float> rule;
  rule.n_group = 3;
  REQUIRE_THROWS_WITH(rule.validate(8, 1),
                      "SigmoidGroupLimited::validate(): n_group dividing num_experts expected a divisor of 8, got 3");
  rule.n_group = 4;
  rule.topk_group = 5;
  REQUIRE_THROWS_WITH(rule.validate(8, 1), "SigmoidGroupLimited::validate(): topk_group expected in [1, n_group = 4], got 5");
  rule.topk_group = 1;
  REQUIRE_THROWS_WITH(rule.validate(8, 3),
                      "SigmoidGroupLimited::validate(): top_k expected <= topk_group * experts per group = 2, got 3");
  rule.correction_bias.resize(3);
  REQUIRE_THROWS_WITH(rule.validate(8, 2),
                      "SigmoidGroupLimited::validate(): correction_bias length expected 0 or num_experts = 8, got 3");
}

TEST_CASE("each gating rule's backward matches finite differences of its gates", "[router][gating][backward]") {
  check_gating_backward(moe::SoftmaxTopK<double>{}, 6, 2);
  check_gating_backward(moe::SoftmaxTopK<double>{.renormalize = false}, 6, 3);
  check_gating_backward(moe::TopKSoftmax<double>{}, 6, 3);
  moe::SigmoidGroupLimited<double> rule;
  rule.n_group = 3;
  rule.topk_group = 2;
  rule.routed_scaling_factor = 1.5;
  check_gating_backward(rule, 6, 3);
  rule.renormalize = false;
  check_gating_backward(rule, 6, 2);
}
