// Per-sequence routing against the rule written as loops (the mean of each sequence's tokens,
// softmax, top-k, renormalised or not; every token gets its sequence's pairs), backward through
// whole layers against central finite differences (double) for x and every weight, with the
// losses on the per-token logits, and what it refuses.
#include <moe/layer/recurrent_moe.hpp>
#include <moe/loss/load_balancing_loss.hpp>
#include <moe/loss/z_loss.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <string>
#include <vector>

#include "support/errors.hpp"
#include "support/finite_difference.hpp"
#include "support/gradient_check.hpp"
#include "support/random.hpp"

namespace seq_router_test {

using moe::Index;
using moe::RowMatrix;

struct Reference {
  RowMatrix<double> logits;  // [B, E]
  RowMatrix<double> gates;   // [B, E], 0 where not routed
};

/// The rule by loops: m_b = mean of sequence b's L rows; logits = m_b W^T; softmax, the k
/// largest (ties to the lower index), renormalised or not.
Reference reference(const RowMatrix<double>& x, const RowMatrix<double>& w, Index L, Index k, bool renorm) {
  const Index B = x.rows() / L, E = w.rows(), d = x.cols();
  Reference r{RowMatrix<double>(B, E), RowMatrix<double>::Zero(B, E)};
  for (Index b = 0; b < B; ++b) {
    std::vector<double> m(std::size_t(d), 0.0);
    for (Index s = 0; s < L; ++s)
      for (Index c = 0; c < d; ++c) m[std::size_t(c)] += x(b * L + s, c) / double(L);
    std::vector<double> p(static_cast<std::size_t>(E));
    double top = -1e300;
    for (Index e = 0; e < E; ++e) {
      double z = 0;
      for (Index c = 0; c < d; ++c) z += m[std::size_t(c)] * w(e, c);
      r.logits(b, e) = z;
      top = std::max(top, z);
    }
    double sum = 0;
    for (Index e = 0; e < E; ++e) sum += (p[std::size_t(e)] = std::exp(r.logits(b, e) - top));
    for (double& v : p) v /= sum;
    std::vector<Index> order(static_cast<std::size_t>(E));
    for (Index e = 0; e < E; ++e) order[std::size_t(e)] = e;
    std::stable_sort(order.begin(), order.end(), [&](Index a, Index c) { return p[std::size_t(a)] > p[std::size_t(c)]; });
    double kept = 0;
    for (Index j = 0; j < k; ++j) kept += p[std::size_t(order[std::size_t(j)])];
    for (Index j = 0; j < k; ++j) {
      const Index e = order[std::size_t(j)];
      r.gates(b, e) = renorm ? p[std::size_t(e)] / kept : p[std::size_t(e)];
    }
  }
  return r;
}

/// Forward in training mode, backward of L = sum(y * G) + aux * LB + z * Z; checks dx and every
/// parameter against central finite differences of the same objective.
template <class Layer>
void check_layer_gradients(Layer& layer, Index T, Index sequence_length, moe::LossWeights<double> weights,
                           double tol = 1e-6) {
  RowMatrix<double> x = moe::test::random_matrix(T, layer.input_dim(), 71);
  const RowMatrix<double> G = moe::test::random_matrix(T, layer.output_dim(), 72);
  moe::ForwardContext ctx;
  ctx.mode = moe::Mode::training;
  ctx.sequence_length = sequence_length;
  const auto loss = [&] {
    moe::Workspace<double> ws;
    const RowMatrix<double> y = layer.forward(x, ws, ctx);
    double l = (y.array() * G.array()).sum();
    if (weights.aux != 0) l += weights.aux * moe::LoadBalancingLoss{}(ws.routing);
    if (weights.z != 0) l += weights.z * moe::RouterZLoss{}(ws.routing);
    return l;
  };
  moe::Workspace<double> ws;
  (void)layer.forward(x, ws, ctx);
  auto grads = layer.make_gradients();
  RowMatrix<double> dx(T, layer.input_dim());
  layer.backward(G, dx, ws, grads, weights);
  CHECK(moe::test::relative_gap(dx, moe::test::numeric_gradient(x, loss)) < tol);
  moe::test::check_parameter_gradients(layer, grads, loss, tol);
}

}  // namespace seq_router_test

