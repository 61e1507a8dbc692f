// MultiHeadLayer (MH-MoE): the forward against the rule written as loops (projection, split
// into sub-tokens, softmax top-k per sub-token, SwiGLU, merge, projection), the gradients
// against central finite differences, the properties of the split (h = 1 is the inner layer
// between two products; the sub-tokens are routed as the [T*h, d/h] matrix; ids repeated per
// sub-token), thread-count invariance, and the errors. Its golden case:
// tests/conformance/variety_test.cpp.
#include <moe/layer/multi_head_layer.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "support/errors.hpp"
#include "support/finite_difference.hpp"
#include "support/gradient_check.hpp"
#include "support/random.hpp"

namespace mh_layer_test {

using moe::Index;
using moe::RowMatrix;
using moe::test::random_matrix;

struct Shape {
  Index h, E, dh, ff, k, T;
};

/// An MH-MoE layer of the given shape in scalar S: SwiGLU experts from seed, the gate and the
/// projections N(0, 1) and N(0, 1/d) from the following seeds.
template <class S = double>
moe::MultiHeadMoE<S> mh_make(const Shape& s, unsigned seed, bool renormalize = true) {
  const Index d = s.h * s.dh;
  RowMatrix<S> gate = random_matrix(s.E, s.dh, seed + 2).cast<S>();
  return moe::MultiHeadMoE<S>(
      moe::MixtralMoE<S>(moe::test::swiglu<S>(s.E, s.dh, s.ff, seed),
                         moe::SoftmaxTopKRouter<S>(std::move(gate), s.k, moe::SoftmaxTopK<S>{renormalize})),
      s.h, random_matrix(d, d, seed + 3, 1.0 / std::sqrt(double(d))).cast<S>(),
      random_matrix(d, d, seed + 4, 1.0 / std::sqrt(double(d))).cast<S>());
}

struct MhReference {
  RowMatrix<double> y, logits, gates;
};

/// The rule by loops, from the layer's weights: x' = x Wh^T; sub-token (t, j) = x'_t[j dh,
/// (j+1) dh); softmax, top-k (ties to the lower index), renormalised or not; SwiGLU of the
/// chosen experts; merged_t = the sub-token outputs side by side; y = merged Wm^T.
MhReference mh_reference(const moe::MultiHeadMoE<double>& layer, const RowMatrix<double>& x, bool renormalize) {
  const Index T = x.rows(), d = layer.input_dim(), h = layer.num_heads(), dh = layer.head_dim();
  const auto& experts = layer.inner().experts();
  const RowMatrix<double>& wg = layer.inner().router().weight();
  const Index E = wg.rows(), k = layer.inner().router().k(), ff = experts.d_ff();
  const RowMatrix<double>& wh = layer.head_proj();
  const RowMatrix<double>& wm = layer.merge_proj();
  MhReference r{RowMatrix<double>::Zero(T, d), RowMatrix<double>::Zero(T * h, E), RowMatrix<double>::Zero(T * h, E)};
  RowMatrix<double> merged = RowMatrix<double>::Zero(T, d);
  for (Index t = 0; t < T; ++t) {
    std::vector<double> xp(static_cast<std::size_t>(d), 0.0);
    for (Index i = 0; i < d; ++i)
      for (Index c = 0; c < d; ++c) xp[std::size_t(i)] += x(t, c) * wh(i, c);
    for (Index j = 0; j < h; ++j) {
      const double* sub = xp.data() + j * dh;
      const Index row = t * h + j;
      std::vector<double> p(static_cast<std::size_t>(E));
      double top = -std::numeric_limits<double>::infinity();
      for (Index e = 0; e < E; ++e) {
        double z = 0;
        for (Index c = 0; c < dh; ++c) z += sub[c] * wg(e, c);
        r.logits(row, e) = z;
        top = std::max(top, z);
      }
      double sum = 0;
      for (Index e = 0; e < E; ++e) sum += (p[std::size_t(e)] = std::exp(r.logits(row, e) - top));
      for (double& v : p) v /= sum;
      std::vector<Index> order(static_cast<std::size_t>(E));
      for (Index e = 0; e < E; ++e) order[std::size_t(e)] = e;
      std::stable_sort(order.begin(), order.end(), [&](Index a, Index b) { return p[std::size_t(a)] > p[std::size_t(b)]; });
      double kept = 0;
      for (Index i = 0; i < k; ++i) kept += p[std::size_t(order[std::size_t(i)])];
      for (Index i = 0; i < k; ++i) {
        const Index e = order[std::size_t(i)];
        const double g = renormalize ? p[std::size_t(e)] / kept : p[std::size_t(e)];
        r.gates(row, e) = g;
        const auto w1 = experts.gate_proj(e), w3 = experts.up_proj(e), w2 = experts.down_proj(e);
        std::vector<double> hidden(static_cast<std::size_t>(ff));
        for (Index f = 0; f < ff; ++f) {
          double a = 0, b = 0;
          for (Index c = 0; c < dh; ++c) {
            a += w1(f, c) * sub[c];
            b += w3(f, c) * sub[c];
          }
          hidden[std::size_t(f)] = a / (1.0 + std::exp(-a)) * b;
        }
        for (Index c = 0; c < dh; ++c) {
          double o = 0;
          for (Index f = 0; f < ff; ++f) o += w2(c, f) * hidden[std::size_t(f)];
          merged(t, j * dh + c) += g * o;
        }
      }
    }
    for (Index i = 0; i < d; ++i)
      for (Index c = 0; c < d; ++c) r.y(t, i) += merged(t, c) * wm(i, c);
  }
  return r;
}

/// Every gradient of g in for_each_parameter order.
template <class S, class Grads>
std::vector<RowMatrix<S>> mh_all_grads(const Grads& g) {
  std::vector<RowMatrix<S>> out;
  g.for_each_parameter([&](const std::string&, const auto& b) { out.emplace_back(b); });
  return out;
}

}  // namespace mh_layer_test

