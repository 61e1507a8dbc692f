// The gating rules on their own, from logits to k (expert, gate) pairs per token: small cases
// worked by hand, and each rule's backward against finite differences of its gates.
#include <moe/router/gating.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <initializer_list>
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

// Adaptive rules: 1..k experts per token, token-major, k = 0 ----------------------------------

namespace {

/// Logits whose softmax is p exactly up to rounding: log p (softmax is shift-invariant).
RowMatrix<double> logits_of(std::initializer_list<std::initializer_list<double>> rows) {
  RowMatrix<double> z(static_cast<Index>(rows.size()), static_cast<Index>(rows.begin()->size()));
  Index r = 0;
  for (const auto& row : rows) {
    Index c = 0;
    for (const double p : row) z(r, c++) = std::log(p);
    ++r;
  }
  return z;
}

/// Experts of softmax row p in decreasing order of p, ties to the lower index.
std::vector<Index> adaptive_order(const double* p, Index E) {
  std::vector<Index> order(static_cast<std::size_t>(E));
  for (Index e = 0; e < E; ++e) order[static_cast<std::size_t>(e)] = e;
  std::stable_sort(order.begin(), order.end(), [&](Index a, Index b) { return p[a] > p[b]; });
  return order;
}

/// The rule as the README states it, by loops on r.scores: what each token keeps, and its gate.
struct AdaptivePick {
  std::vector<Index> token, expert;
  std::vector<double> gate;
};
AdaptivePick reference_top_p(const RowMatrix<double>& p, double threshold, Index max_k) {
  AdaptivePick out;
  for (Index t = 0; t < p.rows(); ++t) {
    const std::vector<Index> order = adaptive_order(p.data() + t * p.cols(), p.cols());
    double cum = 0;
    for (Index j = 0; j < max_k; ++j) {
      const Index e = order[static_cast<std::size_t>(j)];
      out.token.push_back(t);
      out.expert.push_back(e);
      out.gate.push_back(p(t, e));
      cum += p(t, e);
      if (cum >= threshold) break;
    }
  }
  return out;
}
AdaptivePick reference_threshold_skip(const RowMatrix<double>& p, double beta, Index k) {
  AdaptivePick out;
  for (Index t = 0; t < p.rows(); ++t) {
    const std::vector<Index> order = adaptive_order(p.data() + t * p.cols(), p.cols());
    const double first = p(t, order[0]);
    double sum = 0;
    const std::size_t begin = out.gate.size();
    for (Index j = 0; j < k; ++j) {
      const Index e = order[static_cast<std::size_t>(j)];
      if (j > 0 && p(t, e) < beta * first) continue;
      out.token.push_back(t);
      out.expert.push_back(e);
      out.gate.push_back(p(t, e));
      sum += p(t, e);
    }
    for (std::size_t i = begin; i < out.gate.size(); ++i) out.gate[i] /= sum;
  }
  return out;
}

void check_against(const moe::RoutingResult<double>& r, const AdaptivePick& want) {
  CHECK(r.k == 0);
  CHECK(r.token == want.token);
  CHECK(r.expert == want.expert);
  REQUIRE(r.gate.size() == want.gate.size());
  for (std::size_t i = 0; i < want.gate.size(); ++i) CHECK(r.gate[i] == Approx(want.gate[i]).epsilon(1e-14));
}

}  // namespace

TEST_CASE("TopP: the fewest experts whose probabilities reach the threshold, at most k, raw gates",
          "[router][gating][top_p]") {
  // p = 0.1, 0.6, 0.25, 0.05: sorted 0.6 (1), 0.25 (2), 0.1 (0), 0.05 (3).
  const RowMatrix<double> z = logits_of({{0.1, 0.6, 0.25, 0.05}});
  const auto run = [&](double threshold, Index max_k) { return select(moe::TopP<double>{threshold}, z, max_k); };
  CHECK(run(0.5, 4).expert == std::vector<Index>{1});         // 0.6 >= 0.5 at once
  CHECK(run(0.8, 4).expert == std::vector<Index>{1, 2});      // 0.85 crosses 0.8: included
  CHECK(run(0.9, 4).expert == std::vector<Index>{1, 2, 0});   // 0.95
  CHECK(run(0.9, 2).expert == std::vector<Index>{1, 2});      // the cap binds
  CHECK(run(1.0, 4).expert == std::vector<Index>{1, 2, 0, 3});
  const moe::RoutingResult<double> r = run(0.8, 4);
  CHECK(r.k == 0);
  CHECK(r.token == std::vector<Index>{0, 0});
  CHECK(r.gate[0] == Approx(0.6).epsilon(1e-14));  // not renormalised
  CHECK(r.gate[1] == Approx(0.25).epsilon(1e-14));
}

