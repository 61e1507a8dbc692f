// RecurrentMoE: the whole rule written as loops (each sequence's mean routes it, its experts' GRUs
// run over it, the gated sum), backward against central finite differences for every tensor,
// whole slabs longer than the executor's 512-row tasks, bit-identical results for any thread
// count, and the configurations GRU experts refuse (token routing, capacity).
#include <moe/layer/recurrent_moe.hpp>
#include <moe/core/thread_pool.hpp>

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

namespace recurrent_moe_test {

using moe::Index;
using moe::RowMatrix;

template <class S>
moe::RecurrentMoE<S> make_layer(Index E, Index d, Index H, Index k, unsigned seed) {
  moe::GRUExperts<S> experts(E, d, H);
  moe::test::fill(experts.weights_ih(), seed, 0.5);
  moe::test::fill(experts.weights_hh(), seed + 1, 0.5);
  moe::test::fill(experts.biases_ih(), seed + 2, 0.5);
  moe::test::fill(experts.biases_hh(), seed + 3, 0.5);
  moe::SequenceSoftmaxTopKRouter<S> router(E, d, k);
  moe::test::fill(router.weight(), seed + 4, 1.5);
  return moe::RecurrentMoE<S>(std::move(experts), std::move(router));
}

double sig(double a) { return 1.0 / (1.0 + std::exp(-a)); }

/// The golden case's rule by loops, in double: per sequence b of L tokens, m_b = its mean,
/// p = softmax(m_b W^T), the k largest renormalised; y_t = sum of gate_e * h_t^(e), each GRU
/// from h = 0 at the sequence's first token.
template <class S>
RowMatrix<double> layer_reference(const moe::RecurrentMoE<S>& layer, const RowMatrix<double>& x, Index L, Index k) {
  const auto& w = layer.router().weight();
  const auto& bank = layer.experts();
  const Index E = w.rows(), d = x.cols(), H = bank.hidden_size(), B = x.rows() / L;
  RowMatrix<double> y = RowMatrix<double>::Zero(x.rows(), H);
  for (Index b = 0; b < B; ++b) {
    std::vector<double> z(std::size_t(E), 0.0), p(static_cast<std::size_t>(E));
    for (Index e = 0; e < E; ++e)
      for (Index c = 0; c < d; ++c) {
        double m = 0;
        for (Index s = 0; s < L; ++s) m += x(b * L + s, c);
        z[std::size_t(e)] += double(w(e, c)) * m / double(L);
      }
    const double top = *std::max_element(z.begin(), z.end());
    // Unnormalised: the renormalised gates p_e / (sum of the kept p) do not need the softmax's sum.
    for (Index e = 0; e < E; ++e) p[std::size_t(e)] = std::exp(z[std::size_t(e)] - top);
    std::vector<Index> order(static_cast<std::size_t>(E));
    for (Index e = 0; e < E; ++e) order[std::size_t(e)] = e;
    std::stable_sort(order.begin(), order.end(), [&](Index a, Index c) { return p[std::size_t(a)] > p[std::size_t(c)]; });
    double kept = 0;
    for (Index j = 0; j < k; ++j) kept += p[std::size_t(order[std::size_t(j)])];
    for (Index j = 0; j < k; ++j) {
      const Index e = order[std::size_t(j)];
      const double gate = p[std::size_t(e)] / kept;
      const auto wi = bank.weight_ih(e);
      const auto wh = bank.weight_hh(e);
      const auto bi = bank.bias_ih(e);
      const auto bh = bank.bias_hh(e);
      std::vector<double> h(std::size_t(H), 0.0), next(static_cast<std::size_t>(H));
      for (Index s = 0; s < L; ++s) {
        const Index t = b * L + s;
        for (Index u = 0; u < H; ++u) {
          double a[3] = {double(bi(0, u)), double(bi(0, H + u)), double(bi(0, 2 * H + u))};
          double g[3] = {double(bh(0, u)), double(bh(0, H + u)), double(bh(0, 2 * H + u))};
          for (Index q = 0; q < 3; ++q) {
            for (Index c = 0; c < d; ++c) a[q] += double(wi(q * H + u, c)) * x(t, c);
            for (Index c = 0; c < H; ++c) g[q] += double(wh(q * H + u, c)) * h[std::size_t(c)];
          }
          const double r = sig(a[0] + g[0]), zz = sig(a[1] + g[1]), n = std::tanh(a[2] + r * g[2]);
          next[std::size_t(u)] = (1 - zz) * n + zz * h[std::size_t(u)];
        }
        h = next;
        for (Index u = 0; u < H; ++u) y(t, u) += gate * h[std::size_t(u)];
      }
    }
  }
  return y;
}

struct ThreadResult {
  RowMatrix<float> y, dx;
  std::vector<RowMatrix<float>> grads;
  Index largest_slab = 0;
};

ThreadResult run_threads(const moe::RecurrentMoE<float>& layer, const RowMatrix<float>& x, const RowMatrix<float>& dy,
                         Index L, moe::ThreadPool* pool) {
  moe::Workspace<float> ws;
  moe::ForwardContext ctx;
  ctx.mode = moe::Mode::training;
  ctx.sequence_length = L;
  ctx.pool = pool;
  ThreadResult r;
  r.y = layer.forward(x, ws, ctx);
  for (Index e = 0; e < layer.num_experts(); ++e) r.largest_slab = std::max(r.largest_slab, ws.plan.count(e));
  auto grads = layer.make_gradients();
  r.dx.resize(x.rows(), layer.input_dim());
  layer.backward(dy, r.dx, ws, grads, moe::LossWeights<float>{0.01f, 0.001f});
  grads.for_each_parameter([&](const std::string&, const auto& g) { r.grads.emplace_back(g); });
  return r;
}

}  // namespace recurrent_moe_test

