// What the MPI tests share: the rank, per-rank batches every rank can rebuild, and the
// comparison of an expert-parallel run with the single-process layer (tests/parallel/).
#ifndef MOE_TESTS_PARALLEL_EP_HARNESS_HPP
#define MOE_TESTS_PARALLEL_EP_HARNESS_HPP

#include <moe/core/thread_pool.hpp>
#include <moe/dispatch/routing_tape.hpp>
#include <moe/layer/moe_layer.hpp>
#include <moe/parallel/expert_parallel.hpp>

#include <catch2/catch.hpp>
#include <support/bits.hpp>
#include <support/random.hpp>

#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

namespace moe::test::ep {

inline Index world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
inline Index world_size() {
  int p = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &p);
  return p;
}

/// Every parameter of a policy (or a gradient) as matrices, in for_each_parameter order.
template <class S, class Policy>
std::vector<RowMatrix<S>> tensors(const Policy& p) {
  std::vector<RowMatrix<S>> out;
  p.for_each_parameter([&](const std::string&, const auto& block) { out.emplace_back(block); });
  return out;
}

/// Tokens per rank: uneven sizes; with zero_rank, rank 1 (rank 0 when alone) has none. Small
/// batches total at most 32 rows for 4 ranks (the row-wise product kernel everywhere, so dx
/// is exact against the concatenation too); the others exceed it from 3 ranks on.
inline std::vector<Index> token_counts(Index P, bool zero_rank, bool small = false) {
  std::vector<Index> T(static_cast<std::size_t>(P));
  for (Index q = 0; q < P; ++q) T[static_cast<std::size_t>(q)] = small ? 2 + (3 * q) % 5 : 9 + (5 * q) % 11;
  if (zero_rank) T[static_cast<std::size_t>(P > 1 ? 1 : 0)] = 0;
  return T;
}

/// A forward context of the comparisons: training, the batch-invariant product kernel (a
/// token's router and combiner rows then have the same bits in a rank's batch as in the
/// concatenation; the experts' slabs are the same rows either way), a pool of `threads`.
struct Context {
  explicit Context(int threads) : pool(threads > 1 ? std::make_unique<ThreadPool>(threads) : nullptr) {
    ctx.mode = Mode::training;
    ctx.gemm = GemmKernel::batch_invariant;
    ctx.pool = pool.get();
  }
  std::unique_ptr<ThreadPool> pool;
  ForwardContext ctx;
};

/// What check_against_single_process compares beyond the defaults.
struct Check {
  /// Compare with the concatenation (reference A). Off for routers whose decisions are not
  /// per token alone: noise keyed by the token's row in its batch (noisy top-k), choices over
  /// the batch (expert choice); then the ranks apart (B) are the reference, and the owned
  /// experts' gradients are not compared.
  bool concatenation = true;
  /// ForwardContext::sequence_length (Soft MoE: sequences must not be split across ranks).
  Index sequence_length = 0;
};

/// Token ids for routers that read them (hash routing): rank q's token t gets an id from
/// (q, t), the concatenation the same ids in rank order.
inline std::vector<std::int64_t> token_ids(Index q, Index n) {
  std::vector<std::int64_t> ids(static_cast<std::size_t>(n));
  for (Index t = 0; t < n; ++t) ids[static_cast<std::size_t>(t)] = (31 * q + 7 * t + 3) % 50;
  return ids;
}

/// Splits a routing record of the concatenation into the ranks' records (tokens from offset[q]
/// to offset[q + 1] renumbered from 0), keeping the kept flags and the capacity.
inline std::vector<RoutingRecord> split_record(const RoutingRecord& whole, const std::vector<Index>& offset) {
  const auto P = offset.size() - 1;
  std::vector<RoutingRecord> parts(P);
  for (std::size_t q = 0; q < P; ++q) {
    parts[q].num_tokens = offset[q + 1] - offset[q];
    parts[q].num_experts = whole.num_experts;
    parts[q].k = whole.k;
    parts[q].capacity = whole.capacity;
  }
  for (Index i = 0; i < whole.size(); ++i) {
    const auto iu = static_cast<std::size_t>(i);
    std::size_t q = 0;
    while (whole.token[iu] >= offset[q + 1]) ++q;
    parts[q].token.push_back(static_cast<std::int32_t>(whole.token[iu] - offset[q]));
    parts[q].expert.push_back(whole.expert[iu]);
    parts[q].gate.push_back(whole.gate[iu]);
    parts[q].kept.push_back(whole.kept[iu]);
  }
  return parts;
}

