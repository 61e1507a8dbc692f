// Importance and load losses of Shazeer et al. 2017 from their definitions: cv^2, importance
// as summed gates, P(t, e) as tensor2tensor's _prob_in_top_k, and P's meaning checked by
// sampling.
#include <moe/loss/importance_loss.hpp>
#include <moe/router/noisy_top_k_router.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "support/random.hpp"

namespace {

using moe::Index;
using moe::RowMatrix;
using moe::Vector;

using moe::test::random_matrix;

double ref_cv_squared(const std::vector<double>& v) {
  double mean = 0;
  for (double x : v) mean += x;
  mean /= double(v.size());
  double var = 0;
  for (double x : v) var += (x - mean) * (x - mean);
  var /= double(v.size());
  return var / (mean * mean + 1e-10);
}

double normal_cdf(double z) { return 0.5 * std::erfc(-z / std::sqrt(2.0)); }

// tensor2tensor's _prob_in_top_k, row by row: sort the noisy row descending, is_in = noisy >
// the (k+1)-th value, threshold the (k+1)-th value if in, the k-th if out.
RowMatrix<double> ref_prob_in_top_k(const moe::NoisyGatingTerms<double>& terms, Index k) {
  const Index T = terms.noisy.rows(), E = terms.noisy.cols();
  RowMatrix<double> p(T, E);
  for (Index t = 0; t < T; ++t) {
    std::vector<double> sorted(terms.noisy.row(t).data(), terms.noisy.row(t).data() + E);
    std::sort(sorted.rbegin(), sorted.rend());
    const double if_in = sorted[size_t(k)], if_out = sorted[size_t(k - 1)];
    for (Index e = 0; e < E; ++e) {
      const bool in = terms.noisy(t, e) > if_in;
      p(t, e) = normal_cdf((terms.clean(t, e) - (in ? if_in : if_out)) / terms.stddev(t, e));
    }
  }
  return p;
}

moe::NoisyGatingTerms<double> random_terms(Index T, Index E, unsigned seed) {
  moe::NoisyGatingTerms<double> terms;
  terms.clean = random_matrix(T, E, seed);
  terms.stddev = random_matrix(T, E, seed + 1).cwiseAbs().array() + 0.05;
  terms.noisy = terms.clean + random_matrix(T, E, seed + 2).cwiseProduct(terms.stddev);
  return terms;
}

}  // namespace

TEST_CASE("cv^2 is population variance over squared mean, 0 for a uniform vector", "[loss][importance]") {
  REQUIRE(moe::cv_squared<double>(Vector<double>::Constant(8, 3.5)) == 0.0);
  REQUIRE(moe::cv_squared<float>(Vector<float>::Constant(5, 0.25f)) == 0.0f);
  REQUIRE(moe::cv_squared<double>(Vector<double>::Zero(4)) == 0.0);
  REQUIRE(moe::cv_squared<double>(Vector<double>()) == 0.0);
  // [1, 3]: mean 2, population variance 1.
  Vector<double> two(2);
  two << 1.0, 3.0;
  REQUIRE(moe::cv_squared(two) == Approx(1.0 / (4.0 + 1e-10)).epsilon(1e-15));
  // One expert takes everything: with mean m the variance is (E-1) m^2, so cv^2 = E - 1
  // up to the 1e-10: m = 5, variance 175.
  Vector<double> one_hot = Vector<double>::Zero(8);
  one_hot[3] = 40.0;
  REQUIRE(moe::cv_squared(one_hot) == Approx(175.0 / (25.0 + 1e-10)).epsilon(1e-15));
  const Vector<double> v = random_matrix(11, 1, 1).cwiseAbs();
  REQUIRE(moe::cv_squared(v) == Approx(ref_cv_squared(std::vector<double>(v.data(), v.data() + v.size()))).epsilon(1e-13));
}

TEST_CASE("importance sums each expert's gates over tokens", "[loss][importance]") {
  const Index T = 23, E = 6;
  moe::NoisyTopKRouter<double> router(random_matrix(E, 4, 2), random_matrix(E, 4, 3), 2);
  moe::RoutingResult<double> out;
  router.route(random_matrix(T, 4, 4), out);
  const Vector<double> imp = moe::importance(out);
  REQUIRE(imp.size() == E);
  for (Index e = 0; e < E; ++e) {
    double s = 0;
    for (size_t i = 0; i < out.token.size(); ++i)
      if (out.expert[i] == e) s += out.gate[i];
    REQUIRE(imp[e] == Approx(s).epsilon(1e-15));
  }
  // Gates of a token sum to 1, so importance sums to T.
  REQUIRE(imp.sum() == Approx(double(T)).epsilon(1e-13));
  std::vector<double> ref(imp.data(), imp.data() + E);
  REQUIRE(moe::ImportanceLoss{}(out) == Approx(ref_cv_squared(ref)).epsilon(1e-13));
}

