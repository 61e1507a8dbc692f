// SoftRouter and MoELayer's dense path (Soft MoE) against a scalar reference written from the
// paper, its sequence_length errors and the router's settings.
#include <moe/moe.hpp>
#include <moe/combine/soft_combiner.hpp>
#include <moe/router/soft_router.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <random>

#include "support/bits.hpp"
#include "support/random.hpp"
#include "support/reference_moe.hpp"

namespace {

using moe::Index;
using moe::RowMatrix;

using moe::test::fill;

template <class S>
moe::SoftMoE<S> random_soft_moe(Index E, Index d, Index ff, Index p, bool normalize = false) {
  moe::FFNExperts<S, moe::Activation::gelu_erf> experts(E, d, ff);
  fill(experts.wi(), 21, 0.4);
  fill(experts.wo(), 22, 0.4);
  moe::SoftRouter<S> router(E, d, p, normalize);
  fill(router.phi(), 23, 0.5);
  return {std::move(experts), std::move(router)};
}

struct SoftReference {
  RowMatrix<double> y, dispatch, combine;
};

/// Soft MoE from the definition, one sequence at a time, with loops and std::exp.
/// phi [d, E*p]; expert e: y = wo gelu(wi x); optional l2 normalisation of the logits.
template <class Layer>
SoftReference ref_soft_moe(const Layer& layer, const RowMatrix<double>& x, Index seq_len) {
  const auto& router = layer.router();
  const auto& ex = layer.experts();
  const Index T = x.rows(), d = x.cols(), E = layer.num_experts(), p = router.slots_per_expert(), m = E * p;
  const Index n = seq_len == 0 ? T : seq_len;
  const double eps = double(router.epsilon());
  SoftReference r{RowMatrix<double>::Zero(T, d), RowMatrix<double>(T, m), RowMatrix<double>(T, m)};
  RowMatrix<double> logits(T, m);
  for (Index t = 0; t < T; ++t) {
    double xn = 0;
    for (Index j = 0; j < d; ++j) xn += x(t, j) * x(t, j);
    for (Index i = 0; i < m; ++i) {
      double s = 0, pn = 0;
      for (Index j = 0; j < d; ++j) {
        s += x(t, j) * double(router.phi()(j, i));
        pn += double(router.phi()(j, i)) * double(router.phi()(j, i));
      }
      logits(t, i) = router.normalize() ? double(router.scale()) * s / std::sqrt(xn + eps) / std::sqrt(pn + eps) : s;
    }
  }
  for (Index b = 0; b < T / n; ++b) {
    const Index t0 = b * n;
    // D: softmax over the sequence's tokens, per slot.
    for (Index i = 0; i < m; ++i) {
      double mx = -INFINITY, sum = 0;
      for (Index t = t0; t < t0 + n; ++t) mx = std::max(mx, logits(t, i));
      for (Index t = t0; t < t0 + n; ++t) sum += std::exp(logits(t, i) - mx);
      for (Index t = t0; t < t0 + n; ++t) r.dispatch(t, i) = std::exp(logits(t, i) - mx) / sum;
    }
    // C: softmax over slots, per token.
    for (Index t = t0; t < t0 + n; ++t) {
      double mx = -INFINITY, sum = 0;
      for (Index i = 0; i < m; ++i) mx = std::max(mx, logits(t, i));
      for (Index i = 0; i < m; ++i) sum += std::exp(logits(t, i) - mx);
      for (Index i = 0; i < m; ++i) r.combine(t, i) = std::exp(logits(t, i) - mx) / sum;
    }
    for (Index i = 0; i < m; ++i) {
      moe::RowVector<double> slot = moe::RowVector<double>::Zero(d);
      for (Index t = t0; t < t0 + n; ++t) slot += r.dispatch(t, i) * x.row(t);
      const Index e = i / p;
      moe::RowVector<double> h(ex.d_ff());
      for (Index f = 0; f < ex.d_ff(); ++f) {
        double s = 0;
        for (Index j = 0; j < d; ++j) s += double(ex.wi(e)(f, j)) * slot[j];
        h[f] = moe::test::ref_gelu_erf(s);
      }
      moe::RowVector<double> out(d);
      for (Index o = 0; o < d; ++o) {
        double s = 0;
        for (Index f = 0; f < ex.d_ff(); ++f) s += double(ex.wo(e)(o, f)) * h[f];
        out[o] = s;
      }
      for (Index t = t0; t < t0 + n; ++t) r.y.row(t) += r.combine(t, i) * out;
    }
  }
  return r;
}

double rel(const RowMatrix<double>& a, const RowMatrix<double>& b) {
  return (a - b).cwiseAbs().maxCoeff() / b.cwiseAbs().maxCoeff();
}

}  // namespace

