// An expert-parallel layer over MPI: built with a configuration check every rank agrees on,
// called so that a failing rank never leaves the others waiting, and its statistics and
// replicated gradients combined across ranks in a fixed order (docs/expert_parallel.md).
#ifndef MOE_PARALLEL_EXPERT_PARALLEL_HPP
#define MOE_PARALLEL_EXPERT_PARALLEL_HPP

#include <moe/contracts/dispatch_plan.hpp>
#include <moe/contracts/statistics.hpp>
#include <moe/core/error.hpp>
#include <moe/core/types.hpp>
#include <moe/layer/moe_layer.hpp>
#include <moe/parallel/expert_partition.hpp>
#include <moe/parallel/expert_slice.hpp>
#include <moe/parallel/merge_statistics.hpp>
#include <moe/parallel/mpi_expert_executor.hpp>

#include <array>
#include <climits>
#include <cstdint>
#include <cstring>
#include <exception>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>
#include <xsimd/xsimd.hpp>

namespace moe::parallel {

/// A layer whose experts are spread over MPI ranks: rank r holds rank r's ExpertSlice of Bank,
/// every rank a replica of the router and the combiner.
template <class Bank, class RouterType, class CombinerType, class Arch = xsimd::default_arch>
using ExpertParallelLayer = MoELayer<ExpertSlice<Bank>, RouterType, CombinerType, Arch, MpiExpertExecutor>;

namespace impl {

/// FNV-1a over every parameter of a policy: its name, shape and the bytes of its values in
/// row-major order. Equal weights give equal sums on every rank.
template <class Policy>
std::uint64_t checksum(const Policy& p) {
  std::uint64_t h = 1469598103934665603ULL;
  const auto mix = [&](const void* data, std::size_t n) {
    const auto* b = static_cast<const unsigned char*>(data);
    for (std::size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ULL;
  };
  p.for_each_parameter([&](const std::string& name, const auto& block) {
    mix(name.data(), name.size());
    const std::int64_t shape[2] = {static_cast<std::int64_t>(block.rows()), static_cast<std::int64_t>(block.cols())};
    mix(shape, sizeof shape);
    for (Index r = 0; r < block.rows(); ++r)
      for (Index c = 0; c < block.cols(); ++c) {
        const auto v = block(r, c);
        mix(&v, sizeof v);
      }
  });
  return h;
}

/// What every rank must agree on, one int64 each, and their names in messages.
enum Field : std::size_t { failed, experts, input_dim, output_dim, k, ranks, first, count, capacity_kind, capacity_value,
                           capacity_scope, router_sum, combiner_sum, num_fields };
inline constexpr std::array<const char*, num_fields> field_names = {
    "", "num_experts", "input_dim", "output_dim", "k (experts per token)", "communicator size", "", "",
    "capacity kind", "capacity (factor bits, or slots)", "capacity scope (0 per rank, 1 global)",
    "router weights' checksum", "combiner weights' checksum"};

inline std::string hex(std::int64_t v) {
  static constexpr char digits[] = "0123456789abcdef";
  auto u = static_cast<std::uint64_t>(v);
  std::string s(16, '0');
  for (int i = 15; i >= 0; --i, u >>= 4) s[static_cast<std::size_t>(i)] = digits[u & 15];
  return "0x" + s;
}

}  // namespace impl

/// Builds rank r's layer and checks, collectively over the executor's communicator, that every
/// rank built the same one: E, d, d_out, k, the communicator size, each rank's expert block
/// (the contiguous partition), the capacity, and checksums of the router's and the combiner's
/// weights (replicated parameters). Any disagreement, or a rank whose construction threw, gives
/// every rank the same std::invalid_argument, computed from the table all ranks gathered:
/// "moe::parallel::expert_parallel_layer(): <what> on every rank expected <rank 0's>, got <v>
/// on rank <r>" (or the failing rank's own message on that rank). Never a hang.
template <class Arch = xsimd::default_arch, class Bank, class RouterType, class CombinerType>
[[nodiscard]] ExpertParallelLayer<Bank, RouterType, CombinerType, Arch> expert_parallel_layer(
    ExpertSlice<Bank> experts, RouterType router, CombinerType combiner, Capacity capacity, MpiExpertExecutor executor) {
  using Layer = ExpertParallelLayer<Bank, RouterType, CombinerType, Arch>;
  constexpr const char* where = "moe::parallel::expert_parallel_layer()";
  std::optional<Layer> layer;
  std::string own_error;
  std::array<std::int64_t, impl::num_fields> mine{};
  try {
    capacity.validate();
    if (executor.capacity_scope() == CapacityScope::global && capacity.reroute != 0)
      throw std::invalid_argument(detail::concat("Capacity::reroute under CapacityScope::global expected 0 (rerouting "
                                                 "is per rank), got ", capacity.reroute));
    layer.emplace(std::move(experts), std::move(router), std::move(combiner), capacity, executor);
    const Layer& l = *layer;
    mine[impl::experts] = l.num_experts();
    mine[impl::input_dim] = l.input_dim();
    mine[impl::output_dim] = l.output_dim();
    if constexpr (requires { l.router().k(); }) mine[impl::k] = l.router().k();
    mine[impl::ranks] = executor.num_ranks();
    mine[impl::first] = l.experts().first();
    mine[impl::count] = l.experts().local_count();
    mine[impl::capacity_kind] = static_cast<std::int64_t>(capacity.kind);
    mine[impl::capacity_value] = impl::capacity_bits(capacity);
    mine[impl::capacity_scope] = static_cast<std::int64_t>(executor.capacity_scope());
    mine[impl::router_sum] = static_cast<std::int64_t>(impl::checksum(l.router()));
    mine[impl::combiner_sum] = static_cast<std::int64_t>(impl::checksum(l.combiner()));
  } catch (const std::exception& e) {
    own_error = detail::concat(where, ": ", e.what());
    mine[impl::failed] = 1;
  }
  const Index P = executor.num_ranks();
  std::vector<std::int64_t> all(static_cast<std::size_t>(P) * impl::num_fields);
  impl::check_mpi(MPI_Allgather(mine.data(), static_cast<int>(impl::num_fields), MPI_INT64_T, all.data(),
                                static_cast<int>(impl::num_fields), MPI_INT64_T, executor.communicator()),
                  where, "MPI_Allgather (configuration)");
  const auto at = [&](Index r, std::size_t f) { return all[static_cast<std::size_t>(r) * impl::num_fields + f]; };
  for (Index r = 0; r < P; ++r)
    if (at(r, impl::failed) != 0) {
      if (!own_error.empty()) throw std::invalid_argument(own_error);
      detail::throw_invalid(where, "every rank's layer", "built", detail::concat("rank ", r, " failed (its own exception says why)"));
    }
  // Fields every rank must share, then each rank's block against the partition rank 0's E gives.
  for (std::size_t f = impl::experts; f < impl::num_fields; ++f) {
    if (f == impl::first || f == impl::count) continue;
    for (Index r = 1; r < P; ++r)
      if (at(r, f) != at(0, f)) {
        const bool sum = f == impl::router_sum || f == impl::combiner_sum;
        detail::throw_invalid(where, detail::concat(impl::field_names[f], " on every rank"),
                              detail::concat(sum ? impl::hex(at(0, f)) : std::to_string(at(0, f)), " (rank 0's)"),
                              detail::concat(sum ? impl::hex(at(r, f)) : std::to_string(at(r, f)), " on rank ", r));
      }
  }
  const ExpertPartition partition(at(0, impl::experts), P);
  for (Index r = 0; r < P; ++r)
    if (at(r, impl::first) != partition.first(r) || at(r, impl::count) != partition.count(r))
      detail::throw_invalid(where, detail::concat("the expert block of rank ", r),
                            detail::concat("[", partition.first(r), ", ", partition.first(r + 1), ") (contiguous blocks of ",
                                           partition.num_experts(), " experts over ", P, " ranks)"),
                            detail::concat("[", at(r, impl::first), ", ", at(r, impl::first) + at(r, impl::count), ")"));
  return std::move(*layer);
}

/// layer.forward(args...) for an expert-parallel layer, safe when this rank fails: an
/// exception thrown before the executor's counts exchange (a bad x, a router's check) first
/// joins that exchange with the error flag set (MpiExpertExecutor::signal_failure), so every
/// other rank throws too instead of waiting; then it propagates. Failures in and after the
/// exchange are already seen by every rank.
template <class Layer, class... Args>
decltype(auto) forward(const Layer& layer, Args&&... args) {
  const std::uint64_t before = layer.executor().exchanges();
  try {
    return layer.forward(std::forward<Args>(args)...);
  } catch (...) {
    // Before any exchange, or between the planning exchange (CapacityScope::global) and the
    // counts exchange: the others wait in the next collective.
    if (layer.executor().exchanges() == before || layer.executor().exchange_owed()) layer.executor().signal_failure(true);
    throw;
  }
}

/// layer.backward(args...) with forward's guarantee.
template <class Layer, class... Args>
decltype(auto) backward(const Layer& layer, Args&&... args) {
  const std::uint64_t before = layer.executor().exchanges();
  try {
    return layer.backward(std::forward<Args>(args)...);
  } catch (...) {
    if (layer.executor().exchanges() == before) layer.executor().signal_failure(false);
    throw;
  }
}

/// The statistics of the last forward over all ranks (collective): each rank's
/// Workspace::stats gathered and merged in rank order (merge_statistics). Equal to the
/// single-process layer's statistics for the concatenation of the ranks' batches.
[[nodiscard]] inline LayerStatistics global_statistics(const LayerStatistics& local, const MpiExpertExecutor& executor) {
  constexpr const char* where = "moe::parallel::global_statistics()";
  const Index E = executor.partition().num_experts();
  const auto n = static_cast<std::size_t>(6 + 2 * E);  // 5 counts and lengths, E loads, E + 1 bins
  std::vector<std::int64_t> mine(n, 0);
  detail::require(static_cast<Index>(local.expert_load.size()) == E, where, "expert_load length (E)", E,
                  local.expert_load.size());
  detail::require(local.experts_per_token.empty() || static_cast<Index>(local.experts_per_token.size()) == E + 1,
                  where, "experts_per_token length", detail::concat("0 or E + 1 = ", E + 1), local.experts_per_token.size());
  mine[0] = local.tokens, mine[1] = local.assignments, mine[2] = local.dropped, mine[3] = local.rerouted;
  mine[4] = static_cast<std::int64_t>(local.experts_per_token.size());
  for (Index e = 0; e < E; ++e) mine[static_cast<std::size_t>(5 + e)] = local.expert_load[static_cast<std::size_t>(e)];
  for (std::size_t b = 0; b < local.experts_per_token.size(); ++b)
    mine[static_cast<std::size_t>(5 + E) + b] = local.experts_per_token[b];
  const Index P = executor.num_ranks();
  std::vector<std::int64_t> all(n * static_cast<std::size_t>(P));
  impl::check_mpi(MPI_Allgather(mine.data(), static_cast<int>(n), MPI_INT64_T, all.data(), static_cast<int>(n),
                                MPI_INT64_T, executor.communicator()),
                  where, "MPI_Allgather (statistics)");
  std::vector<LayerStatistics> parts(static_cast<std::size_t>(P));
  for (Index r = 0; r < P; ++r) {
    const std::int64_t* v = all.data() + static_cast<std::size_t>(r) * n;
    LayerStatistics& p = parts[static_cast<std::size_t>(r)];
    p.tokens = v[0], p.assignments = v[1], p.dropped = v[2], p.rerouted = v[3];
    p.expert_load.assign(v + 5, v + 5 + E);
    p.experts_per_token.assign(v + 5 + E, v + 5 + E + v[4]);
  }
  return merge_statistics(parts);
}

/// Sums the gradients of the replicated parameters (the router's and the combiner's: shared
/// experts, gates) over the ranks, collectively, in a fixed order: every rank gathers every
/// rank's gradients (MPI_Allgather) and adds them as ((g_0 + g_1) + g_2) + ... + g_{P-1},
/// not with MPI_Allreduce, whose order is unspecified. Every rank ends with the same bits, the
/// sum a single process gets by adding the ranks' gradients in rank order. The experts'
/// gradients stay local (each rank's are its own experts'). Returns the bytes this rank sent.
template <class Grads>
std::uint64_t sum_replicated_gradients(Grads& grads, const MpiExpertExecutor& executor) {
  constexpr const char* where = "moe::parallel::sum_replicated_gradients()";
  using S = typename std::remove_cvref_t<decltype(grads.router)>::scalar_type;
  std::vector<S> mine;
  const auto pack = [&](const std::string&, const auto& block) {
    for (Index r = 0; r < block.rows(); ++r)
      for (Index c = 0; c < block.cols(); ++c) mine.push_back(block(r, c));
  };
  std::as_const(grads.router).for_each_parameter(pack);
  std::as_const(grads.combiner).for_each_parameter(pack);
  const Index P = executor.num_ranks();
  // Lengths first: a rank with other shapes fails on every rank instead of overrunning.
  const auto n = static_cast<std::int64_t>(mine.size());
  std::vector<std::int64_t> lengths(static_cast<std::size_t>(P));
  impl::check_mpi(MPI_Allgather(&n, 1, MPI_INT64_T, lengths.data(), 1, MPI_INT64_T, executor.communicator()), where,
                  "MPI_Allgather (lengths)");
  for (Index r = 0; r < P; ++r)
    detail::require(lengths[static_cast<std::size_t>(r)] == n, where,
                    detail::concat("replicated gradient values on rank ", r), n, lengths[static_cast<std::size_t>(r)]);
  detail::require(n <= INT_MAX, where, "replicated gradient values", "at most INT_MAX", n);
  std::vector<S> all(mine.size() * static_cast<std::size_t>(P));
  static S dummy{};
  impl::check_mpi(MPI_Allgather(mine.empty() ? &dummy : mine.data(), static_cast<int>(n), impl::mpi_scalar<S>(),
                                all.empty() ? &dummy : all.data(), static_cast<int>(n), impl::mpi_scalar<S>(),
                                executor.communicator()),
                  where, "MPI_Allgather (gradients)");
  for (std::size_t i = 0; i < mine.size(); ++i) {
    S sum = all[i];
    for (Index r = 1; r < P; ++r) sum += all[static_cast<std::size_t>(r) * mine.size() + i];
    mine[i] = sum;
  }
  std::size_t i = 0;
  const auto unpack = [&](const std::string&, auto&& block) {
    for (Index r = 0; r < block.rows(); ++r)
      for (Index c = 0; c < block.cols(); ++c) block(r, c) = mine[i++];
  };
  grads.router.for_each_parameter(unpack);
  grads.combiner.for_each_parameter(unpack);
  return static_cast<std::uint64_t>(n) * static_cast<std::uint64_t>(P - 1) * sizeof(S);
}

}  // namespace moe::parallel

#endif  // MOE_PARALLEL_EXPERT_PARALLEL_HPP