TEST_CASE("prob_in_top_k matches tensor2tensor's formula", "[loss][importance]") {
  for (const Index k : {Index{1}, Index{2}, Index{5}}) {
    INFO("k = " << k);
    const auto terms = random_terms(31, 6, 10 + unsigned(k));
    const RowMatrix<double> p = moe::prob_in_top_k(terms, k);
    REQUIRE((p - ref_prob_in_top_k(terms, k)).cwiseAbs().maxCoeff() < 1e-14);
    const Vector<double> load = moe::noisy_load(terms, k);
    REQUIRE((load - p.colwise().sum().transpose()).cwiseAbs().maxCoeff() < 1e-13);
    std::vector<double> ref(load.data(), load.data() + load.size());
    REQUIRE(moe::LoadLoss{}(terms, k) == Approx(ref_cv_squared(ref)).epsilon(1e-13));
  }
}

TEST_CASE("prob_in_top_k is the chance that a fresh draw of one noise puts the expert in the top k",
          "[loss][importance]") {
  // Redraw eps(t, e) alone, keep the other noisy logits, count how often e makes the top k.
  const Index E = 5, k = 2, draws = 200000;
  const auto terms = random_terms(3, E, 40);
  const RowMatrix<double> p = moe::prob_in_top_k(terms, k);
  std::mt19937_64 gen(7);
  std::normal_distribution<double> normal;
  for (Index t = 0; t < 3; ++t)
    for (Index e = 0; e < E; ++e) {
      Index hits = 0;
      std::vector<double> row(terms.noisy.row(t).data(), terms.noisy.row(t).data() + E);
      for (Index n = 0; n < draws; ++n) {
        row[size_t(e)] = terms.clean(t, e) + normal(gen) * terms.stddev(t, e);
        Index above = 0;
        for (Index j = 0; j < E; ++j) above += (j != e && row[size_t(j)] > row[size_t(e)]) ? 1 : 0;
        hits += above < k ? 1 : 0;
      }
      // Binomial standard error <= 0.5 / sqrt(draws) ~ 0.0011; allow five of them.
      INFO("t = " << t << ", e = " << e);
      REQUIRE(std::abs(double(hits) / double(draws) - p(t, e)) < 0.006);
    }
}

TEST_CASE("prob_in_top_k without noise is top-k membership, with k = E it is 1", "[loss][importance]") {
  auto terms = random_terms(9, 5, 50);
  terms.stddev.setZero();
  terms.noisy = terms.clean;
  const RowMatrix<double> p = moe::prob_in_top_k(terms, 2);
  for (Index t = 0; t < 9; ++t) {
    std::vector<Index> idx(5);
    std::iota(idx.begin(), idx.end(), Index{0});
    std::stable_sort(idx.begin(), idx.end(), [&](Index a, Index b) { return terms.clean(t, a) > terms.clean(t, b); });
    for (Index j = 0; j < 5; ++j) REQUIRE(p(t, idx[size_t(j)]) == (j < 2 ? 1.0 : 0.0));
  }
  REQUIRE(moe::prob_in_top_k(random_terms(4, 5, 60), 5) == RowMatrix<double>::Ones(4, 5));
  // The load of an inference call is then the per-expert count of top-k assignments.
  const Vector<double> load = moe::noisy_load(terms, 2);
  REQUIRE(load.sum() == 18.0);
}

TEST_CASE("the load loss of a router's own gating terms matches the reference", "[loss][importance]") {
  const Index E = 8, d = 6, T = 50, k = 2;
  moe::NoisyTopKRouter<float> router(random_matrix(E, d, 70).cast<float>(), random_matrix(E, d, 71).cast<float>(), k);
  const RowMatrix<float> x = random_matrix(T, d, 72).cast<float>();
  moe::ForwardContext ctx;
  ctx.mode = moe::Mode::training;
  ctx.seed = 4;
  moe::NoisyGatingTerms<float> terms;
  router.gating_terms(x, ctx, terms);
  moe::NoisyGatingTerms<double> terms_d{terms.clean.cast<double>(), terms.stddev.cast<double>(),
                                        terms.noisy.cast<double>()};
  const RowMatrix<double> ref = ref_prob_in_top_k(terms_d, k);
  REQUIRE((moe::prob_in_top_k(terms, k).cast<double>() - ref).cwiseAbs().maxCoeff() < 1e-5);
  std::vector<double> load(static_cast<size_t>(E));
  for (Index e = 0; e < E; ++e) load[size_t(e)] = ref.col(e).sum();
  REQUIRE(double(moe::LoadLoss{}(terms, k)) == Approx(ref_cv_squared(load)).epsilon(1e-4));
}

TEST_CASE("prob_in_top_k errors name the call, what was expected and what came", "[loss][importance]") {
  const auto terms = random_terms(3, 4, 80);
  REQUIRE_THROWS_WITH(moe::prob_in_top_k(terms, 0), "moe::prob_in_top_k(): k expected in [1, num_experts = 4], got 0");
  REQUIRE_THROWS_WITH(moe::prob_in_top_k(terms, 5), "moe::prob_in_top_k(): k expected in [1, num_experts = 4], got 5");
  auto bad = terms;
  bad.stddev = RowMatrix<double>::Ones(3, 3);
  REQUIRE_THROWS_WITH(moe::prob_in_top_k(bad, 2), "moe::prob_in_top_k(): stddev (as noisy) expected shape [3, 4], got [3, 3]");
}