TEMPLATE_TEST_CASE("the Soft MoE dense path equals the paper's algorithm per sequence", "[layer][soft]", float,
                   double) {
  using S = TestType;
  const double tol = std::is_same_v<S, float> ? 1e-5 : 1e-12;
  struct Shape {
    Index E, p, T, seq;
    bool normalize;
  };
  for (const Shape s : {Shape{4, 2, 15, 5, false}, Shape{4, 2, 15, 0, false}, Shape{3, 1, 8, 8, false},
                        Shape{2, 3, 12, 3, false}, Shape{5, 2, 7, 1, false}, Shape{4, 2, 12, 4, true}}) {
    INFO("E " << s.E << ", p " << s.p << ", T " << s.T << ", sequence_length " << s.seq << ", normalize "
              << s.normalize);
    auto layer = random_soft_moe<S>(s.E, 6, 7, s.p, s.normalize);
    if (s.normalize) layer.router().scale() = S(2.5);
    RowMatrix<double> x(s.T, 6);
    fill(x, 31);
    moe::Workspace<S> ws;
    moe::ForwardContext ctx;
    ctx.sequence_length = s.seq;
    const RowMatrix<S> y = layer.forward(x.cast<S>(), ws, ctx);
    const SoftReference ref = ref_soft_moe(layer, x.cast<S>().template cast<double>(), s.seq);
    CHECK(rel(y.template cast<double>(), ref.y) < tol);
    CHECK(rel(ws.routing.scores.template cast<double>(), ref.dispatch) < tol);
    CHECK(rel(moe::SoftCombiner<S>::combine_weights(ws).template cast<double>(), ref.combine) < tol);
    // Every expert processed its p slots of every sequence; nothing is dropped.
    const Index B = s.seq == 0 ? 1 : s.T / s.seq;
    for (const Index load : ws.stats.expert_load) CHECK(load == B * s.p);
    CHECK(ws.stats.dropped == 0);
    CHECK(ws.stats.assignments == s.E * B * s.p);
    CHECK(ws.routing.size() == 0);
  }
}

TEST_CASE("Soft MoE weights are distributions: dispatch over each sequence, combine over slots", "[layer][soft]") {
  const auto layer = random_soft_moe<double>(3, 5, 4, 2);
  RowMatrix<double> x(12, 5);
  fill(x, 41, 3.0);
  moe::Workspace<double> ws;
  moe::ForwardContext ctx;
  ctx.sequence_length = 4;
  (void)layer.forward(x, ws, ctx);
  for (Index b = 0; b < 3; ++b)
    for (Index i = 0; i < 6; ++i) CHECK(ws.routing.scores.block(b * 4, i, 4, 1).sum() == Approx(1.0).epsilon(1e-14));
  for (Index t = 0; t < 12; ++t) CHECK(ws.combine.hidden.row(t).sum() == Approx(1.0).epsilon(1e-14));
}

TEST_CASE("Soft MoE sequences do not see each other", "[layer][soft]") {
  const auto layer = random_soft_moe<double>(4, 6, 5, 2);
  RowMatrix<double> x(10, 6);
  fill(x, 51);
  moe::Workspace<double> ws;
  moe::ForwardContext ctx;
  ctx.sequence_length = 5;
  const RowMatrix<double> both = layer.forward(x, ws, ctx);
  ctx.sequence_length = 0;
  const RowMatrix<double> first = layer.forward(x.topRows(5), ws, ctx);
  const RowMatrix<double> second = layer.forward(x.bottomRows(5), ws, ctx);
  CHECK((both.topRows(5) - first).cwiseAbs().maxCoeff() < 1e-14);
  CHECK((both.bottomRows(5) - second).cwiseAbs().maxCoeff() < 1e-14);
  // One sequence of ten is a different mixture.
  const RowMatrix<double> joint = layer.forward(x, ws, ctx);
  CHECK((joint - both).cwiseAbs().maxCoeff() > 1e-6);
}

TEMPLATE_TEST_CASE("a Soft MoE sequence gets the same bits wherever it sits in the batch, forward and backward",
                   "[layer][soft][determinism]", float, double) {
  // Sequences at rows 3, 6, 9 of a batch and at rows 0, 3, 6 of another: the dispatch softmax
  // (exp, column sums) and its backward must not follow the rows' addresses (an Eigen exp and
  // colwise sum over the block did, in float; found by the expert-parallel tests).
  using S = TestType;
  for (const bool normalize : {false, true}) {
    const auto layer = random_soft_moe<S>(6, 8, 12, 1, normalize);
    RowMatrix<S> x(12, 8), dy(12, 8);
    fill(x, 61);
    fill(dy, 62);
    moe::ForwardContext ctx;
    ctx.sequence_length = 3;
    ctx.mode = moe::Mode::training;
    ctx.gemm = moe::GemmKernel::batch_invariant;
    moe::Workspace<S> whole_ws, tail_ws;
    const RowMatrix<S> y = layer.forward(x, whole_ws, ctx);
    const RowMatrix<S> x_tail = x.bottomRows(9), dy_tail = dy.bottomRows(9);
    const RowMatrix<S> y_tail = layer.forward(x_tail, tail_ws, ctx);
    CHECK(moe::test::same_bits(y_tail, RowMatrix<S>(y.bottomRows(9))));
    // The router's backward per sequence: the dispatch softmax's gradient of each row.
    auto g_whole = layer.make_gradients(), g_tail = layer.make_gradients();
    const RowMatrix<S> dx = layer.backward(dy, whole_ws, g_whole);
    const RowMatrix<S> dx_tail = layer.backward(dy_tail, tail_ws, g_tail);
    const RowMatrix<S> expected = dx.bottomRows(9);
    CHECK((dx_tail - expected).cwiseAbs().maxCoeff() <= (sizeof(S) == 4 ? 1e-5 : 1e-13) * (1 + expected.norm()));
  }
}

