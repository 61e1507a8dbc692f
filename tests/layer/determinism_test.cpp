// Bit-identical results across repeated calls and fresh or reused workspaces (forward and
// backward) and across threads sharing one const layer, compared with ==; across batch splits
// for per-token routers, identical routing, and rows bit for bit with
// ForwardContext::gemm = GemmKernel::batch_invariant, to a few ulp with the default fast
// kernel (Eigen's GEMM kernels depend on a row's position, see check_split).
// docs/reliability.md#determinism.
#include <moe/moe.hpp>

#include <catch2/catch.hpp>

#include <map>
#include <type_traits>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "support/random.hpp"

namespace {

using moe::Index;
using moe::RowMatrix;

using moe::test::fill;
using moe::test::swiglu;


template <class S>
moe::MixtralMoE<S> mixtral(Index E, Index d, Index ff, Index k) {
  moe::SoftmaxTopKRouter<S> router(E, d, k);
  fill(router.weight(), 3);
  return {swiglu<S>(E, d, ff, 1), std::move(router)};
}

template <class S>
moe::Qwen2MoE<S> qwen2(Index E, Index d, Index ff, Index k) {
  moe::SoftmaxTopKRouter<S> router(E, d, k);
  fill(router.weight(), 4);
  moe::SharedExpertCombiner<moe::SwiGLUExperts<S>, moe::SharedGate::sigmoid> combiner(swiglu<S>(1, d, 7, 9));
  fill(combiner.gate_weight(), 5);
  return {swiglu<S>(E, d, ff, 2), std::move(router), std::move(combiner)};
}

template <class S>
moe::DeepSeekV3MoE<S> deepseek(Index E, Index d, Index ff) {
  moe::SigmoidGroupLimited<S> gating;
  gating.n_group = 2;
  gating.topk_group = 1;
  gating.routed_scaling_factor = S(2.5);
  gating.correction_bias = moe::Vector<S>::Zero(E);
  fill(gating.correction_bias, 6, 0.1);
  RowMatrix<S> w(E, d);
  fill(w, 7);
  moe::SharedExpertCombiner<moe::SwiGLUExperts<S>, moe::SharedGate::none> combiner(swiglu<S>(1, d, 5, 10));
  return {swiglu<S>(E, d, ff, 3), moe::GroupLimitedRouter<S>(std::move(w), 2, std::move(gating)), std::move(combiner)};
}

template <class S>
moe::GptOssMoE<S> gpt_oss(Index E, Index d, Index ff) {
  moe::GptOssExperts<S> experts(E, d, ff);
  fill(experts.gate_up(), 11, 0.3);
  fill(experts.down(), 12, 0.3);
  fill(experts.gate_up_bias(), 13, 0.1);
  fill(experts.down_bias(), 14, 0.1);
  RowMatrix<S> w(E, d);
  fill(w, 15);
  moe::Vector<S> b(E);
  fill(b, 16, 0.1);
  return {std::move(experts), moe::TopKSoftmaxRouter<S>(std::move(w), 2, {}, std::move(b))};
}

/// Every gradient tensor, flattened, by name.
template <class Grads>
std::map<std::string, std::vector<double>> flatten(const Grads& g) {
  std::map<std::string, std::vector<double>> out;
  g.for_each_parameter([&](const std::string& name, const auto& block) {
    auto& v = out[name];
    for (Index r = 0; r < block.rows(); ++r)
      for (Index c = 0; c < block.cols(); ++c) v.push_back(static_cast<double>(block(r, c)));
  });
  return out;
}

/// One training forward and backward; returns y, dx and the gradients.
template <class Layer>
struct Pass {
  RowMatrix<typename Layer::scalar_type> y, dx;
  std::map<std::string, std::vector<double>> grads;
  bool operator==(const Pass&) const = default;
};

template <class Layer>
Pass<Layer> train_pass(const Layer& layer, const RowMatrix<typename Layer::scalar_type>& x,
                       const RowMatrix<typename Layer::scalar_type>& dy, typename Layer::workspace_type& ws) {
  using S = typename Layer::scalar_type;
  moe::ForwardContext ctx;
  ctx.mode = moe::Mode::training;
  Pass<Layer> p;
  p.y = layer.forward(x, ws, ctx);
  p.dx = RowMatrix<S>::Zero(x.rows(), x.cols());
  auto grads = layer.make_gradients();
  moe::LossWeights<S> weights;
  layer.backward(dy, p.dx, ws, grads, weights);
  p.grads = flatten(grads);
  return p;
}

template <class Layer>
void check_repeatable(const Layer& layer, Index T) {
  using S = typename Layer::scalar_type;
  RowMatrix<S> x(T, layer.input_dim()), dy(T, layer.output_dim()), other(T + 5, layer.input_dim());
  fill(x, 21);
  fill(dy, 22);
  fill(other, 23);
  typename Layer::workspace_type ws;
  const Pass<Layer> first = train_pass(layer, x, dy, ws);
  REQUIRE(first.y.allFinite());
  REQUIRE(!first.grads.empty());
  // Same workspace again; a fresh one; one last used at another shape and in inference.
  REQUIRE(train_pass(layer, x, dy, ws) == first);
  typename Layer::workspace_type fresh;
  REQUIRE(train_pass(layer, x, dy, fresh) == first);
  (void)layer.forward(other, ws);
  REQUIRE(train_pass(layer, x, dy, ws) == first);
}

template <class S>
bool close(const RowMatrix<S>& a, const RowMatrix<S>& b) {
  const double tol = std::is_same_v<S, float> ? 1e-5 : 1e-13;
  return a.rows() == b.rows() && ((a - b).cwiseAbs().maxCoeff() <= tol * (1.0 + b.cwiseAbs().maxCoeff()));
}

/// The expert choices of the last forward, token-major (k per token).
template <class S>
std::vector<Index> choices(const moe::Workspace<S>& ws) {
  return ws.routing.expert;
}

/// Routes x whole and in two parts at `split`. Each token must choose the same experts, and
/// its output row must agree to a few ulp. Not bit for bit: Eigen picks its GEMM micro-kernel
/// by a row's position in the product (full packets of rows, then narrower kernels that sum
/// in another order; one-row products go to GEMV), and a split moves rows within the expert
/// slabs (docs/reliability.md#determinism). Returns how many of the two parts happened to
/// match bit for bit.
template <class Layer>
int check_split(const Layer& layer, const RowMatrix<typename Layer::scalar_type>& x, Index split,
                const moe::ForwardContext& whole_ctx = {}, const moe::ForwardContext& head_ctx = {},
                const moe::ForwardContext& tail_ctx = {}) {
  using S = typename Layer::scalar_type;
  INFO("T " << x.rows() << " split at " << split);
  typename Layer::workspace_type ws;
  const RowMatrix<S> whole = layer.forward(x, ws, whole_ctx);
  const std::vector<Index> whole_choice = choices(ws);
  const auto per_token = whole_choice.size() / static_cast<std::size_t>(x.rows());
  const auto cut = whole_choice.begin() + static_cast<std::ptrdiff_t>(per_token * static_cast<std::size_t>(split));
  const RowMatrix<S> head = layer.forward(x.topRows(split), ws, head_ctx);
  REQUIRE(choices(ws) == std::vector<Index>(whole_choice.begin(), cut));
  const RowMatrix<S> tail = layer.forward(x.bottomRows(x.rows() - split), ws, tail_ctx);
  REQUIRE(choices(ws) == std::vector<Index>(cut, whole_choice.end()));
  const RowMatrix<S> whole_head = whole.topRows(split), whole_tail = whole.bottomRows(x.rows() - split);
  REQUIRE(close(head, whole_head));
  REQUIRE(close(tail, whole_tail));
  return int(head == whole_head) + int(tail == whole_tail);
}

}  // namespace

