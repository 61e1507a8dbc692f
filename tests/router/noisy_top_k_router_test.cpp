// NoisyTopKRouter against a scalar reference written from Shazeer et al. 2017 / tensor2tensor:
// clean = x Wg^T, stddev = softplus(x Wn^T) + 1e-2, noisy = clean + eps * stddev, gates =
// softmax over the k largest noisy logits.
#include <moe/layer/moe_layer.hpp>
#include <moe/core/traits.hpp>
#include <moe/router/noisy_top_k_router.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "support/reference_moe.hpp"
#include "support/random.hpp"

namespace {

using moe::Index;
using moe::RowMatrix;

using moe::test::random_matrix;

// The k best of v (descending; equal values: lower index first), by a full stable sort.
std::vector<Index> reference_top_k(const std::vector<double>& v, Index k) {
  std::vector<Index> idx(v.size());
  std::iota(idx.begin(), idx.end(), Index{0});
  std::stable_sort(idx.begin(), idx.end(), [&](Index a, Index b) { return v[size_t(a)] > v[size_t(b)]; });
  idx.resize(static_cast<size_t>(k));
  return idx;
}

double dot_row(const RowMatrix<double>& a, Index i, const RowMatrix<double>& b, Index j) {
  double s = 0;
  for (Index c = 0; c < a.cols(); ++c) s += a(i, c) * b(j, c);
  return s;
}

struct Reference {
  RowMatrix<double> noisy;
  RowMatrix<double> gates;
  std::vector<std::vector<Index>> chosen;  // per token, best first
};

// eps(t, e) = noise(t, e), or nothing (inference) when noise is empty.
Reference reference_noisy_top_k(const RowMatrix<double>& x, const RowMatrix<double>& wg, const RowMatrix<double>& wn,
                                 const RowMatrix<double>& noise, Index k) {
  const Index T = x.rows(), E = wg.rows();
  Reference r{RowMatrix<double>(T, E), RowMatrix<double>::Zero(T, E), {}};
  for (Index t = 0; t < T; ++t) {
    std::vector<double> z(static_cast<size_t>(E));
    for (Index e = 0; e < E; ++e) {
      z[size_t(e)] = dot_row(x, t, wg, e);
      if (noise.size() != 0) z[size_t(e)] += noise(t, e) * (std::log(1.0 + std::exp(dot_row(x, t, wn, e))) + 1e-2);
      r.noisy(t, e) = z[size_t(e)];
    }
    const auto top = reference_top_k(z, k);
    const double m = z[size_t(top[0])];
    double sum = 0;
    for (Index e : top) sum += std::exp(z[size_t(e)] - m);
    for (Index e : top) r.gates(t, e) = std::exp(z[size_t(e)] - m) / sum;
    r.chosen.push_back(top);
  }
  return r;
}

moe::ForwardContext training(std::uint64_t seed = 0, std::uint64_t step = 0) {
  moe::ForwardContext ctx;
  ctx.mode = moe::Mode::training;
  ctx.seed = seed;
  ctx.step = step;
  return ctx;
}

}  // namespace

TEST_CASE("noisy top-k with a supplied noise sample matches the scalar reference", "[router][noisy_top_k]") {
  const Index E = 8, d = 12, T = 29;
  const auto wg = random_matrix(E, d, 1), wn = random_matrix(E, d, 2), x = random_matrix(T, d, 3);
  const auto noise = random_matrix(T, E, 4);
  for (const Index k : {Index{1}, Index{2}, Index{3}, Index{8}}) {
    INFO("k = " << k);
    moe::NoisyTopKRouter<double> router(wg, wn, k);
    router.set_noise(noise);
    moe::RoutingResult<double> out;
    router.route(x, out, training());
    const Reference ref = reference_noisy_top_k(x, wg, wn, noise, k);
    REQUIRE(out.size() == T * k);
    REQUIRE(out.k == k);
    for (Index t = 0; t < T; ++t)
      for (Index j = 0; j < k; ++j) {
        REQUIRE(out.token[size_t(t * k + j)] == t);
        REQUIRE(out.expert[size_t(t * k + j)] == ref.chosen[size_t(t)][size_t(j)]);
      }
    REQUIRE((out.dense_gates() - ref.gates).cwiseAbs().maxCoeff() < 1e-14);
    REQUIRE((out.logits - ref.noisy).cwiseAbs().maxCoeff() < 1e-12);
    REQUIRE(out.scores == out.logits);
  }
}

TEST_CASE("noisy top-k draws its noise from CounterRng(seed, step).normal(token, expert)", "[router][noisy_top_k]") {
  const Index E = 6, d = 5, T = 17, k = 2;
  const auto wg = random_matrix(E, d, 5), wn = random_matrix(E, d, 6), x = random_matrix(T, d, 7);
  moe::NoisyTopKRouter<double> router(wg, wn, k);
  RowMatrix<double> eps(T, E);
  const moe::CounterRng rng(42, 7);
  for (Index t = 0; t < T; ++t)
    for (Index e = 0; e < E; ++e) eps(t, e) = rng.normal(std::uint64_t(t), std::uint64_t(e));
  const Reference ref = reference_noisy_top_k(x, wg, wn, eps, k);
  moe::RoutingResult<double> out;
  router.route(x, out, training(42, 7));
  REQUIRE((out.logits - ref.noisy).cwiseAbs().maxCoeff() < 1e-12);
  REQUIRE((out.dense_gates() - ref.gates).cwiseAbs().maxCoeff() < 1e-14);
}

