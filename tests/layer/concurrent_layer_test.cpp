// Issue #6 item 5: one const layer used from several std::threads at once, each with its own
// Workspace (and, in the second case, its own ThreadPool), gives the serial results bit for
// bit, forward and backward, for every router family. The property is the architecture's
// promise (docs/architecture.md#threads): the layer holds no per-call state, so concurrent
// callers cannot see each other. The expectation is the serial run of the same calls, made
// before any thread starts. This file is tagged [threads]: the TSan job (scripts/tsan.sh,
// docs/reliability.md) builds and runs exactly the [threads] tests under ThreadSanitizer,
// where any data race between the callers fails the run even if the numbers happen to agree.
#include <moe/moe.hpp>

#include <catch2/catch.hpp>

#include <cstdint>
#include <memory>
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
RowMatrix<S> random_matrix(Index rows, Index cols, unsigned seed, double scale = 1.0) {
  RowMatrix<S> m(rows, cols);
  fill(m, seed, scale);
  return m;
}

/// One call's inputs: x, dy, and the context fields the routers read (token ids for hash
/// routing, a step for noise and jitter).
template <class S>
struct Batch {
  RowMatrix<S> x, dy;
  std::vector<std::int64_t> token_ids;
  std::uint64_t step = 0;
};

/// What one training forward + backward produces.
template <class S>
struct Pass {
  RowMatrix<S> y, dx;
  std::vector<RowMatrix<S>> grads;
  bool operator==(const Pass&) const = default;
};

template <class Layer>
Pass<typename Layer::scalar_type> train_pass(const Layer& layer, const Batch<typename Layer::scalar_type>& b,
                                             typename Layer::workspace_type& ws, moe::ThreadPool* pool,
                                             Index sequence_length) {
  using S = typename Layer::scalar_type;
  moe::ForwardContext ctx;
  ctx.mode = moe::Mode::training;
  ctx.pool = pool;
  ctx.seed = 1234;
  ctx.step = b.step;
  ctx.token_ids = b.token_ids;
  ctx.sequence_length = sequence_length;
  Pass<S> p;
  p.y = layer.forward(b.x, ws, ctx);
  auto grads = layer.make_gradients();
  p.dx = layer.backward(b.dy, ws, grads, moe::LossWeights<S>{.aux = S(0.01), .z = S(0.001)});
  grads.for_each_parameter([&](const std::string&, const auto& g) { p.grads.emplace_back(g); });
  return p;
}

/// Runs every batch serially on one workspace, then from `threads` threads at once on one
/// const layer, each thread with its own workspace (and its own pool of `pool_size` threads
/// when pool_size > 1), in its own order, `rounds` times; every pass must equal the serial one.
/// Threads only count mismatches (Catch2's assertions are not thread-safe); the main thread
/// checks the counts.
template <class Layer>
void check_concurrent(const Layer& layer, Index sequence_length = 0, Index pool_size = 1) {
  using S = typename Layer::scalar_type;
  constexpr int threads = 4, batches = 4, rounds = 2;
  std::vector<Batch<S>> in;
  for (int b = 0; b < batches; ++b) {
    const Index T = sequence_length > 0 ? sequence_length * (1 + b % 2) : 5 + 9 * b;
    Batch<S> batch{random_matrix<S>(T, layer.input_dim(), 70 + static_cast<unsigned>(b)),
                   random_matrix<S>(T, layer.output_dim(), 80 + static_cast<unsigned>(b)), {}, static_cast<std::uint64_t>(b)};
    for (Index t = 0; t < T; ++t) batch.token_ids.push_back((t * 7 + b) % 50);
    in.push_back(std::move(batch));
  }
  std::vector<Pass<S>> serial;
  {
    typename Layer::workspace_type ws;
    for (const auto& b : in) serial.push_back(train_pass(layer, b, ws, nullptr, sequence_length));
  }
  std::vector<int> mismatches(threads, 0), runs(threads, 0), errors(threads, 0);
  std::vector<std::thread> callers;
  for (int i = 0; i < threads; ++i)
    callers.emplace_back([&, i] {
      const auto me = static_cast<std::size_t>(i);
      try {
        typename Layer::workspace_type ws;
        std::unique_ptr<moe::ThreadPool> pool;
        if (pool_size > 1) pool = std::make_unique<moe::ThreadPool>(pool_size);
        for (int round = 0; round < rounds; ++round)
          for (int j = 0; j < batches; ++j) {
            const auto b = static_cast<std::size_t>((j * (i + 1) + round + i) % batches);
            if (!(train_pass(layer, in[b], ws, pool.get(), sequence_length) == serial[b])) ++mismatches[me];
            ++runs[me];
          }
      } catch (...) {
        ++errors[me];
      }
    });
  for (auto& t : callers) t.join();
  for (int i = 0; i < threads; ++i) {
    INFO("thread " << i);
    const auto me = static_cast<std::size_t>(i);
    REQUIRE(errors[me] == 0);
    REQUIRE(runs[me] == rounds * batches);
    REQUIRE(mismatches[me] == 0);
  }
}