using mh_layer_test::Shape;
using moe::Index;
using moe::RowMatrix;

TEST_CASE("MultiHeadLayer forward equals the rule written as loops", "[layer][multi_head]") {
  for (const Shape s : {Shape{2, 3, 3, 5, 1, 7}, Shape{4, 8, 2, 6, 2, 5}, Shape{3, 4, 4, 3, 3, 6},
                        Shape{1, 4, 6, 4, 2, 5}, Shape{5, 6, 1, 2, 4, 3}})
    for (const bool renorm : {true, false}) {
      INFO("h " << s.h << ", E " << s.E << ", d/h " << s.dh << ", ff " << s.ff << ", k " << s.k << ", renormalise "
                << renorm);
      const auto layer = mh_layer_test::mh_make(s, 40, renorm);
      REQUIRE(layer.input_dim() == s.h * s.dh);
      REQUIRE(layer.output_dim() == s.h * s.dh);
      REQUIRE(layer.head_dim() == s.dh);
      REQUIRE(layer.num_heads() == s.h);
      REQUIRE(layer.num_experts() == s.E);
      const RowMatrix<double> x = moe::test::random_matrix(s.T, s.h * s.dh, 41);
      moe::MultiHeadWorkspace<double> ws;
      const RowMatrix<double> y = layer.forward(x, ws);
      const auto want = mh_layer_test::mh_reference(layer, x, renorm);
      CHECK(moe::test::relative_gap(y, want.y) < 1e-13);
      CHECK(moe::test::relative_gap(ws.inner.routing.logits, want.logits) < 1e-13);
      CHECK(moe::test::relative_gap(ws.inner.routing.dense_gates(), want.gates) < 1e-13);
      // k experts per sub-token, T*h sub-tokens, token-major.
      CHECK(ws.inner.routing.num_tokens == s.T * s.h);
      CHECK(ws.inner.routing.size() == s.T * s.h * s.k);
      Index load = 0;
      for (const Index n : ws.inner.stats.expert_load) load += n;
      CHECK(load == s.T * s.h * s.k);
    }
}