TEST_CASE("SequenceRouter routes each sequence by the mean of its tokens, as loops", "[router][sequence]") {
  using moe::Index;
  using moe::RowMatrix;
  struct Case {
    Index E, d, k, L, B;
    bool renorm;
    Index sequence_length;  // the context's: L, or 0 when B = 1
  };
  for (const Case c : {Case{4, 6, 2, 5, 3, true, 5}, Case{5, 3, 1, 1, 7, false, 1}, Case{3, 4, 3, 8, 1, true, 0},
                       Case{6, 5, 4, 4, 2, false, 4}, Case{4, 6, 2, 9, 1, true, 9}}) {
    INFO("E " << c.E << ", k " << c.k << ", L " << c.L << ", B " << c.B << ", renormalise " << c.renorm
              << ", sequence_length " << c.sequence_length);
    const RowMatrix<double> w = moe::test::random_matrix(c.E, c.d, 80, 1.5);
    const moe::SequenceSoftmaxTopKRouter<double> router(
        moe::TopKRouter<moe::SoftmaxTopK<double>>(w, c.k, moe::SoftmaxTopK<double>{c.renorm}));
    REQUIRE(router.k() == c.k);
    const Index T = c.L * c.B;
    const RowMatrix<double> x = moe::test::random_matrix(T, c.d, 81);
    moe::ForwardContext ctx;
    ctx.sequence_length = c.sequence_length;
    const seq_router_test::Reference want = seq_router_test::reference(x, w, c.L, c.k, c.renorm);

    moe::RoutingResult<double> seq;
    router.route_sequences(x, seq, ctx);
    REQUIRE(seq.num_tokens == c.B);
    CHECK((seq.logits - want.logits).cwiseAbs().maxCoeff() < 1e-13);
    CHECK((seq.dense_gates() - want.gates).cwiseAbs().maxCoeff() < 1e-14);

    moe::RoutingResult<double> r;
    router.route(x, r, ctx);
    REQUIRE(r.num_tokens == T);
    REQUIRE(r.num_experts == c.E);
    REQUIRE(r.k == c.k);
    REQUIRE(r.size() == T * c.k);
    for (Index t = 0; t < T; ++t) {
      const Index b = t / c.L;
      CHECK(r.logits.row(t) == seq.logits.row(b));
      CHECK(r.scores.row(t) == seq.scores.row(b));
      for (Index j = 0; j < c.k; ++j) {
        const auto i = std::size_t(t * c.k + j), si = std::size_t(b * c.k + j);
        CHECK(r.token[i] == t);
        CHECK(r.expert[i] == seq.expert[si]);
        CHECK(r.gate[i] == seq.gate[si]);
      }
    }
    const RowMatrix<double> dense = r.dense_gates();
    for (Index t = 0; t < T; ++t) CHECK((dense.row(t) - want.gates.row(t / c.L)).cwiseAbs().maxCoeff() < 1e-14);
  }
}

TEST_CASE("SequenceRouter: an empty batch, its parameters and traits", "[router][sequence]") {
  using moe::Index;
  using Router = moe::SequenceSoftmaxTopKRouter<float>;
  static_assert(moe::router_traits<Router>::token_choice);
  static_assert(!moe::router_traits<Router>::couples_gates);
  static_assert(!moe::router_traits<Router>::is_dense);
  Router router(3, 4, 2);
  router.weight()(1, 2) = 5.0f;
  CHECK(router.router().weight()(1, 2) == 5.0f);
  std::vector<std::string> names;
  router.for_each_parameter([&](const std::string& name, const auto& block) {
    names.push_back(name);
    CHECK(block.rows() == 3);
  });
  CHECK(names == std::vector<std::string>{"gate.weight"});
  moe::RoutingResult<float> r;
  moe::ForwardContext ctx;
  ctx.sequence_length = 4;
  router.route(moe::RowMatrix<float>(0, 4), r, ctx);
  CHECK(r.num_tokens == 0);
  CHECK(r.size() == 0);
  CHECK(r.logits.rows() == 0);
}