TEST_CASE("TopP agrees with the rule written as loops, token-major with a varying count", "[router][gating][top_p]") {
  for (const Index E : {2, 5, 8})
    for (const Index max_k : {Index(1), Index(2), E})
      for (const double threshold : {0.3, 0.5, 0.75, 0.9, 1.0}) {
        INFO("E " << E << ", max_k " << max_k << ", threshold " << threshold);
        const RowMatrix<double> z = moe::test::random_matrix(40, E, static_cast<unsigned>(E * 10 + max_k), 1.5);
        const moe::RoutingResult<double> r = select(moe::TopP<double>{threshold}, z, max_k);
        check_against(r, reference_top_p(r.scores, threshold, max_k));
        // Every token keeps between 1 and max_k experts.
        std::vector<Index> count(40, 0);
        for (const Index t : r.token) ++count[static_cast<std::size_t>(t)];
        for (const Index c : count) CHECK((c >= 1 && c <= max_k));
      }
}

TEST_CASE("ThresholdSkip: top-k, drop the experts below beta times the first, renormalise",
          "[router][gating][threshold_skip]") {
  const RowMatrix<double> z = logits_of({{0.1, 0.6, 0.25, 0.05}, {0.3, 0.3, 0.2, 0.2}});
  // Token 0, k = 3 (experts 1, 2, 0): beta 0.3 keeps 0.25 >= 0.18, drops 0.1.
  const moe::RoutingResult<double> r = select(moe::ThresholdSkip<double>{0.3}, z, 3);
  CHECK(r.k == 0);
  // Token 1: p 0.3, 0.3, 0.2 (ties to the lower index); 0.2 >= 0.09: all three kept.
  CHECK(r.token == std::vector<Index>{0, 0, 1, 1, 1});
  CHECK(r.expert == std::vector<Index>{1, 2, 0, 1, 2});
  CHECK(r.gate[0] == Approx(0.6 / 0.85).epsilon(1e-14));
  CHECK(r.gate[1] == Approx(0.25 / 0.85).epsilon(1e-14));
  CHECK(r.gate[2] == Approx(0.3 / 0.8).epsilon(1e-14));
  // beta 0.5: token 0 keeps its first expert only, with gate 1.
  const moe::RoutingResult<double> one = select(moe::ThresholdSkip<double>{0.5}, z, 3);
  CHECK(one.expert[0] == 1);
  CHECK(one.gate[0] == 1.0);
  CHECK(one.token[1] == 1);
}

TEST_CASE("ThresholdSkip agrees with the rule written as loops, and with beta 0 is softmax top-k renormalised",
          "[router][gating][threshold_skip]") {
  for (const Index E : {2, 5, 8})
    for (const Index k : {Index(1), Index(2), E})
      for (const double beta : {0.0, 0.2, 0.5, 0.9, 1.0}) {
        INFO("E " << E << ", k " << k << ", beta " << beta);
        const RowMatrix<double> z = moe::test::random_matrix(40, E, static_cast<unsigned>(E * 10 + k), 1.5);
        const moe::RoutingResult<double> r = select(moe::ThresholdSkip<double>{beta}, z, k);
        check_against(r, reference_threshold_skip(r.scores, beta, k));
        if (beta == 0.0) {
          const moe::RoutingResult<double> topk = select(moe::SoftmaxTopK<double>{.renormalize = true}, z, k);
          CHECK(r.expert == topk.expert);
          CHECK(r.gate == topk.gate);  // the same operations in the same order: bit for bit
        }
      }
}

TEST_CASE("TopP and ThresholdSkip validate name the setting they refuse", "[router][gating][errors]") {
  for (const double bad : {0.0, -0.5, 1.5, std::nan("")})
    REQUIRE_THROWS_WITH(moe::TopP<double>{bad}.validate(4, 2),
                        Catch::Matches("TopP::validate\\(\\): threshold expected in \\(0, 1\\], got .*"));
  moe::TopP<double>{1.0}.validate(4, 2);
  for (const double bad : {-0.1, 1.5, std::nan("")})
    REQUIRE_THROWS_WITH(moe::ThresholdSkip<double>{bad}.validate(4, 2),
                        Catch::Matches("ThresholdSkip::validate\\(\\): beta expected in \\[0, 1\\], got .*"));
  moe::ThresholdSkip<double>{0.0}.validate(4, 2);
}

TEST_CASE("the adaptive rules' backward matches finite differences of their gates", "[router][gating][backward]") {
  check_gating_backward(moe::TopP<double>{0.6}, 6, 3);
  check_gating_backward(moe::TopP<double>{0.95}, 5, 5);
  check_gating_backward(moe::TopP<double>{0.3}, 8, 4);
  check_gating_backward(moe::ThresholdSkip<double>{0.4}, 6, 3);
  check_gating_backward(moe::ThresholdSkip<double>{0.1}, 8, 4);
  check_gating_backward(moe::ThresholdSkip<double>{0.0}, 5, 2);
}