TEST_CASE("MultiHeadLayer backward matches finite differences in every gradient", "[layer][multi_head][gradients]") {
  struct Case {
    Shape s;
    moe::LossWeights<double> weights;
  };
  for (const Case& c : {Case{Shape{2, 3, 3, 4, 1, 5}, {}}, Case{Shape{3, 4, 2, 3, 2, 4}, {}},
                       Case{Shape{1, 3, 4, 5, 2, 4}, {}}, Case{Shape{4, 5, 2, 3, 3, 3}, {}},
                       Case{Shape{2, 4, 3, 4, 2, 5}, moe::LossWeights<double>{.aux = 0.3, .z = 0.05}}}) {
    const Shape s = c.s;
    INFO("h " << s.h << ", E " << s.E << ", d/h " << s.dh << ", ff " << s.ff << ", k " << s.k << ", aux "
              << c.weights.aux << ", z " << c.weights.z);
    auto layer = mh_layer_test::mh_make(s, 50);
    const Index d = layer.input_dim();
    RowMatrix<double> x = moe::test::random_matrix(s.T, d, 51);
    const RowMatrix<double> G = moe::test::random_matrix(s.T, d, 52);
    moe::ForwardContext ctx;
    ctx.mode = moe::Mode::training;
    moe::MultiHeadWorkspace<double> ws;
    (void)layer.forward(x, ws, ctx);
    const std::vector<Index> experts0 = ws.inner.routing.expert;
    auto grads = layer.make_gradients();
    const RowMatrix<double> dx = layer.backward(G, ws, grads, c.weights);

    moe::MultiHeadWorkspace<double> ws2;
    RowMatrix<double> y(s.T, d);
    const auto loss = [&] {
      layer.forward(x, y, ws2, ctx);
      REQUIRE(ws2.inner.routing.expert == experts0);  // no routing decision flips under the step
      double l = (y.array() * G.array()).sum();
      if (c.weights.aux != 0) l += c.weights.aux * moe::LoadBalancingLoss{}(ws2.inner.routing);
      if (c.weights.z != 0) l += c.weights.z * moe::RouterZLoss{}(ws2.inner.routing);
      return l;
    };
    CHECK(moe::test::relative_gap(dx, moe::test::numeric_gradient(x, loss)) < 1e-6);
    moe::test::check_parameter_gradients(layer, grads, loss, 1e-6);
  }
}

TEST_CASE("MultiHeadLayer with one head is the inner layer between the two products", "[layer][multi_head]") {
  const Shape s{1, 4, 6, 5, 2, 9};
  const auto layer = mh_layer_test::mh_make(s, 60);
  const RowMatrix<double> x = moe::test::random_matrix(s.T, 6, 61), G = moe::test::random_matrix(s.T, 6, 62);
  moe::ForwardContext ctx;
  ctx.mode = moe::Mode::training;
  moe::MultiHeadWorkspace<double> ws;
  const RowMatrix<double> y = layer.forward(x, ws, ctx);
  auto grads = layer.make_gradients();
  const RowMatrix<double> dx = layer.backward(G, ws, grads);

  // By hand: x' = x Wh^T, z = inner(x'), y = z Wm^T; backward dz = G Wm, dx' = inner backward,
  // dx = dx' Wh, dWh = dx'^T x, dWm = G^T z.
  const RowMatrix<double> xp = x * layer.head_proj().transpose();
  moe::Workspace<double> inner_ws;
  const RowMatrix<double> z = layer.inner().forward(xp, inner_ws, ctx);
  CHECK(moe::test::relative_gap(y, z * layer.merge_proj().transpose()) < 1e-13);
  auto inner_grads = layer.inner().make_gradients();
  const RowMatrix<double> dxp = layer.inner().backward(G * layer.merge_proj(), inner_ws, inner_grads);
  CHECK(moe::test::relative_gap(dx, dxp * layer.head_proj()) < 1e-13);
  CHECK(moe::test::relative_gap(grads.head_proj, dxp.transpose() * x) < 1e-13);
  CHECK(moe::test::relative_gap(grads.merge_proj, G.transpose() * z) < 1e-13);
  const auto inner_list = mh_layer_test::mh_all_grads<double>(inner_grads);
  const auto list = mh_layer_test::mh_all_grads<double>(grads.inner);
  REQUIRE(list.size() == inner_list.size());
  for (std::size_t i = 0; i < list.size(); ++i) CHECK(moe::test::relative_gap(list[i], inner_list[i]) < 1e-12);
  CHECK(ws.inner.routing.expert == inner_ws.routing.expert);
}