TEST_CASE("noisy top-k: same seed and step, same routing, another step, other noise", "[router][noisy_top_k]") {
  const Index E = 8, d = 6, T = 40, k = 2;
  moe::NoisyTopKRouter<float> router(random_matrix(E, d, 8).cast<float>(), random_matrix(E, d, 9).cast<float>(), k);
  const RowMatrix<float> x = random_matrix(T, d, 10).cast<float>();
  moe::RoutingResult<float> a, b, c;
  router.route(x, a, training(3, 11));
  router.route(x, b, training(3, 11));
  router.route(x, c, training(3, 12));
  REQUIRE(a.logits == b.logits);
  REQUIRE(a.expert == b.expert);
  REQUIRE(a.gate == b.gate);
  REQUIRE(a.logits != c.logits);
  // Noise is keyed by the row, not by the batch: routing the first 10 rows alone sees the
  // same noise as those rows inside the full batch. Bit for bit needs the batch-invariant
  // product (the fast one may round a row differently in a 40-row and a 10-row product).
  moe::ForwardContext invariant = training(3, 11);
  invariant.gemm = moe::GemmKernel::batch_invariant;
  moe::RoutingResult<float> whole, head;
  router.route(x, whole, invariant);
  router.route(x.topRows(10), head, invariant);
  REQUIRE(head.logits == whole.logits.topRows(10));
  REQUIRE(head.expert == std::vector<Index>(whole.expert.begin(), whole.expert.begin() + 10 * k));
}

TEST_CASE("noisy top-k in inference is deterministic and noise-free", "[router][noisy_top_k]") {
  const Index E = 5, d = 7, T = 23, k = 2;
  const auto wg = random_matrix(E, d, 11), wn = random_matrix(E, d, 12), x = random_matrix(T, d, 13);
  moe::NoisyTopKRouter<double> router(wg, wn, k);
  moe::ForwardContext inference;
  inference.seed = 99;
  inference.step = 5;
  moe::ForwardContext other = inference;
  other.seed = 1;
  moe::RoutingResult<double> a, b;
  router.route(x, a, inference);
  router.set_noise(random_matrix(T + 1, E, 14));  // ignored in inference, whatever its shape
  router.route(x, b, other);
  const Reference ref = reference_noisy_top_k(x, wg, wn, RowMatrix<double>(), k);
  REQUIRE((a.logits - x * wg.transpose()).cwiseAbs().maxCoeff() < 1e-12);
  REQUIRE((a.dense_gates() - ref.gates).cwiseAbs().maxCoeff() < 1e-14);
  REQUIRE(a.logits == b.logits);
  REQUIRE(a.expert == b.expert);
  REQUIRE(a.gate == b.gate);
}

TEST_CASE("gating_terms reproduces the logits route() selected on, and the noise scale", "[router][noisy_top_k]") {
  const Index E = 8, d = 9, T = 31, k = 3;
  const auto wg = random_matrix(E, d, 15), wn = random_matrix(E, d, 16, 3.0), x = random_matrix(T, d, 17);
  moe::NoisyTopKRouter<double> router(wg, wn, k);
  for (const bool supplied : {false, true}) {
    if (supplied) router.set_noise(random_matrix(T, E, 18));
    moe::RoutingResult<double> out;
    moe::NoisyGatingTerms<double> terms;
    router.route(x, out, training(5, 6));
    router.gating_terms(x, training(5, 6), terms);
    REQUIRE(terms.noisy == out.logits);
    REQUIRE((terms.clean - x * wg.transpose()).cwiseAbs().maxCoeff() < 1e-12);
    for (Index t = 0; t < T; ++t)
      for (Index e = 0; e < E; ++e)
        REQUIRE(std::abs(terms.stddev(t, e) - (std::log1p(std::exp(dot_row(x, t, wn, e))) + 1e-2)) < 1e-12);
  }
  moe::NoisyGatingTerms<double> clean;
  router.gating_terms(x, {}, clean);
  REQUIRE(clean.noisy == clean.clean);
  REQUIRE(clean.stddev.cwiseAbs().maxCoeff() == 0.0);
}

TEST_CASE("noisy top-k softplus neither overflows nor loses small values", "[router][noisy_top_k]") {
  using R = moe::NoisyTopKRouter<double>;
  REQUIRE(R::softplus(1000.0) == 1000.0);
  REQUIRE(R::softplus(-1000.0) == 0.0);
  REQUIRE(std::abs(R::softplus(-40.0) - std::exp(-40.0)) < 1e-30);
  REQUIRE(std::abs(R::softplus(0.5) - std::log(1.0 + std::exp(0.5))) < 1e-15);
}

