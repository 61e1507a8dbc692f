// MpiExpertExecutor under mpirun (1 to 4 ranks): outputs, dx, the owned experts' gradients
// and the statistics bit for bit those of the single-process layer on the concatenation of
// the ranks' batches; replicated gradients bit for bit the ranks' separate gradients added in
// rank order. Every router family, dropless, with per-rank and with global capacity, float and double,
// a rank with no tokens, an expert with no tokens, 1 and 2 threads per rank; failures inside
// the step end on every rank.
#include <moe/parallel/mpi_expert_executor.hpp>

#include <catch2/catch.hpp>
#include <parallel/ep_harness.hpp>
#include <support/random.hpp>

#include <string>

namespace {

using moe::Index;
namespace ep = moe::test::ep;

/// E experts, d = 8: E = 6 splits unevenly over 4 ranks (1, 2, 1, 2).
constexpr Index E = 6, d = 8, ff = 12;

template <class S>
moe::MixtralMoE<S> mixtral(Index k, unsigned seed) {
  return {moe::test::swiglu<S>(E, d, ff, seed),
          moe::SoftmaxTopKRouter<S>(moe::test::random_matrix(E, d, seed + 1).template cast<S>(), k,
                                    moe::SoftmaxTopK<S>{true})};
}

/// Switch: top-1 softmax (not renormalised) over ReLU FFN experts; weights from `seed` on.
template <class S>
moe::SwitchMoE<S> switch_layer(unsigned seed) {
  moe::FFNExperts<S, moe::Activation::relu> bank(E, d, ff);
  unsigned s = seed;
  bank.for_each_parameter([&](const std::string&, auto&& block) { moe::test::fill(block, s++, 0.4); });
  return {std::move(bank), moe::SoftmaxTopKRouter<S>(moe::test::random_matrix(E, d, seed + 7).template cast<S>(), 1,
                                                     moe::SoftmaxTopK<S>{false})};
}

template <class S>
auto swiglu_maker() {
  return [](Index n) { return moe::SwiGLUExperts<S>(n, d, ff); };
}

}  // namespace

TEMPLATE_TEST_CASE("expert parallel Mixtral (softmax top-2) dropless equals one process bit for bit",
                   "[parallel][mpi][bit_identity]", float, double) {
  using S = TestType;
  const int threads = GENERATE(1, 2);
  const bool zero_rank = GENERATE(false, true);
  const bool small = GENERATE(false, true);
  CAPTURE(threads, zero_rank, small, ep::world_size());
  auto full = mixtral<S>(2, 31);
  ep::check_against_single_process(full, swiglu_maker<S>(), ep::token_counts(ep::world_size(), zero_rank, small),
                                   moe::Capacity{}, threads, 40);
}

TEMPLATE_TEST_CASE("expert parallel with an expert that receives no tokens", "[parallel][mpi][bit_identity]", float,
                   double) {
  using S = TestType;
  auto full = mixtral<S>(2, 33);
  // Column 0 of every token is 1 and expert 4's router row weighs it by -40: nobody picks it.
  full.router().weight()(4, 0) = S(-40);
  const int threads = GENERATE(1, 2);
  ep::check_against_single_process(full, swiglu_maker<S>(), ep::token_counts(ep::world_size(), false),
                                   moe::Capacity{}, threads, 41, /*dead_expert_col=*/true);
  // The premise: expert 4 ran no rows in the concatenation.
  moe::Workspace<S> ws;
  moe::RowMatrix<S> x = moe::test::random_matrix(60, d, 5).template cast<S>();
  x.col(0).setConstant(S(1));
  (void)full.forward(x, ws);
  CHECK(ws.stats.expert_load[4] == 0);
}