TEST_CASE("MultiHeadLayer routes the sub-tokens as the [T*h, d/h] matrix", "[layer][multi_head]") {
  const Shape s{4, 6, 3, 5, 2, 7};
  const Index d = s.h * s.dh;
  auto layer = mh_layer_test::mh_make(s, 70);
  const RowMatrix<double> x = moe::test::random_matrix(s.T, d, 71);
  // Sub-token (t, j) = x'_t[j dh, (j+1) dh), row t*h + j, copied element by element.
  const auto split = [&](const RowMatrix<double>& xp) {
    RowMatrix<double> sub(s.T * s.h, s.dh);
    for (Index t = 0; t < s.T; ++t)
      for (Index j = 0; j < s.h; ++j)
        for (Index c = 0; c < s.dh; ++c) sub(t * s.h + j, c) = xp(t, j * s.dh + c);
    return sub;
  };
  SECTION("identity projections: the same bits as the inner layer on the split matrix") {
    layer.head_proj().setIdentity();
    layer.merge_proj().setIdentity();
    moe::MultiHeadWorkspace<double> ws;
    const RowMatrix<double> y = layer.forward(x, ws);
    moe::Workspace<double> inner_ws;
    const RowMatrix<double> z = layer.inner().forward(split(x), inner_ws);
    CHECK(ws.inner.routing.token == inner_ws.routing.token);
    CHECK(ws.inner.routing.expert == inner_ws.routing.expert);
    CHECK(ws.inner.routing.gate == inner_ws.routing.gate);
    CHECK(ws.inner.routing.logits == inner_ws.routing.logits);
    CHECK(split(y) == z);  // merged_t is z_(t, 0..h-1) side by side
  }
  SECTION("random projections: the same experts, the gates to rounding") {
    moe::MultiHeadWorkspace<double> ws;
    (void)layer.forward(x, ws);
    moe::Workspace<double> inner_ws;
    (void)layer.inner().forward(split(x * layer.head_proj().transpose()), inner_ws);
    CHECK(ws.inner.routing.expert == inner_ws.routing.expert);
    CHECK(moe::test::relative_gap(ws.inner.routing.dense_gates(), inner_ws.routing.dense_gates()) < 1e-14);
  }
}

TEST_CASE("MultiHeadLayer gives each sub-token its token's ids and scales the sequence length",
          "[layer][multi_head]") {
  const Index h = 3, dh = 2, E = 5, T = 6;
  const std::vector<Index> table{4, 0, 3, 1, 2, 2, 0};
  const moe::MultiHeadLayer<moe::HashMoE<double>> layer(
      moe::HashMoE<double>(moe::test::swiglu<double>(E, dh, 4, 80), moe::HashRouter<double>(table, E, dh)), h);
  const RowMatrix<double> x = moe::test::random_matrix(T, h * dh, 81);
  const std::vector<std::int64_t> ids{6, 0, 2, 2, 5, 1};
  moe::ForwardContext ctx;
  ctx.token_ids = ids;
  ctx.sequence_length = 3;
  moe::MultiHeadWorkspace<double> ws;
  (void)layer.forward(x, ws, ctx);
  REQUIRE(ws.inner.routing.size() == T * h);
  for (Index t = 0; t < T; ++t)
    for (Index j = 0; j < h; ++j) {
      const auto i = static_cast<std::size_t>(t * h + j);
      CHECK(ws.inner.routing.token[i] == t * h + j);
      CHECK(ws.inner.routing.expert[i] == table[static_cast<std::size_t>(ids[static_cast<std::size_t>(t)])]);
    }
  CHECK(ws.inner.last_context.sequence_length == 9);
  CHECK(ws.inner.last_context.token_ids.size() == std::size_t(T * h));
  CHECK(ws.inner.last_context.modality_ids.empty());
  // The hash router needs ids: the count is checked in the caller's terms, one per token.
  moe::test::require_invalid([&] { (void)layer.forward(x, ws); },
                             {"MultiHeadLayer::forward(): token_ids length (one per row of x) expected 6, got 0"});
}

TEST_CASE("MultiHeadLayer forward and backward are bit-identical for any thread count",
          "[layer][multi_head][threads]") {
  const Shape s{4, 6, 4, 8, 2, 600};  // 600 tokens: three row blocks of the projections
  const auto layer = mh_layer_test::mh_make<float>(s, 90);
  const Index d = s.h * s.dh;
  RowMatrix<float> x(s.T, d), dy(s.T, d);
  moe::test::fill(x, 91);
  moe::test::fill(dy, 92);
  struct Run {
    RowMatrix<float> y, dx;
    std::vector<RowMatrix<float>> grads;
  };
  const auto run = [&](moe::ThreadPool* pool) {
    moe::MultiHeadWorkspace<float> ws;
    moe::ForwardContext ctx;
    ctx.mode = moe::Mode::training;
    ctx.pool = pool;
    Run r;
    r.y = layer.forward(x, ws, ctx);
    auto grads = layer.make_gradients();
    r.dx = layer.backward(dy, ws, grads, moe::LossWeights<float>{.aux = 0.01f, .z = 0.001f});
    r.grads = mh_layer_test::mh_all_grads<float>(grads);
    return r;
  };
  const Run serial = run(nullptr);
  for (const Index threads : {1, 2, 3, 4}) {
    INFO("threads " << threads);
    moe::ThreadPool pool(threads);
    const Run r = run(&pool);
    CHECK(r.y == serial.y);
    CHECK(r.dx == serial.dx);
    REQUIRE(r.grads.size() == serial.grads.size());
    for (std::size_t i = 0; i < r.grads.size(); ++i) CHECK(r.grads[i] == serial.grads[i]);
  }
}