TEST_CASE("noisy top-k in a layer gives the dense mixture of its gates", "[router][noisy_top_k][layer]") {
  const Index E = 4, d = 6, ff = 5, T = 11, k = 2;
  moe::SwiGLUExperts<double> experts(E, d, ff);
  experts.gate_up() = random_matrix(E * 2 * ff, d, 19, 0.5);
  experts.down() = random_matrix(E * d, ff, 20, 0.5);
  const auto wg = random_matrix(E, d, 21), wn = random_matrix(E, d, 22), x = random_matrix(T, d, 23);
  const moe::NoisyTopKMoE<double> layer(experts, moe::NoisyTopKRouter<double>(wg, wn, k));
  moe::Workspace<double> ws;
  const RowMatrix<double> y = layer.forward(x, ws, training(8, 9));
  RowMatrix<double> eps(T, E);
  const moe::CounterRng rng(8, 9);
  for (Index t = 0; t < T; ++t)
    for (Index e = 0; e < E; ++e) eps(t, e) = rng.normal(std::uint64_t(t), std::uint64_t(e));
  const Reference ref = reference_noisy_top_k(x, wg, wn, eps, k);
  const auto expected = moe::test::ref_mixture(
      x, ref.gates,
      [&](Index e, const moe::RowVector<double>& row) {
        return moe::test::ref_swiglu(row, experts.gate_proj(e), experts.up_proj(e), experts.down_proj(e));
      },
      d);
  REQUIRE((y - expected).cwiseAbs().maxCoeff() < 1e-12);
}

TEST_CASE("noisy top-k traits: needs the seed, token choice", "[router][noisy_top_k]") {
  STATIC_REQUIRE(moe::router_traits<moe::NoisyTopKRouter<float>>::needs_rng);
  STATIC_REQUIRE(moe::router_traits<moe::NoisyTopKRouter<float>>::token_choice);
  STATIC_REQUIRE_FALSE(moe::router_traits<moe::NoisyTopKRouter<float>>::needs_token_ids);
  STATIC_REQUIRE_FALSE(moe::router_traits<moe::NoisyTopKRouter<float>>::is_dense);
  STATIC_REQUIRE(moe::Router<moe::NoisyTopKRouter<double>>);
}

TEST_CASE("noisy top-k errors name the call, what was expected and what came", "[router][noisy_top_k]") {
  using R = moe::NoisyTopKRouter<float>;
  REQUIRE_THROWS_WITH(R(4, 8, 0), "NoisyTopKRouter::NoisyTopKRouter(): k expected in [1, num_experts = 4], got 0");
  REQUIRE_THROWS_WITH(R(4, 8, 5), "NoisyTopKRouter::NoisyTopKRouter(): k expected in [1, num_experts = 4], got 5");
  REQUIRE_THROWS_WITH(R(0, 8, 1), "NoisyTopKRouter::NoisyTopKRouter(): num_experts expected >= 1, got 0");
  REQUIRE_THROWS_WITH(R(RowMatrix<float>::Zero(4, 8), RowMatrix<float>::Zero(4, 7), 2),
                      "NoisyTopKRouter::NoisyTopKRouter(): noise_weight (as weight) expected shape [4, 8], got [4, 7]");
  REQUIRE_THROWS_WITH(R(RowMatrix<float>::Zero(4, 8), RowMatrix<float>::Zero(4, 8), 2, -1.0f),
                      "NoisyTopKRouter::NoisyTopKRouter(): noise_epsilon expected >= 0, got -1");
  R router(4, 8, 2);
  moe::RoutingResult<float> out;
  REQUIRE_THROWS_WITH(router.route(RowMatrix<float>::Zero(3, 7), out),
                      "NoisyTopKRouter::route(): x columns (input_dim) expected 8, got 7");
  REQUIRE_THROWS_WITH(router.set_noise(RowMatrix<float>::Zero(3, 5)),
                      "NoisyTopKRouter::set_noise(): noise columns (num_experts) expected 4, got 5");
  router.set_noise(RowMatrix<float>::Zero(3, 4));
  REQUIRE_THROWS_WITH(router.route(RowMatrix<float>::Zero(2, 8), out, training()),
                      "NoisyTopKRouter::route(): rows of the noise given to set_noise() (one per row of x) expected 2, "
                      "got 3");
  moe::NoisyGatingTerms<float> terms;
  REQUIRE_THROWS_WITH(router.gating_terms(RowMatrix<float>::Zero(2, 8), training(), terms),
                      "NoisyTopKRouter::gating_terms(): rows of the noise given to set_noise() (one per row of x) "
                      "expected 2, got 3");
  router.clear_noise();
  REQUIRE_NOTHROW(router.route(RowMatrix<float>::Zero(2, 8), out, training()));
}

TEST_CASE("noisy top-k routes an empty batch", "[router][noisy_top_k]") {
  moe::NoisyTopKRouter<double> router(random_matrix(4, 3, 24), random_matrix(4, 3, 25), 2);
  moe::RoutingResult<double> out;
  router.route(RowMatrix<double>(0, 3), out, training());
  REQUIRE(out.size() == 0);
  REQUIRE(out.logits.rows() == 0);
}