TEMPLATE_TEST_CASE("expert parallel Mixtral with capacity per rank or global equals one process with those groups",
                   "[parallel][mpi][bit_identity][capacity]", float, double) {
  // Per rank: the single process with the ranks' groups replayed; global: the single process
  // with the capacity over the whole concatenation (ep_harness.hpp).
  using S = TestType;
  const auto scope = GENERATE(moe::parallel::CapacityScope::per_rank, moe::parallel::CapacityScope::global);
  const moe::Priority priority = GENERATE(moe::Priority::position, moe::Priority::batch_prioritized);
  const int threads = GENERATE(1, 2);
  const bool zero_rank = GENERATE(false, true);
  CAPTURE(static_cast<int>(scope), threads, zero_rank, static_cast<int>(priority));
  auto full = mixtral<S>(2, 35);
  ep::check_against_single_process(full, swiglu_maker<S>(), ep::token_counts(ep::world_size(), zero_rank),
                                   moe::Capacity::from_factor(0.75, 0, priority), threads, 42, false, scope);
}

TEMPLATE_TEST_CASE("expert parallel Switch with a global capacity equals one process, and dropless is unchanged",
                   "[parallel][mpi][bit_identity][capacity]", float, double) {
  using S = TestType;
  using Bank = moe::FFNExperts<S, moe::Activation::relu>;
  const auto full = switch_layer<S>(150);
  const moe::Capacity capacity = GENERATE(moe::Capacity::from_factor(1.0), moe::Capacity::fixed(3), moe::Capacity{});
  const int threads = GENERATE(1, 2);
  CAPTURE(static_cast<int>(capacity.kind), threads);
  ep::check_against_single_process(full, [](Index n) { return Bank(n, d, ff); },
                                   ep::token_counts(ep::world_size(), false), capacity, threads, 46, false,
                                   moe::parallel::CapacityScope::global);
}

TEST_CASE("a global capacity bounds an expert's rows over all ranks, and the planning exchange is counted",
          "[parallel][mpi][capacity][statistics]") {
  const Index P = ep::world_size(), r = ep::world_rank();
  auto full = mixtral<float>(2, 39);
  const moe::Priority priority = GENERATE(moe::Priority::position, moe::Priority::batch_prioritized);
  constexpr Index slots = 4;
  moe::parallel::MpiExpertExecutor executor(MPI_COMM_WORLD, E, moe::parallel::CapacityScope::global);
  const auto& part = executor.partition();
  auto layer = moe::parallel::expert_parallel_layer(
      moe::parallel::ExpertSlice<moe::SwiGLUExperts<float>>(
          moe::parallel::copy_experts(full.experts(), part.first(r), part.count(r), swiglu_maker<float>()), part, r),
      full.router(), full.combiner(), moe::Capacity::fixed(slots, priority), executor);
  constexpr Index T_r = 20;  // 40 assignments per rank over 6 experts: far more than 4 slots
  const moe::RowMatrix<float> x = moe::test::random_matrix(T_r, d, 90 + static_cast<unsigned>(r)).cast<float>();
  moe::Workspace<float> ws;
  (void)moe::parallel::forward(layer, x, ws);
  const moe::LayerStatistics all = moe::parallel::global_statistics(ws.stats, layer.executor());
  // At most `slots` rows per expert over every rank's tokens (per rank it would be P * slots).
  Index kept = 0;
  for (Index e = 0; e < E; ++e) {
    CHECK(all.expert_load[static_cast<std::size_t>(e)] <= slots);
    kept += all.expert_load[static_cast<std::size_t>(e)];
  }
  CHECK(all.assignments == 2 * T_r * P);
  CHECK(all.dropped == all.assignments - kept);
  // Bytes of counts: the planning header (8 int64), then the counts per (choice, expert)
  // (position) or every assignment's (token, expert, gate) (batch-prioritized), to P - 1 ranks;
  // then the counts exchange of every forward.
  const auto others = static_cast<std::uint64_t>(P - 1);
  const std::uint64_t planning = priority == moe::Priority::position ? 2 * E : 3 * 2 * T_r;
  CHECK(layer.executor().last_call().count_bytes ==
        others * (8 + planning + static_cast<std::uint64_t>(1 + part.max_count())) * sizeof(std::int64_t));
}