/// One expert-parallel forward and backward of `full`'s weights (rank r holds its block),
/// against (a) the single-process layer on the concatenation of the ranks' batches in rank
/// order for the output, dx, the experts' gradients and the statistics, bit for bit; and (b)
/// the single-process layer on each rank's batch, run apart, for the output, dx and the
/// replicated parameters' gradients summed in rank order, bit for bit (and the
/// concatenation's within a tolerance). With capacity per rank (CapacityScope::per_rank), (b)
/// runs with the capacity and (a) replays the ranks' decisions through a routing tape; with a
/// global capacity, (a) runs with the capacity and (b) replays (a)'s decisions, split by rank.
template <class Full, class MakeBank>
void check_against_single_process(const Full& full, MakeBank make_bank, const std::vector<Index>& T,
                                  const Capacity& capacity, int threads, unsigned seed, bool dead_expert_col = false,
                                  parallel::CapacityScope scope = parallel::CapacityScope::per_rank,
                                  const Check& check = {}) {
  using S = typename Full::scalar_type;
  using Bank = typename Full::expert_type;
  const Index P = world_size(), r = world_rank(), E = full.num_experts(), d = full.input_dim(),
              d_out = full.output_dim();
  std::vector<RowMatrix<S>> xs, dys;
  std::vector<Index> offset{0};
  for (Index q = 0; q < P; ++q) {
    const auto n = T[static_cast<std::size_t>(q)];
    xs.push_back(random_matrix(n, d, seed + 100 + static_cast<unsigned>(q)).template cast<S>());
    if (dead_expert_col && n > 0) xs.back().col(0).setConstant(S(1));
    dys.push_back(random_matrix(n, d_out, seed + 200 + static_cast<unsigned>(q)).template cast<S>());
    offset.push_back(offset.back() + n);
  }
  const Index total = offset.back();
  RowMatrix<S> X(total, d), dY(total, d_out);
  for (Index q = 0; q < P; ++q) {
    X.middleRows(offset[static_cast<std::size_t>(q)], xs[static_cast<std::size_t>(q)].rows()) = xs[static_cast<std::size_t>(q)];
    dY.middleRows(offset[static_cast<std::size_t>(q)], dys[static_cast<std::size_t>(q)].rows()) = dys[static_cast<std::size_t>(q)];
  }
  Context c(threads);
  c.ctx.sequence_length = check.sequence_length;
  // Token ids per rank and for the concatenation, read by routers that need them.
  constexpr bool ids = router_traits<typename Full::router_type>::needs_token_ids;
  std::vector<std::vector<std::int64_t>> rank_ids;
  std::vector<std::int64_t> all_ids;
  for (Index q = 0; q < P; ++q) {
    rank_ids.push_back(token_ids(q, T[static_cast<std::size_t>(q)]));
    all_ids.insert(all_ids.end(), rank_ids.back().begin(), rank_ids.back().end());
  }
  const auto with_ids = [&](ForwardContext ctx, const std::vector<std::int64_t>& v) {
    if constexpr (ids) ctx.token_ids = v;
    return ctx;
  };

  // The expert-parallel run.
  parallel::MpiExpertExecutor executor(MPI_COMM_WORLD, E, scope);
  const parallel::ExpertPartition& part = executor.partition();
  const Index first = part.first(r), count = part.count(r);
  auto layer = parallel::expert_parallel_layer<typename Full::arch_type>(
      parallel::ExpertSlice<Bank>(parallel::copy_experts(full.experts(), first, count, make_bank), part, r),
      full.router(), full.combiner(), capacity, executor);
  Workspace<S> ws;
  const RowMatrix<S> y = parallel::forward(layer, xs[static_cast<std::size_t>(r)], ws,
                                           with_ids(c.ctx, rank_ids[static_cast<std::size_t>(r)]));
  const LayerStatistics stats = parallel::global_statistics(ws.stats, layer.executor());
  auto grads = layer.make_gradients();
  const RowMatrix<S> dx = parallel::backward(layer, dys[static_cast<std::size_t>(r)], ws, grads);
  (void)parallel::sum_replicated_gradients(grads, layer.executor());

  const bool bounded = capacity.kind != Capacity::Kind::none;
  const bool global = scope == parallel::CapacityScope::global;

  // (a) first under a global capacity: the concatenation with the capacity, its decisions recorded.
  Full whole = full;
  Workspace<S> wws;
  RowMatrix<S> Y;
  std::vector<RoutingRecord> global_parts;
  if (global) {
    whole.set_capacity(capacity);
    RoutingTape tape(TapeMode::record);
    ForwardContext wc = with_ids(c.ctx, all_ids);
    if (bounded) wc.routing_tape = &tape;
    Y = whole.forward(X, wws, wc);
    if (bounded) global_parts = split_record(tape.records().front(), offset);
  }

  // (b) each rank's batch apart, in one process; the per-rank routing records.
  std::vector<RoutingRecord> records;
  std::vector<RowMatrix<S>> rep_router, rep_combiner, apart_experts;
  RowMatrix<S> y_apart, dx_apart;
  for (Index q = 0; q < P; ++q) {
    Full single = full;
    RoutingTape tape(TapeMode::record);
    if (global && bounded) {
      tape.append(RoutingRecord(global_parts[static_cast<std::size_t>(q)]));
      tape.set_mode(TapeMode::replay_experts);
    } else {
      single.set_capacity(capacity);
    }
    ForwardContext qc = with_ids(c.ctx, rank_ids[static_cast<std::size_t>(q)]);
    if (bounded) qc.routing_tape = &tape;
    Workspace<S> qws;
    const RowMatrix<S> yq = single.forward(xs[static_cast<std::size_t>(q)], qws, qc);
    auto gq = single.make_gradients();
    const RowMatrix<S> dxq = single.backward(dys[static_cast<std::size_t>(q)], qws, gq);
    if (!global && bounded) records.push_back(tape.records().front());
    const auto router_q = tensors<S>(gq.router), combiner_q = tensors<S>(gq.combiner);
    const auto experts_q = tensors<S>(parallel::copy_experts(gq.experts, first, count, make_bank));
    if (q == 0) {
      rep_router = router_q, rep_combiner = combiner_q, apart_experts = experts_q;
    } else {
      for (std::size_t i = 0; i < router_q.size(); ++i) rep_router[i] += router_q[i];
      for (std::size_t i = 0; i < combiner_q.size(); ++i) rep_combiner[i] += combiner_q[i];
      for (std::size_t i = 0; i < experts_q.size(); ++i) apart_experts[i] += experts_q[i];
    }
    if (q == r) y_apart = yq, dx_apart = dxq;
  }

  // (a) per rank: the concatenation; with capacity, the groups' decisions replayed on it.
  if (!global) {
    RoutingTape replay(TapeMode::record);
    ForwardContext wc = with_ids(c.ctx, all_ids);
    if (bounded) {
      RoutingRecord all;
      all.num_tokens = total;
      all.num_experts = E;
      all.k = records.front().k;
      all.capacity = -1;
      for (Index q = 0; q < P; ++q) {
        const RoutingRecord& rec = records[static_cast<std::size_t>(q)];
        for (Index i = 0; i < rec.size(); ++i) {
          const auto iu = static_cast<std::size_t>(i);
          all.token.push_back(static_cast<std::int32_t>(rec.token[iu] + offset[static_cast<std::size_t>(q)]));
          all.expert.push_back(rec.expert[iu]);
          all.gate.push_back(rec.gate[iu]);
          all.kept.push_back(rec.kept[iu]);
        }
      }
      replay.append(std::move(all));
      replay.set_mode(TapeMode::replay_experts);
      wc.routing_tape = &replay;
    }
    Y = whole.forward(X, wws, wc);
  }
  auto wgrads = whole.make_gradients();
  const RowMatrix<S> dX = whole.backward(dY, wws, wgrads);

  const Index T_r = T[static_cast<std::size_t>(r)], off = offset[static_cast<std::size_t>(r)];
  CHECK(same_bits(y, y_apart));
  CHECK(same_bits(dx, dx_apart));
  if (check.concatenation) {
    CHECK(same_bits(y, RowMatrix<S>(Y.middleRows(off, T_r))));
    // dx also flows through products over the rank's batch outside step 4 (the router's
    // dlogits W, a shared expert's backward), which the layer's backward runs with the default
    // kernel whatever ForwardContext::gemm says: the row-wise kernel up to 32 rows, Eigen's GEMM
    // above (FMA under -march=native). So dx is bit for bit the rank's batch apart always, and
    // the concatenation's when that too stays within 32 rows; to rounding otherwise.
    if (total <= kernels::rowwise_max_rows) {
      CHECK(same_bits(dx, RowMatrix<S>(dX.middleRows(off, T_r))));
    } else {
      const double dx_tol = sizeof(S) == 4 ? 1e-5 : 1e-13;
      CHECK((dx - dX.middleRows(off, T_r)).norm() <= dx_tol * (1 + dx.norm()));
    }
    CHECK(stats.tokens == wws.stats.tokens);
    CHECK(stats.assignments == wws.stats.assignments);
    CHECK(stats.dropped == wws.stats.dropped);
    CHECK(stats.rerouted == wws.stats.rerouted);
    CHECK(stats.expert_load == wws.stats.expert_load);
    CHECK(stats.experts_per_token == wws.stats.experts_per_token);
    // The owned experts' gradients against the concatenation's, bit for bit.
    const auto mine = tensors<S>(grads.experts.local());
    const auto expected = tensors<S>(parallel::copy_experts(wgrads.experts, first, count, make_bank));
    REQUIRE(mine.size() == expected.size());
    for (std::size_t i = 0; i < mine.size(); ++i) CHECK(same_bits(mine[i], expected[i]));
  } else {
    // The owned experts' gradients: one product over every source's rows against the ranks'
    // separate gradients added, to rounding.
    const auto mine = tensors<S>(grads.experts.local());
    REQUIRE(mine.size() == apart_experts.size());
    const double tol = sizeof(S) == 4 ? 1e-4 : 1e-12;
    for (std::size_t i = 0; i < mine.size(); ++i)
      CHECK((mine[i] - apart_experts[i]).norm() <= tol * (1 + apart_experts[i].norm()));
  }
  // Replicated parameters: the ranks' separate gradients added in rank order, bit for bit; the
  // concatenation's to rounding (one GEMM over all tokens against a sum of per-rank GEMMs).
  const auto router_ep = tensors<S>(grads.router), combiner_ep = tensors<S>(grads.combiner);
  const auto router_whole = tensors<S>(wgrads.router), combiner_whole = tensors<S>(wgrads.combiner);
  REQUIRE(router_ep.size() == rep_router.size());
  REQUIRE(combiner_ep.size() == rep_combiner.size());
  const double tol = sizeof(S) == 4 ? 1e-4 : 1e-12;
  for (std::size_t i = 0; i < router_ep.size(); ++i) {
    CHECK(same_bits(router_ep[i], rep_router[i]));
    if (check.concatenation) CHECK((router_ep[i] - router_whole[i]).norm() <= tol * (1 + router_whole[i].norm()));
  }
  for (std::size_t i = 0; i < combiner_ep.size(); ++i) {
    CHECK(same_bits(combiner_ep[i], rep_combiner[i]));
    if (check.concatenation)
      CHECK((combiner_ep[i] - combiner_whole[i]).norm() <= tol * (1 + combiner_whole[i].norm()));
  }
}

}  // namespace moe::test::ep

#endif  // MOE_TESTS_PARALLEL_EP_HARNESS_HPP
