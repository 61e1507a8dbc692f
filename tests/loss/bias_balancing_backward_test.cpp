// DeepSeek-V3's sequence-wise balance loss: its gradient with respect to the scores and the
// logits (sigmoid or softmax scores, normalised per token; the counts f constant) against
// finite differences.
#include <moe/loss/bias_balancing.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <random>
#include <vector>

#include "support/finite_difference.hpp"
#include "support/random.hpp"

namespace {

using moe::Index;
using moe::RowMatrix;
using Scores = moe::SequenceBalanceLoss::ScoreFunction;

using moe::test::random_matrix;

// Fixed choices (k distinct experts per token), scores recomputed from the logits.
moe::RoutingResult<double> routing_of(const RowMatrix<double>& logits, Index k, Scores f) {
  const Index T = logits.rows(), E = logits.cols();
  moe::RoutingResult<double> r;
  r.reset(T, E, T * k, k);
  r.logits = logits;
  r.scores = logits;
  for (Index t = 0; t < T; ++t) {
    if (f == Scores::sigmoid) {
      for (Index e = 0; e < E; ++e) r.scores(t, e) = 1.0 / (1.0 + std::exp(-logits(t, e)));
    } else {
      const double m = logits.row(t).maxCoeff();
      r.scores.row(t) = (logits.row(t).array() - m).exp();
      r.scores.row(t) /= r.scores.row(t).sum();
    }
    for (Index j = 0; j < k; ++j) {
      const auto i = static_cast<size_t>(t * k + j);
      r.token[i] = t;
      r.expert[i] = (2 * t + j) % E;
    }
  }
  return r;
}

}  // namespace

TEST_CASE("the sequence-wise balance loss's gradient matches finite differences", "[loss][backward][deepseek]") {
  const Index T = 8, E = 5, k = 2;
  for (const auto f : {Scores::sigmoid, Scores::softmax})
    for (const Index seq : {Index{0}, Index{2}, Index{4}}) {
      INFO("score function " << int(f) << ", sequence length " << seq);
      moe::SequenceBalanceLoss loss_fn{0.3, f};
      RowMatrix<double> logits = random_matrix(T, E, 40);
      const auto loss = [&] { return 1.5 * loss_fn(routing_of(logits, k, f), seq); };
      const auto r = routing_of(logits, k, f);
      RowMatrix<double> dlogits = RowMatrix<double>::Zero(T, E);
      loss_fn.backward(r, seq, 1.5, dlogits);
      CHECK(moe::test::relative_gap(dlogits, moe::test::numeric_gradient(logits, loss)) < 1e-7);

      // With respect to the scores themselves.
      auto rs = r;
      const auto loss_s = [&] { return loss_fn(rs, seq); };
      RowMatrix<double> dscores = RowMatrix<double>::Zero(T, E);
      loss_fn.backward_scores(r, seq, 1.0, dscores);
      CHECK(moe::test::relative_gap(dscores, moe::test::numeric_gradient(rs.scores, loss_s)) < 1e-7);
    }
}

TEST_CASE("the sequence-wise balance loss's backward checks its arguments", "[loss][backward][deepseek][errors]") {
  const auto r = routing_of(random_matrix(6, 4, 41), 1, Scores::sigmoid);
  RowMatrix<double> d = RowMatrix<double>::Zero(6, 4);
  REQUIRE_THROWS_WITH(moe::SequenceBalanceLoss{}.backward(r, 4, 1.0, d),
                      "SequenceBalanceLoss::backward_scores(): sequence_length expected 0 or a divisor of the number "
                      "of tokens 6, got 4");
  RowMatrix<double> wrong = RowMatrix<double>::Zero(6, 3);
  REQUIRE_THROWS_WITH(moe::SequenceBalanceLoss{}.backward(r, 0, 1.0, wrong),
                      "SequenceBalanceLoss::backward(): dlogits expected shape [6, 4], got [6, 3]");
}