TEMPLATE_TEST_CASE("forward and backward are bit-identical across calls and workspaces", "[layer][determinism]", float,
                   double) {
  check_repeatable(mixtral<TestType>(8, 12, 10, 2), 37);
  check_repeatable(qwen2<TestType>(6, 9, 5, 3), 29);
  check_repeatable(deepseek<TestType>(4, 7, 6), 23);
  check_repeatable(gpt_oss<TestType>(4, 5, 6), 19);
}

TEMPLATE_TEST_CASE("per-token routers route a split batch alike and give its rows to a few ulp", "[layer][determinism]", float, double) {
  // Token-choice routing and expert FFNs act row by row, and the plan keeps token order inside
  // each expert, so a row's result may not depend on its neighbours. No capacity here: with a
  // capacity the batch decides who is dropped, and splitting changes that by design.
  RowMatrix<TestType> x(64, 12);
  fill(x, 31);
  for (const Index split : {Index{1}, Index{17}, Index{32}, Index{63}}) {
    (void)check_split(mixtral<TestType>(8, 12, 10, 2), x, split);
    (void)check_split(qwen2<TestType>(6, 12, 5, 3), x, split);
    (void)check_split(deepseek<TestType>(4, 12, 6), x, split);
    (void)check_split(gpt_oss<TestType>(4, 12, 6), x, split);
  }
}