template <class S>
moe::MixtralMoE<S> mixtral() {
  return {swiglu<S>(6, 12, 10, 1), moe::SoftmaxTopKRouter<S>(random_matrix<S>(6, 12, 2), 2)};
}

template <class S>
moe::Qwen2MoE<S> qwen2() {
  moe::SharedExpertCombiner<moe::SwiGLUExperts<S>, moe::SharedGate::sigmoid> combiner(swiglu<S>(1, 12, 7, 3));
  fill(combiner.gate_weight(), 4);
  return {swiglu<S>(6, 12, 10, 5), moe::SoftmaxTopKRouter<S>(random_matrix<S>(6, 12, 6), 3, moe::SoftmaxTopK<S>{false}),
          std::move(combiner)};
}

template <class S>
moe::DeepSeekV3MoE<S> deepseek() {
  moe::SigmoidGroupLimited<S> gating;
  gating.n_group = 2;
  gating.topk_group = 1;
  gating.routed_scaling_factor = S(2.5);
  gating.correction_bias = moe::Vector<S>::Zero(8);
  fill(gating.correction_bias, 7, 0.1);
  moe::SharedExpertCombiner<moe::SwiGLUExperts<S>, moe::SharedGate::none> combiner(swiglu<S>(1, 12, 5, 8));
  return {swiglu<S>(8, 12, 10, 9), moe::GroupLimitedRouter<S>(random_matrix<S>(8, 12, 10), 2, std::move(gating)),
          std::move(combiner)};
}

template <class S>
moe::GptOssMoE<S> gpt_oss() {
  moe::GptOssExperts<S> experts(4, 12, 10);
  fill(experts.gate_up(), 11, 0.3);
  fill(experts.down(), 12, 0.3);
  fill(experts.gate_up_bias(), 13, 0.1);
  fill(experts.down_bias(), 14, 0.1);
  moe::Vector<S> bias(4);
  fill(bias, 15, 0.1);
  return {std::move(experts), moe::TopKSoftmaxRouter<S>(random_matrix<S>(4, 12, 16), 2, {}, std::move(bias))};
}

template <class S>
moe::SwitchMoE<S> switch_capacity() {
  moe::FFNExperts<S, moe::Activation::relu> experts(4, 12, 10);
  fill(experts.wi(), 17, 0.3);
  fill(experts.wo(), 18, 0.3);
  // Capacity 3 per expert: the larger batches drop tokens, so the plan's drop path runs too.
  return {std::move(experts), moe::SoftmaxTopKRouter<S>(random_matrix<S>(4, 12, 19), 1), {},
          moe::Capacity::fixed(3, moe::Priority::batch_prioritized)};
}

}  // namespace