TEST_CASE("Soft MoE ignores capacity, reuses its workspace and accepts an empty batch", "[layer][soft]") {
  auto layer = random_soft_moe<double>(4, 6, 5, 2);
  RowMatrix<double> a(8, 6), b(3, 6);
  fill(a, 61);
  fill(b, 62);
  moe::Workspace<double> ws;
  const RowMatrix<double> ya = layer.forward(a, ws);
  const RowMatrix<double> yb = layer.forward(b, ws);
  moe::Workspace<double> fresh;
  CHECK(layer.forward(a, ws) == ya);
  CHECK(layer.forward(b, fresh) == yb);
  layer.set_capacity(moe::Capacity::fixed(1));
  CHECK(layer.forward(a, ws) == ya);

  moe::ForwardContext ctx;
  ctx.sequence_length = 4;
  const RowMatrix<double> y0 = layer.forward(RowMatrix<double>(0, 6), ws, ctx);
  CHECK(y0.rows() == 0);
  CHECK(y0.cols() == 6);
  CHECK(ws.stats.assignments == 0);
  for (const Index load : ws.stats.expert_load) CHECK(load == 0);
}

TEST_CASE("a sequence length that does not divide the batch is refused", "[layer][soft][errors]") {
  const auto layer = random_soft_moe<double>(4, 6, 5, 2);
  RowMatrix<double> x(10, 6);
  fill(x, 71);
  moe::Workspace<double> ws;
  moe::ForwardContext ctx;
  ctx.sequence_length = 3;
  REQUIRE_THROWS_WITH(layer.forward(x, ws, ctx),
                      "MoELayer::forward(): ctx.sequence_length expected 0 or a divisor of the number of tokens 10, "
                      "got 3");
  ctx.sequence_length = -2;
  REQUIRE_THROWS_WITH(layer.forward(x, ws, ctx),
                      "MoELayer::forward(): ctx.sequence_length expected 0 or a divisor of the number of tokens 10, "
                      "got -2");
  // The router checks it too when called on its own.
  moe::RoutingResult<double> r;
  ctx.sequence_length = 4;
  REQUIRE_THROWS_WITH(layer.router().route(x, r, ctx),
                      "SoftRouter::route(): ctx.sequence_length expected 0 or a divisor of the number of tokens 10, "
                      "got 4");
  REQUIRE_THROWS_WITH(layer.router().route(RowMatrix<double>(10, 5), r),
                      "SoftRouter::route(): x columns (input_dim) expected 6, got 5");
}

TEST_CASE("Soft router settings are checked when it is built", "[layer][soft][errors]") {
  REQUIRE_THROWS_WITH(moe::SoftRouter<double>(RowMatrix<double>::Zero(4, 6), 4),
                      "SoftRouter::SoftRouter(): phi columns (num_experts * slots_per_expert) expected a positive "
                      "multiple of slots_per_expert = 4, got 6");
  REQUIRE_THROWS_WITH(moe::SoftRouter<double>(RowMatrix<double>::Zero(4, 6), 0),
                      "SoftRouter::SoftRouter(): slots_per_expert expected >= 1, got 0");
  REQUIRE_THROWS_WITH(moe::SoftRouter<double>(0, 4, 2), "SoftRouter::SoftRouter(): num_experts expected >= 1, got 0");
  const moe::SoftRouter<float> r(RowMatrix<float>::Zero(4, 6), 3);
  CHECK(r.num_experts() == 2);
  CHECK(r.num_slots() == 6);
  CHECK(r.input_dim() == 4);
  STATIC_REQUIRE(moe::router_traits<moe::SoftRouter<float>>::is_dense);
  STATIC_REQUIRE_FALSE(moe::router_traits<moe::SoftRouter<float>>::token_choice);
  // A layer with the wrong number of experts for its router.
  REQUIRE_THROWS_WITH(moe::SoftMoE<double>(moe::FFNExperts<double, moe::Activation::gelu_erf>(3, 4, 5),
                                           moe::SoftRouter<double>(RowMatrix<double>::Zero(4, 4), 2)),
                      "MoELayer::MoELayer(): router num_experts (= experts) expected 3, got 2");
}