TEMPLATE_TEST_CASE("RecurrentMoE: the per-sequence rule written as loops", "[layer][recurrent]", float, double) {
  using S = TestType;
  using moe::Index;
  using moe::RowMatrix;
  const double tol = std::is_same_v<S, float> ? 1e-5 : 1e-13;
  struct Case {
    Index E, d, H, k, L, B, sequence_length;
  };
  for (const Case c : {Case{4, 5, 3, 2, 6, 3, 6}, Case{3, 4, 4, 1, 1, 5, 1}, Case{5, 3, 6, 3, 9, 1, 0}}) {
    INFO("E " << c.E << ", d " << c.d << ", H " << c.H << ", k " << c.k << ", L " << c.L << ", B " << c.B);
    const moe::RecurrentMoE<S> layer = recurrent_moe_test::make_layer<S>(c.E, c.d, c.H, c.k, 300);
    REQUIRE(layer.output_dim() == c.H);
    const RowMatrix<double> x = moe::test::random_matrix(c.L * c.B, c.d, 301);
    moe::ForwardContext ctx;
    ctx.sequence_length = c.sequence_length;
    moe::Workspace<S> ws;
    const RowMatrix<S> y = layer.forward(x.cast<S>(), ws, ctx);
    CHECK(moe::test::relative_gap(y, recurrent_moe_test::layer_reference(layer, x, c.L, c.k)) < tol);
    // Each expert's slab is whole sequences in token order.
    for (Index e = 0; e < c.E; ++e) CHECK(ws.plan.count(e) % c.L == 0);
  }
}