TEST_CASE("SequenceRouter names what it refuses", "[router][sequence][errors]") {
  using moe::test::require_invalid;
  const moe::SequenceSoftmaxTopKRouter<float> router(3, 4, 2);
  moe::RoutingResult<float> r;
  moe::ForwardContext ctx;
  ctx.sequence_length = 3;
  require_invalid([&] { router.route(moe::RowMatrix<float>::Zero(10, 4), r, ctx); },
                  {"SequenceRouter::route(): ctx.sequence_length expected 0 or a divisor of the number of tokens 10, "
                   "got 3"});
  require_invalid([&] { router.route_sequences(moe::RowMatrix<float>::Zero(10, 4), r, ctx); },
                  {"SequenceRouter::route_sequences(): ctx.sequence_length expected 0 or a divisor of the number of "
                   "tokens 10, got 3"});
  ctx.sequence_length = -2;
  require_invalid([&] { router.route(moe::RowMatrix<float>::Zero(4, 4), r, ctx); }, {"got -2"});
  ctx.sequence_length = 2;
  require_invalid([&] { router.route(moe::RowMatrix<float>::Zero(4, 5), r, ctx); },
                  {"SequenceRouter::route(): x columns (input_dim) expected 4, got 5"});
  require_invalid([] { moe::SequenceSoftmaxTopKRouter<float>(3, 4, 4); },
                  {"TopKRouter::TopKRouter(): k expected in [1, num_experts = 3], got 4"});
  // Through a layer: the layer's forward reaches the router's check.
  moe::RecurrentMoE<float> layer(moe::GRUExperts<float>(3, 4, 2), router);
  moe::Workspace<float> ws;
  ctx.sequence_length = 4;
  require_invalid([&] { (void)layer.forward(moe::RowMatrix<float>::Zero(6, 4), ws, ctx); },
                  {"SequenceRouter::route(): ctx.sequence_length expected 0 or a divisor of the number of tokens 6, "
                   "got 4"});
}

TEST_CASE("SequenceRouter backward through a recurrent layer matches finite differences, with losses",
          "[router][sequence][backward]") {
  using moe::Index;
  moe::GRUExperts<double> experts(4, 5, 3);
  moe::test::fill(experts.weights_ih(), 90, 0.5);
  moe::test::fill(experts.weights_hh(), 91, 0.5);
  moe::test::fill(experts.biases_ih(), 92, 0.5);
  moe::test::fill(experts.biases_hh(), 93, 0.5);
  moe::SequenceSoftmaxTopKRouter<double> router(4, 5, 2);
  moe::test::fill(router.weight(), 94, 1.5);
  moe::RecurrentMoE<double> layer(std::move(experts), std::move(router));
  SECTION("no loss, 3 sequences of 5") { seq_router_test::check_layer_gradients(layer, 15, 5, {}); }
  SECTION("load balancing and z losses on the per-token logits, 4 sequences of 3") {
    seq_router_test::check_layer_gradients(layer, 12, 3, {.aux = 0.7, .z = 0.3});
  }
  SECTION("the whole batch as one sequence (sequence_length 0), z loss") {
    seq_router_test::check_layer_gradients(layer, 7, 0, {.aux = 0.0, .z = 0.5});
  }
}

TEST_CASE("SequenceRouter backward with a logit bias, over SwiGLU experts, matches finite differences",
          "[router][sequence][backward]") {
  using moe::Index;
  using moe::RowMatrix;
  const Index E = 5, d = 4;
  moe::Vector<double> bias(E);
  moe::test::fill(bias, 100);
  moe::SequenceRouter<moe::SoftmaxTopK<double>> router(moe::TopKRouter<moe::SoftmaxTopK<double>>(
      moe::test::random_matrix(E, d, 101, 1.5), 3, moe::SoftmaxTopK<double>{false}, bias));
  using Layer = moe::MoELayer<moe::SwiGLUExperts<double>, moe::SequenceRouter<moe::SoftmaxTopK<double>>,
                              moe::WeightedSumCombiner<double>>;
  Layer layer(moe::test::swiglu<double>(E, d, 6, 102), std::move(router));
  std::vector<std::string> names;
  layer.router().for_each_parameter([&](const std::string& name, const auto&) { names.push_back(name); });
  REQUIRE(names == std::vector<std::string>{"gate.weight", "gate.bias"});
  seq_router_test::check_layer_gradients(layer, 12, 4, {.aux = 0.4, .z = 0.2});
}