TEST_CASE("a rank that fails between the planning and the counts exchange makes every rank fail",
          "[parallel][mpi][errors][capacity]") {
  const Index P = ep::world_size(), r = ep::world_rank(), bad = P - 1;
  auto full = mixtral<double>(2, 40);
  moe::parallel::MpiExpertExecutor executor(MPI_COMM_WORLD, E, moe::parallel::CapacityScope::global);
  const auto& part = executor.partition();
  auto layer = moe::parallel::expert_parallel_layer(
      moe::parallel::ExpertSlice<moe::SwiGLUExperts<double>>(
          moe::parallel::copy_experts(full.experts(), part.first(r), part.count(r), swiglu_maker<double>()), part, r),
      full.router(), full.combiner(), moe::Capacity::from_factor(1.0), executor);
  // Steps 1 and 2 by hand, as MoELayer runs them; then the bad rank gives up where the layer's
  // gather would run, as moe::parallel::forward does on an exception there.
  const moe::RowMatrix<double> x = moe::test::random_matrix(9, d, 95 + static_cast<unsigned>(r));
  moe::Workspace<double> ws;
  layer.router().route(x, ws.routing, {});
  REQUIRE(layer.executor().plan(ws.routing, ws.plan, layer.capacity()));
  CHECK(layer.executor().exchange_owed());
  if (r == bad) {
    layer.executor().signal_failure(true);
    CHECK_FALSE(layer.executor().exchange_owed());
  } else {
    moe::RowMatrix<double> x_perm(ws.plan.rows(), d), hidden(ws.plan.rows(), layer.experts().hidden_cols()),
        y_perm(ws.plan.rows(), d);
    REQUIRE_THROWS_WITH(layer.executor().forward(layer.experts(), moe::ExpertStep<double>{ws.plan, x_perm, hidden, y_perm,
                                                                                          x, moe::ForwardContext{}}),
                        "MpiExpertExecutor::forward(): every rank's call expected to reach the exchange, got rank " +
                            std::to_string(bad) + " failed before the exchange (its own exception says why)");
  }
  // In step again.
  CHECK(moe::parallel::forward(layer, x, ws).allFinite());
}

TEMPLATE_TEST_CASE("expert parallel Switch (top-1, ReLU FFN) with capacity equals one process",
                   "[parallel][mpi][bit_identity][capacity]", float, double) {
  using S = TestType;
  using Bank = moe::FFNExperts<S, moe::Activation::relu>;
  const auto full = switch_layer<S>(50);
  const int threads = GENERATE(1, 2);
  ep::check_against_single_process(full, [](Index n) { return Bank(n, d, ff); },
                                   ep::token_counts(ep::world_size(), false), moe::Capacity::from_factor(1.0), threads, 43);
}

TEMPLATE_TEST_CASE("expert parallel DeepSeek-V3 (group-limited sigmoid, shared expert) equals one process",
                   "[parallel][mpi][bit_identity]", float, double) {
  using S = TestType;
  moe::SigmoidGroupLimited<S> gating;
  gating.n_group = 3;
  gating.topk_group = 2;
  gating.routed_scaling_factor = S(2.5);
  gating.correction_bias = moe::test::random_matrix(E, 1, 61).template cast<S>().col(0) * S(0.1);
  moe::DeepSeekV3MoE<S> full(
      moe::test::swiglu<S>(E, d, ff, 62),
      moe::GroupLimitedRouter<S>(moe::test::random_matrix(E, d, 63).template cast<S>(), 2, gating),
      moe::SharedExpertCombiner<moe::SwiGLUExperts<S>, moe::SharedGate::none>(moe::test::swiglu<S>(1, d, ff, 64)));
  const int threads = GENERATE(1, 2);
  const bool zero_rank = GENERATE(false, true);
  CAPTURE(threads, zero_rank);
  const bool small = GENERATE(false, true);
  ep::check_against_single_process(full, swiglu_maker<S>(), ep::token_counts(ep::world_size(), zero_rank, small),
                                   moe::Capacity{}, threads, 44);
}