TEST_CASE("RecurrentMoE backward matches finite differences for x and every tensor", "[layer][recurrent][backward]") {
  using moe::Index;
  using moe::RowMatrix;
  struct Case {
    Index E, d, H, k, T, sequence_length;
  };
  for (const Case c : {Case{3, 4, 5, 2, 12, 4}, Case{4, 5, 2, 3, 6, 1}, Case{3, 3, 3, 1, 7, 0}}) {
    INFO("E " << c.E << ", d " << c.d << ", H " << c.H << ", k " << c.k << ", T " << c.T << ", sequence_length "
              << c.sequence_length);
    moe::RecurrentMoE<double> layer = recurrent_moe_test::make_layer<double>(c.E, c.d, c.H, c.k, 310);
    RowMatrix<double> x = moe::test::random_matrix(c.T, c.d, 311);
    const RowMatrix<double> G = moe::test::random_matrix(c.T, c.H, 312);
    moe::ForwardContext ctx;
    ctx.mode = moe::Mode::training;
    ctx.sequence_length = c.sequence_length;
    const auto loss = [&] {
      moe::Workspace<double> w;
      return (layer.forward(x, w, ctx).array() * G.array()).sum();
    };
    moe::Workspace<double> ws;
    (void)layer.forward(x, ws, ctx);
    auto grads = layer.make_gradients();
    RowMatrix<double> dx(c.T, c.d);
    layer.backward(G, dx, ws, grads, moe::no_losses);
    CHECK(moe::test::relative_gap(dx, moe::test::numeric_gradient(x, loss)) < 1e-6);
    moe::test::check_parameter_gradients(layer, grads, loss, 1e-6);
  }
}

TEST_CASE("RecurrentMoE runs slabs of more than 512 rows whole, with the same bits for any thread count",
          "[layer][recurrent][threads]") {
  using moe::Index;
  using moe::RowMatrix;
  const Index L = 400, B = 3, d = 4, H = 3;
  const moe::RecurrentMoE<float> layer = recurrent_moe_test::make_layer<float>(3, d, H, 2, 320);
  RowMatrix<float> x(L * B, d), dy(L * B, H);
  moe::test::fill(x, 321);
  moe::test::fill(dy, 322);
  const recurrent_moe_test::ThreadResult serial = recurrent_moe_test::run_threads(layer, x, dy, L, nullptr);
  // 6 sequences of 400 over 3 experts: some expert's slab is at least 800 rows, more than one
  // executor task of 512, so a cut would restart its GRU mid-sequence.
  REQUIRE(serial.largest_slab > moe::expert_rows_per_task);
  CHECK(moe::test::relative_gap(serial.y, recurrent_moe_test::layer_reference(layer, x.cast<double>(), L, 2)) < 1e-5);
  for (const Index threads : {1, 2, 3}) {
    INFO("threads " << threads);
    moe::ThreadPool pool(threads);
    const recurrent_moe_test::ThreadResult r = recurrent_moe_test::run_threads(layer, x, dy, L, &pool);
    REQUIRE(r.y == serial.y);
    REQUIRE(r.dx == serial.dx);
    REQUIRE(r.grads.size() == serial.grads.size());
    for (std::size_t i = 0; i < r.grads.size(); ++i) REQUIRE(r.grads[i] == serial.grads[i]);
  }
}

TEST_CASE("GRU experts refuse token routing and capacity: a sequence must reach its experts whole",
          "[layer][recurrent][errors]") {
  using moe::Index;
  using moe::RowMatrix;
  using moe::test::require_invalid;
  const RowMatrix<double> x = moe::test::random_matrix(12, 4, 330);
  moe::ForwardContext ctx;
  ctx.sequence_length = 4;
  moe::Workspace<double> ws;
  // A token router sends a sequence's tokens to different experts.
  moe::GRUExperts<double> experts(4, 4, 3);
  moe::test::fill(experts.weights_ih(), 331);
  moe::SoftmaxTopKRouter<double> tokens(4, 4, 1);
  moe::test::fill(tokens.weight(), 332, 3.0);
  const moe::MoELayer<moe::GRUExperts<double>, moe::SoftmaxTopKRouter<double>, moe::WeightedSumCombiner<double>>
      token_routed(experts, tokens);
  require_invalid([&] { (void)token_routed.forward(x, ws, ctx); }, {"GRUExperts::forward(): ", "SequenceRouter"});
  // A capacity that drops part of a sequence.
  moe::RecurrentMoE<double> layer = recurrent_moe_test::make_layer<double>(2, 4, 3, 1, 333);
  (void)layer.forward(x, ws, ctx);
  layer.set_capacity(moe::Capacity::fixed(6));
  require_invalid([&] { (void)layer.forward(x, ws, ctx); }, {"GRUExperts::forward(): ", "without capacity"});
}