TEST_CASE("MultiHeadLayer names its parameters and gradients, accumulates, and reuses its buffers",
          "[layer][multi_head]") {
  const Shape s{2, 3, 2, 3, 2, 5};
  auto layer = mh_layer_test::mh_make(s, 100);
  std::vector<std::string> names;
  layer.for_each_parameter([&](const std::string& n, const auto&) { names.push_back(n); });
  CHECK(names == std::vector<std::string>{"head_proj.weight", "gate.weight", "experts.0.gate_proj.weight",
                                          "experts.0.up_proj.weight", "experts.0.down_proj.weight",
                                          "experts.1.gate_proj.weight", "experts.1.up_proj.weight",
                                          "experts.1.down_proj.weight", "experts.2.gate_proj.weight",
                                          "experts.2.up_proj.weight", "experts.2.down_proj.weight",
                                          "merge_proj.weight"});
  auto grads = layer.make_gradients();
  std::vector<std::string> grad_names;
  grads.for_each_parameter([&](const std::string& n, const auto& g) {
    grad_names.push_back(n);
    CHECK(g.isZero(0));
  });
  CHECK(grad_names == names);

  const RowMatrix<double> x = moe::test::random_matrix(s.T, 4, 101), G = moe::test::random_matrix(s.T, 4, 102);
  moe::ForwardContext ctx;
  ctx.mode = moe::Mode::training;
  moe::MultiHeadWorkspace<double> ws;
  (void)layer.forward(x, ws, ctx);
  const double* buffers[] = {ws.x_proj.data(), ws.merged.data(), ws.x_saved.data()};
  const RowMatrix<double> dx1 = layer.backward(G, ws, grads);
  const RowMatrix<double> once = *grads.find("merge_proj.weight");
  const RowMatrix<double> head_once = *grads.find("head_proj.weight");
  // A second forward of the same shape keeps the buffers; backward adds into grads, overwrites dx.
  (void)layer.forward(x, ws, ctx);
  CHECK(ws.x_proj.data() == buffers[0]);
  CHECK(ws.merged.data() == buffers[1]);
  CHECK(ws.x_saved.data() == buffers[2]);
  RowMatrix<double> dx2 = RowMatrix<double>::Constant(s.T, 4, 7.0);
  layer.backward(G, dx2, ws, grads);
  CHECK(dx2 == dx1);
  CHECK(*grads.find("merge_proj.weight") == 2 * once);
  CHECK(*grads.find("head_proj.weight") == 2 * head_once);
  CHECK(grads.find("experts.1.up_proj.weight")->rows() == 3);
  CHECK_FALSE(grads.find("moe.merge_proj.weight").has_value());
  grads.set_zero();
  for (const auto& g : mh_layer_test::mh_all_grads<double>(grads)) CHECK(g.isZero(0));

  // An empty batch runs.
  moe::MultiHeadWorkspace<double> empty_ws;
  const RowMatrix<double> none(0, 4);
  CHECK(layer.forward(none, empty_ws, ctx).rows() == 0);
  CHECK(layer.backward(none, empty_ws, grads).rows() == 0);
}