TEMPLATE_TEST_CASE("expert parallel GPT-OSS (top-k softmax with bias, clamped GLU) equals one process",
                   "[parallel][mpi][bit_identity]", float, double) {
  using S = TestType;
  moe::GptOssExperts<S> bank(E, d, ff);
  unsigned seed = 170;
  bank.for_each_parameter([&](const std::string&, auto&& block) { moe::test::fill(block, seed++, 0.3); });
  moe::Vector<S> bias = moe::test::random_matrix(E, 1, 176).template cast<S>().col(0) * S(0.1);
  moe::GptOssMoE<S> full(std::move(bank),
                         moe::TopKSoftmaxRouter<S>(moe::test::random_matrix(E, d, 177).template cast<S>(), 2, {}, bias));
  const moe::Capacity capacity = GENERATE(moe::Capacity{}, moe::Capacity::from_factor(0.75));
  const auto scope = GENERATE(moe::parallel::CapacityScope::per_rank, moe::parallel::CapacityScope::global);
  CAPTURE(static_cast<int>(capacity.kind), static_cast<int>(scope));
  ep::check_against_single_process(full, [](Index n) { return moe::GptOssExperts<S>(n, d, ff); },
                                   ep::token_counts(ep::world_size(), true), capacity, 2, 47, false, scope);
}

TEMPLATE_TEST_CASE("expert parallel Qwen2-MoE (not renormalised, sigmoid-gated shared expert) equals one process",
                   "[parallel][mpi][bit_identity]", float, double) {
  using S = TestType;
  moe::SharedExpertCombiner<moe::SwiGLUExperts<S>, moe::SharedGate::sigmoid> combiner(moe::test::swiglu<S>(1, d, ff, 180));
  moe::test::fill(combiner.gate_weight(), 181, 0.3);
  moe::Qwen2MoE<S> full(moe::test::swiglu<S>(E, d, ff, 182),
                        moe::SoftmaxTopKRouter<S>(moe::test::random_matrix(E, d, 183).template cast<S>(), 3,
                                                  moe::SoftmaxTopK<S>{false}),
                        std::move(combiner));
  const int threads = GENERATE(1, 2);
  ep::check_against_single_process(full, swiglu_maker<S>(), ep::token_counts(ep::world_size(), false),
                                   moe::Capacity{}, threads, 48);
}

TEMPLATE_TEST_CASE("expert parallel hash routing (token ids per rank) equals one process",
                   "[parallel][mpi][bit_identity]", float, double) {
  using S = TestType;
  // Dropless: the references of a run with capacity replay its decisions through a routing
  // tape in replay_experts mode, which needs a router that can regate (hash routing cannot).
  moe::HashMoE<S> full(moe::test::swiglu<S>(E, d, ff, 185), moe::HashRouter<S>::balanced(50, E, d, 186));
  const int threads = GENERATE(1, 2);
  ep::check_against_single_process(full, swiglu_maker<S>(), ep::token_counts(ep::world_size(), true), moe::Capacity{},
                                   threads, 49);
}

TEMPLATE_TEST_CASE("expert parallel top-p routing (1 to 3 experts per token) equals one process",
                   "[parallel][mpi][bit_identity][capacity]", float, double) {
  using S = TestType;
  // A variable number of choices per token: the global capacity's counts per choice have as
  // many rows as the most choices any rank's token made.
  moe::TopPMoE<S> full(moe::test::swiglu<S>(E, d, ff, 188),
                       moe::TopPRouter<S>(moe::test::random_matrix(E, d, 189).template cast<S>(), 3, moe::TopP<S>{S(0.6)}));
  const moe::Priority priority = GENERATE(moe::Priority::position, moe::Priority::batch_prioritized);
  const auto scope = GENERATE(moe::parallel::CapacityScope::per_rank, moe::parallel::CapacityScope::global);
  CAPTURE(static_cast<int>(priority), static_cast<int>(scope));
  ep::check_against_single_process(full, swiglu_maker<S>(), ep::token_counts(ep::world_size(), true),
                                   moe::Capacity::from_factor(0.5, 0, priority), 2, 50, false, scope);
}