TEMPLATE_TEST_CASE("with the batch-invariant kernel, a split batch gives every row bit for bit", "[layer][determinism]",
                   float, double) {
  // T = 200 puts more than kernels::rowwise_max_rows rows on every expert, where the fast
  // kernel would run Eigen's GEMM; the splits cut inside 4-row blocks and 64-row panels.
  RowMatrix<TestType> x(200, 12);
  fill(x, 37);
  moe::ForwardContext ctx;
  ctx.gemm = moe::GemmKernel::batch_invariant;
  for (const Index split : {Index{1}, Index{17}, Index{100}, Index{131}, Index{199}}) {
    CHECK(check_split(mixtral<TestType>(8, 12, 10, 2), x, split, ctx, ctx, ctx) == 2);
    CHECK(check_split(qwen2<TestType>(6, 12, 5, 3), x, split, ctx, ctx, ctx) == 2);
    CHECK(check_split(deepseek<TestType>(4, 12, 6), x, split, ctx, ctx, ctx) == 2);
    CHECK(check_split(gpt_oss<TestType>(4, 12, 6), x, split, ctx, ctx, ctx) == 2);
  }
  // Every row alone (a batch of one, at position 0) against the whole batch.
  const auto layer = mixtral<TestType>(8, 12, 10, 2);
  typename moe::MixtralMoE<TestType>::workspace_type ws;
  const RowMatrix<TestType> whole = layer.forward(x, ws, ctx);
  for (Index t = 0; t < x.rows(); t += 7) {
    const RowMatrix<TestType> one = layer.forward(x.middleRows(t, 1), ws, ctx);
    INFO("row " << t);
    CHECK(one == whole.middleRows(t, 1));
  }
}

TEST_CASE("hash routing routes a split batch alike when the token ids are split with it", "[layer][determinism]") {
  const Index T = 40, d = 6, E = 4;
  moe::HashMoE<double> layer(swiglu<double>(E, d, 5, 41), moe::HashRouter<double>::balanced(50, E, d, 3));
  RowMatrix<double> x(T, d);
  fill(x, 42);
  std::vector<std::int64_t> ids(static_cast<std::size_t>(T));
  for (Index t = 0; t < T; ++t) ids[static_cast<std::size_t>(t)] = (t * 13) % 50;
  const Index split = 16;
  moe::ForwardContext whole, head, tail;
  whole.token_ids = ids;
  head.token_ids = std::span<const std::int64_t>(ids).first(static_cast<std::size_t>(split));
  tail.token_ids = std::span<const std::int64_t>(ids).subspan(static_cast<std::size_t>(split));
  (void)check_split(layer, x, split, whole, head, tail);
}