TEST_CASE("MultiHeadLayer names what it refuses", "[layer][multi_head][errors]") {
  using moe::test::require_invalid;
  const auto inner = [] {
    return moe::MixtralMoE<double>(moe::test::swiglu<double>(3, 2, 3, 110), moe::SoftmaxTopKRouter<double>(3, 2, 2));
  };
  require_invalid([&] { moe::MultiHeadMoE<double>(inner(), 0); },
                  {"MultiHeadLayer::MultiHeadLayer(): num_heads expected >= 1, got 0"});
  require_invalid([&] { moe::MultiHeadMoE<double>(inner(), 3, RowMatrix<double>::Zero(6, 5), RowMatrix<double>::Zero(6, 6)); },
                  {"MultiHeadLayer::MultiHeadLayer(): head_proj (num_heads * inner input_dim square) expected shape "
                   "[6, 6], got [6, 5]"});
  require_invalid([&] { moe::MultiHeadMoE<double>(inner(), 3, RowMatrix<double>::Zero(6, 6), RowMatrix<double>::Zero(4, 4)); },
                  {"merge_proj (num_heads * inner input_dim square) expected shape [6, 6], got [4, 4]"});
  using LowRankInner = moe::MoELayer<moe::LowRankExperts<double>, moe::SoftmaxTopKRouter<double>,
                                     moe::WeightedSumCombiner<double>>;
  require_invalid([] { moe::MultiHeadLayer<LowRankInner>(LowRankInner(moe::LowRankExperts<double>(3, 4, 2, 1.0, 5),
                                                                      moe::SoftmaxTopKRouter<double>(3, 4, 1)), 2); },
                  {"inner layer output_dim (= its input_dim, the head dimension d/h) expected 4, got 5"});

  auto layer = moe::MultiHeadMoE<double>(inner(), 3);
  moe::MultiHeadWorkspace<double> ws;
  const RowMatrix<double> x = moe::test::random_matrix(4, 6, 111);
  require_invalid([&] { (void)layer.forward(RowMatrix<double>::Zero(4, 5), ws); },
                  {"MultiHeadLayer::forward(): x columns (input_dim) expected 6, got 5"});
  RowMatrix<double> y(3, 6);
  require_invalid([&] { layer.forward(x, y, ws); }, {"MultiHeadLayer::forward(): y expected shape [4, 6], got [3, 6]"});
  const std::vector<std::int64_t> three{0, 1, 2};
  for (const char* which : {"token_ids", "modality_ids", "domain_ids", "task_ids"}) {
    INFO(which);
    moe::ForwardContext ctx;
    const std::string w = which;
    (w == "token_ids" ? ctx.token_ids : w == "modality_ids" ? ctx.modality_ids : w == "domain_ids" ? ctx.domain_ids
                                                                                                   : ctx.task_ids) = three;
    require_invalid([&] { (void)layer.forward(x, ws, ctx); },
                    {"MultiHeadLayer::forward(): " + w + " length (one per row of x) expected 4, got 3"});
  }
  RowMatrix<double> bad = x;
  bad(2, 5) = std::numeric_limits<double>::quiet_NaN();
  require_invalid([&] { (void)layer.forward(bad, ws); },
                  {"MultiHeadLayer::forward(): x expected finite values (ForwardContext::non_finite = error), got NaN "
                   "at row 2, column 5"});

  auto grads = layer.make_gradients();
  moe::MultiHeadWorkspace<double> fresh;
  require_invalid([&] { (void)layer.backward(x, fresh, grads); },
                  {"MultiHeadLayer::backward(): the workspace expected one on which forward ran in Mode::training"});
  (void)layer.forward(x, fresh);
  require_invalid([&] { (void)layer.backward(x, fresh, grads); },
                  {"MultiHeadLayer::backward(): the workspace's last forward expected one in Mode::training, got one "
                   "in Mode::inference"});
  moe::ForwardContext train;
  train.mode = moe::Mode::training;
  (void)layer.forward(x, fresh, train);
  require_invalid([&] { (void)layer.backward(RowMatrix<double>::Zero(4, 5), fresh, grads); },
                  {"MultiHeadLayer::backward(): dy expected shape [4, 6], got [4, 5]"});
  RowMatrix<double> dx(5, 6);
  require_invalid([&] { layer.backward(x, dx, fresh, grads); },
                  {"MultiHeadLayer::backward(): dx expected shape [4, 6], got [5, 6]"});
  grads.merge_proj.resize(2, 2);
  require_invalid([&] { (void)layer.backward(x, fresh, grads); },
                  {"MultiHeadLayer::backward(): grads.merge_proj expected shape [6, 6], got [2, 2]"});

  layer.head_proj().resize(6, 4);  // through the mutable accessor
  require_invalid([&] { (void)layer.forward(x, ws); },
                  {"MultiHeadLayer::forward(): head_proj (num_heads * inner input_dim square) expected shape [6, 6], "
                   "got [6, 4]"});
  require_invalid([&] { layer.check_shapes(); }, {"MultiHeadLayer::check_shapes(): head_proj"});
}