TEMPLATE_TEST_CASE("expert parallel noisy top-k draws its noise per rank's batch: equals the ranks apart",
                   "[parallel][mpi][bit_identity]", float, double) {
  // Noise is keyed by (seed, step, the token's row in its batch), so a rank's tokens draw the
  // noise they draw in the rank's batch alone, not the concatenation's: the reference is the
  // ranks apart (outputs, dx, replicated gradients bit for bit; the owned experts' gradients to
  // rounding against the ranks' gradients added).
  using S = TestType;
  moe::NoisyTopKMoE<S> full(moe::test::swiglu<S>(E, d, ff, 191),
                            moe::NoisyTopKRouter<S>(moe::test::random_matrix(E, d, 192).template cast<S>(),
                                                    moe::test::random_matrix(E, d, 193).template cast<S>(), 2));
  const int threads = GENERATE(1, 2);
  ep::check_against_single_process(full, swiglu_maker<S>(), ep::token_counts(ep::world_size(), true), moe::Capacity{},
                                   threads, 51, false, moe::parallel::CapacityScope::per_rank, {.concatenation = false});
}

TEMPLATE_TEST_CASE("expert parallel Soft MoE (sequences of 3 tokens, none split across ranks) equals one process",
                   "[parallel][mpi][bit_identity][soft_moe]", float, double) {
  using S = TestType;
  using Bank = moe::FFNExperts<S, moe::Activation::gelu_erf>;
  Bank bank(E, d, ff);
  unsigned seed = 195;
  bank.for_each_parameter([&](const std::string&, auto&& block) { moe::test::fill(block, seed++, 0.3); });
  moe::SoftMoE<S> full(std::move(bank), moe::SoftRouter<S>(moe::test::random_matrix(d, E, 199).template cast<S>() * S(0.3), 1));
  std::vector<Index> T(static_cast<std::size_t>(ep::world_size()));
  for (std::size_t q = 0; q < T.size(); ++q) T[q] = 3 * static_cast<Index>(1 + (2 * q) % 5);  // 3, 9, 6, 12 tokens
  const int threads = GENERATE(1, 2);
  CAPTURE(threads);
  ep::check_against_single_process(full, [](Index n) { return Bank(n, d, ff); }, T, moe::Capacity{}, threads, 52, false,
                                   moe::parallel::CapacityScope::per_rank, {.concatenation = true, .sequence_length = 3});
}