TEST_CASE("noisy top-k: splits route alike in inference, in training the noise follows the row index",
          "[layer][determinism]") {
  const Index T = 30, d = 6, E = 5, split = 12;
  RowMatrix<double> wg(E, d), wn(E, d);
  fill(wg, 51);
  fill(wn, 52, 2.0);  // large noise: a different sample changes the routing
  moe::NoisyTopKMoE<double> layer(swiglu<double>(E, d, 4, 53), moe::NoisyTopKRouter<double>(wg, wn, 2));
  RowMatrix<double> x(T, d);
  fill(x, 54);
  (void)check_split(layer, x, split);  // inference: no noise, plain per-token routing

  // Training: eps(t, e) = CounterRng(seed, step).normal(t, e) with t the row index *in this
  // call*. The first part's rows keep their indices and match; the second part's restart at 0,
  // so they draw row 0's noise, not row `split`'s, and differ.
  moe::ForwardContext train;
  train.mode = moe::Mode::training;
  train.seed = 77;
  train.step = 3;
  moe::Workspace<double> ws;
  const RowMatrix<double> whole = layer.forward(x, ws, train);
  const std::vector<Index> whole_choice = ws.routing.expert;
  const auto cut = whole_choice.begin() + 2 * split;
  const RowMatrix<double> head = layer.forward(x.topRows(split), ws, train);
  REQUIRE(ws.routing.expert == std::vector<Index>(whole_choice.begin(), cut));
  REQUIRE(close(head, RowMatrix<double>(whole.topRows(split))));
  (void)layer.forward(x.bottomRows(T - split), ws, train);
  REQUIRE(ws.routing.expert != std::vector<Index>(cut, whole_choice.end()));
  // Replaying the whole batch's sample for the second part restores its routing.
  const moe::CounterRng rng(train.seed, train.step);
  RowMatrix<double> eps(T, E);
  for (Index t = 0; t < T; ++t)
    for (Index e = 0; e < E; ++e) eps(t, e) = rng.normal(static_cast<std::uint64_t>(t), static_cast<std::uint64_t>(e));
  layer.router().set_noise(eps.bottomRows(T - split));
  const RowMatrix<double> tail = layer.forward(x.bottomRows(T - split), ws, train);
  REQUIRE(ws.routing.expert == std::vector<Index>(cut, whole_choice.end()));
  REQUIRE(close(tail, RowMatrix<double>(whole.bottomRows(T - split))));
  layer.router().clear_noise();
}

TEMPLATE_TEST_CASE("one const layer used from several threads gives the serial results", "[layer][determinism][threads]",
                   float, double) {
  const auto layer = qwen2<TestType>(8, 16, 12, 2);
  constexpr int threads = 4, batches = 6;
  std::vector<RowMatrix<TestType>> xs;
  std::vector<RowMatrix<TestType>> serial;
  {
    moe::Workspace<TestType> ws;
    for (int b = 0; b < batches; ++b) {
      xs.emplace_back(5 + 7 * b, 16);
      fill(xs.back(), 60 + static_cast<unsigned>(b));
      serial.push_back(layer.forward(xs.back(), ws));
    }
  }
  // Each thread runs every batch several times, in its own order, on its own workspace.
  std::vector<std::vector<RowMatrix<TestType>>> got(threads, std::vector<RowMatrix<TestType>>(batches));
  std::vector<int> mismatches(threads, 0);
  std::vector<std::thread> pool;
  for (int i = 0; i < threads; ++i)
    pool.emplace_back([&, i] {
      moe::Workspace<TestType> ws;
      for (int round = 0; round < 3; ++round)
        for (int j = 0; j < batches; ++j) {
          const int b = (j * (i + 1) + round) % batches;
          RowMatrix<TestType> y = layer.forward(xs[static_cast<std::size_t>(b)], ws);
          if (y != serial[static_cast<std::size_t>(b)]) ++mismatches[static_cast<std::size_t>(i)];
          got[static_cast<std::size_t>(i)][static_cast<std::size_t>(b)] = std::move(y);
        }
    });
  for (auto& t : pool) t.join();
  for (int i = 0; i < threads; ++i) {
    INFO("thread " << i);
    REQUIRE(mismatches[static_cast<std::size_t>(i)] == 0);
    for (int b = 0; b < batches; ++b) REQUIRE(got[static_cast<std::size_t>(i)][static_cast<std::size_t>(b)] == serial[static_cast<std::size_t>(b)]);
  }
}