TEMPLATE_TEST_CASE("one const layer from several threads, separate workspaces: serial results, forward and backward",
                   "[layer][threads]", float, double) {
  using S = TestType;
  SECTION("Mixtral") { check_concurrent(mixtral<S>()); }
  SECTION("Qwen2-MoE, sigmoid-gated shared expert") { check_concurrent(qwen2<S>()); }
  SECTION("DeepSeek-V3, group-limited, shared expert") { check_concurrent(deepseek<S>()); }
  SECTION("GPT-OSS") { check_concurrent(gpt_oss<S>()); }
  SECTION("Switch, capacity with drops, batch priority") { check_concurrent(switch_capacity<S>()); }
  SECTION("noisy top-k, noise generated from the context") {
    const moe::NoisyTopKMoE<S> layer(swiglu<S>(6, 12, 10, 20),
                                     moe::NoisyTopKRouter<S>(random_matrix<S>(6, 12, 21), random_matrix<S>(6, 12, 22), 2));
    check_concurrent(layer);
  }
  SECTION("expert choice") {
    const moe::ExpertChoiceMoE<S> layer(swiglu<S>(4, 12, 10, 23), moe::ExpertChoiceRouter<S>(random_matrix<S>(4, 12, 24), 1.5));
    check_concurrent(layer);
  }
  SECTION("hash routing, token ids from the context") {
    const moe::HashMoE<S> layer(swiglu<S>(4, 12, 10, 25), moe::HashRouter<S>::balanced(50, 4, 12, 26));
    check_concurrent(layer);
  }
  SECTION("Soft MoE, sequences of 6 tokens") {
    moe::FFNExperts<S, moe::Activation::gelu_erf> experts(3, 12, 10);
    fill(experts.wi(), 27, 0.3);
    fill(experts.wo(), 28, 0.3);
    const moe::SoftMoE<S> layer(std::move(experts), moe::SoftRouter<S>(random_matrix<S>(12, 6, 29, 0.3), 2));
    check_concurrent(layer, 6);
  }
}

TEST_CASE("one const layer from several threads, each with its own ThreadPool: serial results", "[layer][threads]") {
  // 4 callers x a pool of 2: the stages' parallel_for runs inside each caller's pool while
  // the other callers run theirs on the same layer.
  check_concurrent(mixtral<float>(), 0, 2);
  check_concurrent(qwen2<double>(), 0, 3);
}

TEST_CASE("one RoutingTelemetry shared by callers on several threads: every call recorded, outputs unchanged",
          "[layer][threads][telemetry]") {
  // The collector's lock is the only synchronisation between the callers; TSan checks it.
  const auto layer = mixtral<float>();
  constexpr int callers = 4, calls = 5;
  const RowMatrix<float> x = random_matrix<float>(24, layer.input_dim(), 31);
  moe::Workspace<float> serial_ws;
  const RowMatrix<float> expected = layer.forward(x, serial_ws);
  moe::RoutingTelemetry telemetry;
  std::vector<int> identical(callers, 0);
  std::vector<std::thread> threads;
  for (int c = 0; c < callers; ++c)
    threads.emplace_back([&, c] {
      moe::Workspace<float> ws;
      moe::ForwardContext ctx;
      ctx.telemetry = &telemetry;
      ctx.layer_index = c;
      for (int i = 0; i < calls; ++i) identical[static_cast<std::size_t>(c)] += layer.forward(x, ws, ctx) == expected;
    });
  for (auto& t : threads) t.join();
  for (int c = 0; c < callers; ++c) CHECK(identical[static_cast<std::size_t>(c)] == calls);
  REQUIRE(telemetry.records().size() == std::size_t(callers * calls));
  std::vector<int> per_layer(callers, 0);
  for (std::size_t i = 0; i < telemetry.records().size(); ++i) {
    const auto& r = telemetry.records()[i];
    CHECK(r.call == i);  // numbered in arrival order
    CHECK(r.load == serial_ws.stats.expert_load);
    ++per_layer[static_cast<std::size_t>(r.layer)];
  }
  for (int c = 0; c < callers; ++c) CHECK(per_layer[static_cast<std::size_t>(c)] == calls);
}