TEST_CASE("the exchange moves each row to its owner and back: bytes per call", "[parallel][mpi][statistics]") {
  const Index P = ep::world_size(), r = ep::world_rank();
  auto full = mixtral<float>(2, 37);
  moe::parallel::MpiExpertExecutor executor(MPI_COMM_WORLD, E);
  const auto& part = executor.partition();
  auto layer = moe::parallel::expert_parallel_layer(
      moe::parallel::ExpertSlice<moe::SwiGLUExperts<float>>(
          moe::parallel::copy_experts(full.experts(), part.first(r), part.count(r), swiglu_maker<float>()), part, r),
      full.router(), full.combiner(), {}, executor);
  const moe::RowMatrix<float> x = moe::test::random_matrix(20, d, 70 + static_cast<unsigned>(r)).cast<float>();
  moe::Workspace<float> ws;
  (void)moe::parallel::forward(layer, x, ws);
  // Rows this rank routed to other ranks' experts, counted from its own plan.
  std::uint64_t away = 0;
  for (Index e = 0; e < E; ++e)
    if (part.owner(e) != r) away += static_cast<std::uint64_t>(ws.plan.count(e));
  const auto s = layer.executor().last_call();
  CHECK(s.calls == 1);
  // A rank sends its x rows away and the outputs of the rows it received back; it receives
  // the same numbers of rows: as many as it sends.
  CHECK(s.rows_sent == s.rows_received);
  CHECK(s.rows_sent >= away);
  CHECK(s.bytes_sent == s.rows_sent * d * sizeof(float));
  CHECK(s.count_bytes == static_cast<std::uint64_t>((P - 1) * (1 + part.max_count())) * sizeof(std::int64_t));
  // Over all ranks: every routed-away row travels twice (x there, y back).
  std::uint64_t sent = s.rows_sent, all_sent = 0, all_away = 0;
  MPI_Allreduce(&sent, &all_sent, 1, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD);
  MPI_Allreduce(&away, &all_away, 1, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD);
  CHECK(all_sent == 2 * all_away);
  // The call's wall times: finite, non-negative, and summed into the totals.
  CHECK(s.mpi_seconds >= 0.0);
  CHECK(s.expert_seconds >= 0.0);
  CHECK(s.mpi_seconds < 60.0);
  CHECK(layer.executor().totals().mpi_seconds == s.mpi_seconds);
  CHECK(layer.executor().totals().expert_seconds == s.expert_seconds);
  // Equality compares what was exchanged, never the wall times.
  auto timed = s;
  timed.mpi_seconds += 1.0;
  CHECK(timed == s);
}

TEMPLATE_TEST_CASE("expert choice under expert parallelism chooses within each rank's batch",
                   "[parallel][mpi][expert_choice]", float, double) {
  // Each expert picks its top tokens among the rank's own: the output is the single-process
  // layer's on the rank's batch apart (with the batch-invariant kernel), and the statistics the
  // ranks' own, summed. Not the concatenation's: there an expert picks among all tokens.
  using S = TestType;
  const Index P = ep::world_size(), r = ep::world_rank();
  moe::ExpertChoiceMoE<S> full(moe::test::swiglu<S>(E, d, ff, 91),
                               moe::ExpertChoiceRouter<S>(moe::test::random_matrix(E, d, 92).template cast<S>(), 1.0));
  moe::parallel::MpiExpertExecutor executor(MPI_COMM_WORLD, E);
  const auto& part = executor.partition();
  auto layer = moe::parallel::expert_parallel_layer(
      moe::parallel::ExpertSlice<moe::SwiGLUExperts<S>>(
          moe::parallel::copy_experts(full.experts(), part.first(r), part.count(r), swiglu_maker<S>()), part, r),
      full.router(), full.combiner(), {}, executor);
  const std::vector<Index> T = ep::token_counts(P, false);
  moe::ForwardContext ctx;
  ctx.gemm = moe::GemmKernel::batch_invariant;
  std::vector<moe::LayerStatistics> apart;
  moe::RowMatrix<S> y_apart;
  for (Index q = 0; q < P; ++q) {
    const moe::RowMatrix<S> xq = moe::test::random_matrix(T[static_cast<std::size_t>(q)], d, 93 + static_cast<unsigned>(q)).template cast<S>();
    moe::Workspace<S> qws;
    const moe::RowMatrix<S> yq = full.forward(xq, qws, ctx);
    apart.push_back(qws.stats);
    if (q == r) y_apart = yq;
  }
  const moe::RowMatrix<S> x = moe::test::random_matrix(T[static_cast<std::size_t>(r)], d, 93 + static_cast<unsigned>(r)).template cast<S>();
  moe::Workspace<S> ws;
  CHECK(moe::test::same_bits(moe::parallel::forward(layer, x, ws, ctx), y_apart));
  const moe::LayerStatistics global = moe::parallel::global_statistics(ws.stats, layer.executor());
  const moe::LayerStatistics expected = moe::parallel::merge_statistics(apart);
  CHECK(global.expert_load == expected.expert_load);
  CHECK(global.experts_per_token == expected.experts_per_token);
  CHECK(global.assignments == expected.assignments);
}
