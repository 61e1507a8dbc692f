// Step 4 across MPI ranks: each rank owns a contiguous block of the experts, routes its own
// tokens, and ships rows to the experts' owners and back (docs/expert_parallel.md). Needs <mpi.h>:
// the optional component moe::mpi (CMake option MOE_WITH_MPI); the core never includes it.
#ifndef MOE_PARALLEL_MPI_EXPERT_EXECUTOR_HPP
#define MOE_PARALLEL_MPI_EXPERT_EXECUTOR_HPP

#include <moe/contracts/dispatch_plan.hpp>
#include <moe/contracts/executor.hpp>
#include <moe/contracts/routing_result.hpp>
#include <moe/core/context.hpp>
#include <moe/core/error.hpp>
#include <moe/core/traits.hpp>
#include <moe/core/types.hpp>
#include <moe/dispatch/dispatch_plan.hpp>
#include <moe/expert/local_executor.hpp>
#include <moe/parallel/expert_partition.hpp>
#include <moe/parallel/expert_slice.hpp>

// The C bindings only: Open MPI's and MPICH's deprecated C++ bindings (MPI::) are skipped, as
// they do not compile warning-free; define these before any <mpi.h> to keep them.
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <algorithm>
#include <array>
#include <bit>
#include <chrono>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>
#include <xsimd/xsimd.hpp>

namespace moe::parallel {

/// Over which tokens a bounded Capacity counts an expert's slots under expert parallelism
/// (docs/expert_parallel.md#routing-capacity-losses).
enum class CapacityScope : std::uint8_t {
  /// Each rank's batch is a capacity group (GShard's and Megatron's semantics): ceil(cf k T_r /
  /// E) slots per expert and rank, decided by the rank's own tokens; an expert may run up to P
  /// times that many rows. No extra communication.
  per_rank,
  /// One group over all ranks' tokens: ceil(cf k T / E) slots per expert for the whole batch
  /// T = sum of T_r, served in the priority order of the concatenation of the ranks' batches in
  /// rank order, so the keep/drop decisions are the single-process layer's on that
  /// concatenation. Decided on every rank from exchanged counts (Priority::position) or
  /// exchanged (expert, gate) pairs (Priority::batch_prioritized) before the rows move.
  global,
};

/// Rows and bytes one rank moved in its exchanges with the other ranks (its own rows, which
/// stay on the rank, are not counted). The counts exchange is counted in count_bytes.
struct ExchangeStatistics {
  std::uint64_t rows_sent = 0;      ///< rows sent to other ranks (both directions of a call)
  std::uint64_t rows_received = 0;  ///< rows received from other ranks
  std::uint64_t bytes_sent = 0;     ///< row bytes sent to other ranks
  std::uint64_t bytes_received = 0;
  std::uint64_t count_bytes = 0;    ///< bytes of the per-(rank, expert) counts this rank sent
  std::uint64_t calls = 0;          ///< forward and backward calls
  /// Wall time inside the executor's MPI calls (counts, rows, flags). It includes waiting for
  /// the slowest rank to arrive, so on an unbalanced batch it also measures the imbalance.
  double mpi_seconds = 0;
  double expert_seconds = 0;  ///< wall time running this rank's experts
  ExchangeStatistics& operator+=(const ExchangeStatistics& o) noexcept {
    rows_sent += o.rows_sent, rows_received += o.rows_received, bytes_sent += o.bytes_sent;
    bytes_received += o.bytes_received, count_bytes += o.count_bytes, calls += o.calls;
    mpi_seconds += o.mpi_seconds, expert_seconds += o.expert_seconds;
    return *this;
  }
  /// Compares what was exchanged (rows, bytes, calls); the wall times differ between runs.
  friend bool operator==(const ExchangeStatistics& a, const ExchangeStatistics& b) noexcept {
    return a.rows_sent == b.rows_sent && a.rows_received == b.rows_received && a.bytes_sent == b.bytes_sent &&
           a.bytes_received == b.bytes_received && a.count_bytes == b.count_bytes && a.calls == b.calls;
  }
};

namespace impl {

template <class S>
MPI_Datatype mpi_scalar() {
  static_assert(std::is_same_v<S, float> || std::is_same_v<S, double>, "moe::parallel: S must be float or double");
  if constexpr (std::is_same_v<S, float>) return MPI_FLOAT;
  else return MPI_DOUBLE;
}

/// Throws std::runtime_error naming the call when an MPI call fails (the executor's
/// communicator returns errors instead of aborting). An MPI error is not recoverable here: the
/// ranks may now disagree on where they are.
inline void check_mpi(int rc, const char* where, const char* call) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  throw std::runtime_error(detail::concat(where, ": ", call, " expected MPI_SUCCESS, got ", std::string(text, static_cast<std::size_t>(len))));
}

/// A capacity as one int64 the ranks compare: the factor's bits xor the minimum, or the slots.
inline std::int64_t capacity_bits(const Capacity& c) {
  return c.kind == Capacity::Kind::factor ? std::bit_cast<std::int64_t>(c.factor) ^ c.minimum : c.absolute;
}

/// Adds the wall time of its scope to a total.
class ScopeTimer {
 public:
  explicit ScopeTimer(double& total) noexcept : total_(total), start_(std::chrono::steady_clock::now()) {}
  ~ScopeTimer() { total_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count(); }
  ScopeTimer(const ScopeTimer&) = delete;
  ScopeTimer& operator=(const ScopeTimer&) = delete;

 private:
  double& total_;
  std::chrono::steady_clock::time_point start_;
};

/// A contiguous row of `cols` scalars, committed for the call and freed after it.
class RowType {
 public:
  RowType(Index cols, MPI_Datatype scalar, const char* where) {
    check_mpi(MPI_Type_contiguous(static_cast<int>(cols), scalar, &type_), where, "MPI_Type_contiguous");
    check_mpi(MPI_Type_commit(&type_), where, "MPI_Type_commit");
  }
  RowType(const RowType&) = delete;
  RowType& operator=(const RowType&) = delete;
  ~RowType() { MPI_Type_free(&type_); }
  [[nodiscard]] MPI_Datatype get() const noexcept { return type_; }

 private:
  MPI_Datatype type_ = MPI_DATATYPE_NULL;
};

template <class T>
struct is_expert_slice : std::false_type {};
template <class Bank>
struct is_expert_slice<ExpertSlice<Bank>> : std::true_type {};

/// What the owner keeps from a training forward for its backward: the rows it ran, their
/// hidden rows and the exchange's counts. One per workspace (keyed by the workspace's plan).
template <class S>
struct Saved {
  std::vector<std::int64_t> sent;      ///< this rank's rows per expert of the forward [E]
  std::vector<std::int64_t> received;  ///< rows per (source rank, owned expert) [P * local]
  DispatchPlan<S> plan;                ///< the owned experts' slabs, expert-major, sources in rank order
  RowMatrix<S> x;
  RowMatrix<S> hidden;
};

}  // namespace impl

/// The expert-parallel executor: MoELayer's Executor when the bank is an ExpertSlice.
///
/// Every rank of the communicator holds an ExpertSlice of the experts ExpertPartition gives
/// it (contiguous blocks) and a replica of the router and the combiner; each routes, plans,
/// gathers and combines its own batch. Step 4 (forward):
///
/// 1. counts: one MPI_Alltoall of, per destination rank q, an error flag and the number of
///    this rank's rows for each expert q owns (plan.count(e)); a flag set by any rank (a rank
///    whose call failed before the exchange: MoELayer's checks, signal_failure()) makes every
///    rank throw here, so no rank waits in a later collective;
/// 2. rows: one MPI_Alltoallw of x_perm: the rows for rank q are one contiguous range of
///    x_perm, expert-major, and the owner's datatype for source s scatters them straight into
///    its expert-major slabs, the sources in rank order inside an expert (the rows the
///    single-process layer's slab holds for the concatenation of the ranks' batches in rank
///    order), with no reorder copy;
/// 3. the owner runs its experts with LocalExecutor on those slabs, the same tasks the single
///    process runs: bit for bit the same rows, any thread count;
/// 4. one MPI_Allgather of a flag per rank: an exception while the experts ran (on any rank)
///    becomes an exception on every rank;
/// 5. one MPI_Alltoallw of the output rows from the slabs back into y_perm, where they left.
///
/// backward: the same counts exchange (the forward's counts, checked), dy_perm rows to the
/// owners, the bank's backward on the owner (gradients of owned experts accumulate in the
/// gradient's ExpertSlice, one task per expert as LocalExecutor), the flag, dx_perm rows back.
/// Every rank makes every collective call of a step, also with zero tokens.
///
/// The owner keeps the rows of its experts from each workspace's last forward (keyed by the
/// workspace) until the next forward on that workspace: backward reads them. The executor
/// runs on its own duplicate of the caller's communicator (MPI_Comm_dup), with errors
/// returned rather than fatal, so its collectives never match the caller's.
///
/// Calls are serialised by a mutex, and must be made in the same order on every rank (a
/// layer shared by threads that run forward in different orders on different ranks would
/// pair the wrong calls). Copies share the state, as the layers built from one executor do.
/// Construction and destruction are collective (MPI_Comm_dup, MPI_Comm_free).
class MpiExpertExecutor {
 public:
  /// E experts over the ranks of comm (contiguous blocks). Collective over comm.
  /// `scope` decides how a bounded Capacity counts (CapacityScope); every rank must pass the
  /// same (expert_parallel_layer checks).
  MpiExpertExecutor(MPI_Comm comm, Index num_experts, CapacityScope scope = CapacityScope::per_rank)
      : state_(std::make_shared<State>(comm, num_experts, scope)) {}

  [[nodiscard]] CapacityScope capacity_scope() const noexcept { return state_->scope; }

  [[nodiscard]] const ExpertPartition& partition() const noexcept { return state_->partition; }
  [[nodiscard]] Index rank() const noexcept { return state_->rank; }
  [[nodiscard]] Index num_ranks() const noexcept { return state_->size; }
  /// The executor's own communicator (a duplicate of the caller's).
  [[nodiscard]] MPI_Comm communicator() const noexcept { return state_->comm; }
  /// This rank's exchanges in the last call (forward or backward) and since construction.
  [[nodiscard]] ExchangeStatistics last_call() const {
    const std::lock_guard<std::mutex> lock(state_->mutex);
    return state_->last;
  }
  [[nodiscard]] ExchangeStatistics totals() const {
    const std::lock_guard<std::mutex> lock(state_->mutex);
    return state_->totals;
  }
  /// Counts exchanges completed (successful or not): moe::parallel::forward / backward read
  /// it to tell whether a failed call reached the exchange.
  [[nodiscard]] std::uint64_t exchanges() const {
    const std::lock_guard<std::mutex> lock(state_->mutex);
    return state_->exchanges;
  }

  /// Whether this rank owes the other ranks a collective of the current call: under
  /// CapacityScope::global, plan() has run and the forward's counts exchange has not yet.
  [[nodiscard]] bool exchange_owed() const {
    const std::lock_guard<std::mutex> lock(state_->mutex);
    return state_->planned;
  }

  /// The failing rank's side of a call that threw before reaching its next collective: joins
  /// the collective the other ranks are in (the counts exchange; under CapacityScope::global,
  /// the planning exchange first when `in_forward` and plan() has not run) with the error flag
  /// set, so that they throw instead of waiting. moe::parallel::forward and backward call it.
  void signal_failure(bool in_forward = true) const {
    State& st = *state_;
    const std::lock_guard<std::mutex> lock(st.mutex);
    if (st.scope == CapacityScope::global && in_forward && !st.planned) {
      std::array<std::int64_t, State::header_fields> head{};
      head[State::h_failed] = 1;
      std::vector<std::int64_t> all;
      st.allgather_header(head, all, "MpiExpertExecutor::signal_failure()");
      return;
    }
    st.planned = false;
    std::vector<std::int64_t> send(static_cast<std::size_t>(st.size * st.block), 0), recv(send.size());
    for (Index q = 0; q < st.size; ++q) send[static_cast<std::size_t>(q * st.block)] = 1;
    st.alltoall_counts(send, recv, "MpiExpertExecutor::signal_failure()");
  }

  /// Step 2 when the executor decides it (MoELayer calls it before build_plan): under
  /// CapacityScope::per_rank returns false and the layer plans as in one process; under
  /// CapacityScope::global builds `plan` for this rank's routing with the capacity over all
  /// ranks' tokens and returns true. Collective under global: every rank's forward calls it
  /// (the ranks' capacities must agree; an error on one rank, or a disagreement, throws on
  /// every rank). Overflow rerouting is not offered under global scope.
  template <class S>
  bool plan(const RoutingResult<S>& routing, DispatchPlan<S>& plan, const Capacity& capacity) const {
    State& st = *state_;
    if (st.scope != CapacityScope::global) return false;
    constexpr const char* where = "MpiExpertExecutor::plan()";
    const std::lock_guard<std::mutex> lock(st.mutex);
    st.mpi_seconds = 0;
    st.plan_bytes = 0;
    const Index E = st.partition.num_experts(), n = routing.size();
    std::string error;
    std::vector<Index> choice;  // each assignment's place among its token's (its "rank" j)
    Index J = 0;
    std::array<std::int64_t, State::header_fields> head{};
    try {
      capacity.validate();
      if (capacity.reroute != 0)
        detail::throw_invalid(where, "Capacity::reroute under CapacityScope::global", "0 (rerouting is per rank)",
                              capacity.reroute);
      detail::require(routing.num_experts == E, where, "the routing's num_experts", E, routing.num_experts);
      choice.resize(static_cast<std::size_t>(n));
      std::vector<Index> seen(static_cast<std::size_t>(routing.num_tokens), 0);
      for (Index i = 0; i < n; ++i) {
        const Index t = routing.token[static_cast<std::size_t>(i)], e = routing.expert[static_cast<std::size_t>(i)];
        if (t < 0 || t >= routing.num_tokens)
          detail::throw_invalid(where, "token index in [0, num_tokens)", detail::concat("[0, ", routing.num_tokens, ")"), t);
        if (e < 0 || e >= E)
          detail::throw_invalid(where, "expert index in [0, num_experts)", detail::concat("[0, ", E, ")"), e);
        choice[static_cast<std::size_t>(i)] = seen[static_cast<std::size_t>(t)]++;
        J = std::max(J, choice[static_cast<std::size_t>(i)] + 1);
      }
      head[State::h_kind] = 1;
      head[State::h_capacity_kind] = static_cast<std::int64_t>(capacity.kind);
      head[State::h_capacity_value] = impl::capacity_bits(capacity);
      head[State::h_priority] = static_cast<std::int64_t>(capacity.priority);
      head[State::h_assignments] = n;
      head[State::h_tokens] = routing.num_tokens;
      head[State::h_choices] = J;
    } catch (const std::exception& e) {
      error = e.what();
      head[State::h_failed] = 1;
    }
    std::vector<std::int64_t> all;
    st.allgather_header(head, all, where);
    st.check_header(all, error, where);

    // Every rank now holds the same table: the capacity over all ranks' assignments.
    const auto at = [&](Index q, std::size_t f) { return all[static_cast<std::size_t>(q) * State::header_fields + f]; };
    Index n_total = 0, T_before = 0, n_before = 0, J_max = 0;
    for (Index q = 0; q < st.size; ++q) {
      if (q < st.rank) T_before += at(q, State::h_tokens), n_before += at(q, State::h_assignments);
      n_total += at(q, State::h_assignments);
      J_max = std::max<Index>(J_max, at(q, State::h_choices));
    }
    const Index C = capacity.slots(n_total, E);
    std::vector<std::uint8_t> kept(static_cast<std::size_t>(n), 1);
    if (C >= 0 && capacity.priority == Priority::position) {
      st.position_kept(routing, choice, J_max, C, kept, where);
    } else if (C >= 0) {
      st.prioritized_kept(routing, capacity, all, n_total, T_before, n_before, J_max, kept, where);
    }
    build_plan_from_kept(routing, plan, C, std::span<const std::uint8_t>(kept));
    st.planned = true;
    return true;
  }

  template <class Arch = xsimd::default_arch, class ExpertType, class S>
  void forward(const ExpertType& experts, const ExpertStep<S>& step) const {
    static_assert(impl::is_expert_slice<ExpertType>::value,
                  "MpiExpertExecutor: the layer's ExpertType must be moe::parallel::ExpertSlice<Bank> (a rank holds "
                  "its block of the experts; docs/expert_parallel.md)");
    constexpr const char* where = "MpiExpertExecutor::forward()";
    State& st = *state_;
    const std::lock_guard<std::mutex> lock(st.mutex);
    const DispatchPlan<S>& plan = step.plan;
    std::string error = st.check_bank(experts, plan.num_experts, where);
    impl::Saved<S>& saved = st.template saved<S>(&plan);
    const Index d = experts.input_dim(), d_out = experts.output_dim(), hc = experts.hidden_cols();
    State::check_rows(error, step.x_perm, plan.rows(), d, where, "x_perm");
    State::check_rows(error, step.y_perm, plan.rows(), d_out, where, "y_perm");

    ExchangeStatistics stats{};
    if (!st.planned) {
      st.mpi_seconds = 0;
      st.plan_bytes = 0;
      // Under global scope every forward starts with the planning exchange; a forward whose
      // plan did not come from plan() (a dense router, a replayed routing tape) joins it with
      // "no plan", which every rank must then say too.
      if (st.scope == CapacityScope::global) {
        std::array<std::int64_t, State::header_fields> head{};
        std::vector<std::int64_t> all;
        st.allgather_header(head, all, where);
        st.check_header(all, {}, where);
      }
    }
    st.planned = false;
    std::vector<std::int64_t> recv;
    st.exchange_counts(plan, error, where, stats, recv);
    stats.count_bytes += st.plan_bytes;

    // The exchange's layout: this rank's rows per destination, the rows per (source, owned expert).
    saved.sent.assign(static_cast<std::size_t>(plan.num_experts), 0);
    for (Index e = 0; e < plan.num_experts; ++e) saved.sent[static_cast<std::size_t>(e)] = plan.count(e);
    st.unpack_counts(recv, saved.received);
    Layout layout = st.layout(plan, saved.received, where);
    st.local_plan(saved.received, saved.plan);
    const Index rows = saved.plan.rows();

    // Rows to the owners, straight into the expert-major slabs (sources in rank order).
    detail::ensure_shape(saved.x, rows, d);
    st.exchange_slabs(/*to_slabs=*/true, const_cast<S*>(step.x_perm.data()), saved.x.data(), d, impl::mpi_scalar<S>(), saved.received,
                      layout, saved.plan, where);
    stats += st.row_statistics(layout, d * static_cast<Index>(sizeof(S)), /*back=*/false);

    // The owned experts, as LocalExecutor runs them in one process.
    detail::ensure_shape(saved.hidden, rows, hc);
    RowMatrix<S>& y_local = st.template buffer<S>(0);
    detail::ensure_shape(y_local, rows, d_out);
    try {
      const impl::ScopeTimer timer(stats.expert_seconds);
      LocalExecutor{}.template forward<Arch>(
          experts.local(), ExpertStep<S>{saved.plan, saved.x, saved.hidden, y_local, saved.x, step.context, nullptr});
    } catch (const std::exception& e) {
      error = e.what();
    } catch (...) {
      error = detail::concat(where, ": the experts expected to run, got an exception that is not a std::exception");
    }
    st.agree(error, where, "while the experts ran");

    // Outputs back from the slabs, into the rows they came from.
    {
      MatrixRef<S> y_perm = step.y_perm;
      st.exchange_slabs(/*to_slabs=*/false, y_perm.data(), y_local.data(), d_out, impl::mpi_scalar<S>(), saved.received,
                        layout, saved.plan, where);
    }
    stats += st.row_statistics(layout, d_out * static_cast<Index>(sizeof(S)), /*back=*/true);
    stats.mpi_seconds = st.mpi_seconds;
    st.last = stats;
    st.totals += stats;
  }

  template <class Arch = xsimd::default_arch, class ExpertType, class S>
  void backward(const ExpertType& experts, const ExpertStepBackward<S>& step, ExpertType& grad) const {
    static_assert(impl::is_expert_slice<ExpertType>::value,
                  "MpiExpertExecutor: the layer's ExpertType must be moe::parallel::ExpertSlice<Bank> (a rank holds "
                  "its block of the experts; docs/expert_parallel.md)");
    constexpr const char* where = "MpiExpertExecutor::backward()";
    State& st = *state_;
    const std::lock_guard<std::mutex> lock(st.mutex);
    const DispatchPlan<S>& plan = step.plan;
    std::string error = st.check_bank(experts, plan.num_experts, where);
    impl::Saved<S>* saved = st.template find_saved<S>(&plan);
    if (error.empty() && saved == nullptr)
      error = detail::concat(where, ": this workspace's forward on this executor expected, got none (run forward "
                                    "in Mode::training on the same workspace first)");
    if (error.empty()) {
      for (Index e = 0; e < plan.num_experts && error.empty(); ++e)
        if (saved->sent[static_cast<std::size_t>(e)] != plan.count(e))
          error = detail::concat(where, ": rows of expert ", e, " (as in the forward) expected ",
                                 saved->sent[static_cast<std::size_t>(e)], ", got ", plan.count(e));
    }
    if (error.empty() && grad.local_count() != experts.local_count())
      error = detail::concat(where, ": the gradient's local experts expected ", experts.local_count(), ", got ",
                             grad.local_count());
    const Index d = experts.input_dim(), d_out = experts.output_dim();
    State::check_rows(error, step.dy_perm, plan.rows(), d_out, where, "dy_perm");
    State::check_rows(error, step.dx_perm, plan.rows(), d, where, "dx_perm");

    ExchangeStatistics stats{};
    st.mpi_seconds = 0;
    st.planned = false;
    std::vector<std::int64_t> recv;
    st.exchange_counts(plan, error, where, stats, recv);
    std::vector<std::int64_t> received;
    st.unpack_counts(recv, received);
    if (received != saved->received)  // cannot happen when every sender checked its own counts
      error = detail::concat(where, ": the rows received (as in the forward) expected the forward's counts, got others");
    Layout layout = st.layout(plan, saved->received, where);
    const Index rows = saved->plan.rows();

    RowMatrix<S>& dy_local = st.template buffer<S>(0);
    detail::ensure_shape(dy_local, rows, d_out);
    st.exchange_slabs(/*to_slabs=*/true, const_cast<S*>(step.dy_perm.data()), dy_local.data(), d_out, impl::mpi_scalar<S>(),
                      saved->received, layout, saved->plan, where);
    stats += st.row_statistics(layout, d_out * static_cast<Index>(sizeof(S)), /*back=*/false);

    RowMatrix<S>& dx_local = st.template buffer<S>(1);
    RowMatrix<S>& dhidden = st.template buffer<S>(2);
    detail::ensure_shape(dx_local, rows, d);
    detail::ensure_shape(dhidden, rows, experts.hidden_cols());
    if (error.empty()) {
      try {
        const impl::ScopeTimer timer(stats.expert_seconds);
        LocalExecutor{}.template backward<Arch>(
            experts.local(),
            ExpertStepBackward<S>{saved->plan, saved->x, saved->hidden, dy_local, dx_local, dhidden, saved->x,
                                  step.context, nullptr, nullptr},
            grad.local());
      } catch (const std::exception& e) {
        error = e.what();
      } catch (...) {
        error = detail::concat(where, ": the experts expected to run, got an exception that is not a std::exception");
      }
    }
    st.agree(error, where, "while the experts ran");

    {
      MatrixRef<S> dx_perm = step.dx_perm;
      st.exchange_slabs(/*to_slabs=*/false, dx_perm.data(), dx_local.data(), d, impl::mpi_scalar<S>(), saved->received,
                        layout, saved->plan, where);
    }
    stats += st.row_statistics(layout, d * static_cast<Index>(sizeof(S)), /*back=*/true);
    stats.mpi_seconds = st.mpi_seconds;
    st.last = stats;
    st.totals += stats;
  }

 private:
  /// Per-rank row counts and displacements of one call's row exchanges (MPI's int counts).
  struct Layout {
    std::vector<int> send_rows, send_displ, recv_rows;
    Index self = 0;  // this rank's index, for the statistics
  };

  struct State {
    State(MPI_Comm parent, Index num_experts, CapacityScope scope_) : partition(num_experts, comm_size(parent)), scope(scope_) {
      constexpr const char* where = "MpiExpertExecutor::MpiExpertExecutor()";
      impl::check_mpi(MPI_Comm_dup(parent, &comm), where, "MPI_Comm_dup");
      MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
      int r = 0, p = 0;
      MPI_Comm_rank(comm, &r);
      MPI_Comm_size(comm, &p);
      rank = r;
      size = p;
      first = partition.first(rank);
      count = partition.count(rank);
      block = 1 + partition.max_count();
    }
    State(const State&) = delete;
    State& operator=(const State&) = delete;
    ~State() {
      int finalized = 0;
      MPI_Finalized(&finalized);
      if (!finalized && comm != MPI_COMM_NULL) MPI_Comm_free(&comm);
    }

    static Index comm_size(MPI_Comm c) {
      int p = 0;
      impl::check_mpi(MPI_Comm_size(c, &p), "MpiExpertExecutor::MpiExpertExecutor()", "MPI_Comm_size");
      return p;
    }

    template <class ExpertType>
    std::string check_bank(const ExpertType& experts, Index plan_experts, const char* where) const {
      if (experts.num_experts() != partition.num_experts())
        return detail::concat(where, ": the bank's num_experts (= the partition's) expected ", partition.num_experts(),
                              ", got ", experts.num_experts());
      if (experts.first() != first || experts.local_count() != count)
        return detail::concat(where, ": the bank's expert block (rank ", rank, "'s) expected [", first, ", ",
                              first + count, "), got [", experts.first(), ", ", experts.first() + experts.local_count(),
                              ")");
      if (plan_experts != partition.num_experts())
        return detail::concat(where, ": the plan's num_experts expected ", partition.num_experts(), ", got ", plan_experts);
      return {};
    }

    /// The row exchanges send a buffer as rows of one contiguous datatype: no gaps between rows.
    template <class M>
    static void check_rows(std::string& error, const M& m, Index rows, Index cols, const char* where, const char* what) {
      if (!error.empty()) return;
      if (m.rows() != rows || m.cols() != cols)
        error = detail::concat(where, ": ", what, " expected shape [", rows, ", ", cols, "], got [", m.rows(), ", ",
                               m.cols(), "]");
      else if (m.rows() > 1 && m.outerStride() != m.cols())
        error = detail::concat(where, ": ", what, " expected contiguous rows (outer stride ", m.cols(), "), got outer stride ",
                               m.outerStride());
    }

    template <class S>
    void pack_counts(const DispatchPlan<S>& plan, bool ok, std::vector<std::int64_t>& send) const {
      send.assign(static_cast<std::size_t>(size * block), 0);
      for (Index q = 0; q < size; ++q) {
        std::int64_t* b = send.data() + q * block;
        b[0] = ok ? 0 : 1;
        if (!ok) continue;
        for (Index j = 0; j < partition.count(q); ++j) b[1 + j] = plan.count(partition.first(q) + j);
      }
    }

    void alltoall_counts(std::vector<std::int64_t>& send, std::vector<std::int64_t>& recv, const char* where) {
      recv.assign(static_cast<std::size_t>(size * block), 0);
      const impl::ScopeTimer timer(mpi_seconds);
      const int rc = MPI_Alltoall(send.data(), static_cast<int>(block), MPI_INT64_T, recv.data(),
                                  static_cast<int>(block), MPI_INT64_T, comm);
      ++exchanges;
      impl::check_mpi(rc, where, "MPI_Alltoall (counts)");
    }
    /// The first step of a forward or a backward: every rank's counts per (rank, expert) and
    /// error flag, exchanged; throws on every rank, with the same message, if any rank's
    /// `error` is set. Counts the call and its count bytes into stats.
    template <class S>
    void exchange_counts(const DispatchPlan<S>& plan, const std::string& error, const char* where,
                         ExchangeStatistics& stats, std::vector<std::int64_t>& recv) {
      std::vector<std::int64_t> send;
      stats.calls = 1;
      pack_counts(plan, error.empty(), send);
      alltoall_counts(send, recv, where);
      stats.count_bytes = count_bytes();
      throw_on_flags(recv, error, where, "before the exchange");
    }

    /// The planning exchange under CapacityScope::global: one record per rank, gathered.
    enum HeaderField : std::size_t { h_failed, h_kind, h_capacity_kind, h_capacity_value, h_priority, h_assignments,
                                     h_tokens, h_choices, header_fields };

    void allgather_header(const std::array<std::int64_t, header_fields>& head, std::vector<std::int64_t>& all,
                          const char* where) {
      all.assign(static_cast<std::size_t>(size) * header_fields, 0);
      const impl::ScopeTimer timer(mpi_seconds);
      const int rc = MPI_Allgather(head.data(), static_cast<int>(header_fields), MPI_INT64_T, all.data(),
                                   static_cast<int>(header_fields), MPI_INT64_T, comm);
      ++exchanges;
      impl::check_mpi(rc, where, "MPI_Allgather (planning)");
      plan_bytes += static_cast<std::uint64_t>(size - 1) * header_fields * sizeof(std::int64_t);
    }

    /// Throws on every rank when a rank failed before planning, or when the ranks' records
    /// disagree on whether this forward plans, on the capacity or on its priority.
    void check_header(const std::vector<std::int64_t>& all, const std::string& own, const char* where) const {
      const auto at = [&](Index q, std::size_t f) { return all[static_cast<std::size_t>(q) * header_fields + f]; };
      for (Index q = 0; q < size; ++q) {
        if (at(q, h_failed) == 0) continue;
        if (!own.empty()) throw std::runtime_error(own);
        throw std::runtime_error(detail::concat(where, ": every rank's forward expected to reach the planning exchange, got "
                                                "rank ", q, " failed before it (its own exception says why)"));
      }
      static constexpr std::array<const char*, 5> names = {"", "a plan from MpiExpertExecutor::plan() (1) or none (0)",
                                                           "capacity kind", "capacity (factor bits, or slots)",
                                                           "capacity priority"};
      for (std::size_t f = h_kind; f <= h_priority; ++f)
        for (Index q = 1; q < size; ++q)
          if (at(q, f) != at(0, f))
            detail::throw_invalid(where, detail::concat(names[f], " on every rank (CapacityScope::global)"),
                                  detail::concat(at(0, f), " (rank 0's)"), detail::concat(at(q, f), " on rank ", q));
    }

    /// Priority::position over the concatenation: assignments are served by (choice j, token
    /// of the concatenation), so rank r's j-th choices of expert e come after every rank's
    /// earlier choices of e and after lower ranks' j-th choices of e. From the gathered counts
    /// per (j, e), each rank finds where its own assignments fall and keeps the first C of e.
    template <class S>
    void position_kept(const RoutingResult<S>& routing, const std::vector<Index>& choice, Index J, Index C,
                       std::vector<std::uint8_t>& kept, const char* where) {
      const Index E = partition.num_experts(), n = routing.size();
      const auto cells = static_cast<std::size_t>(J * E);
      detail::require(J * E <= INT_MAX, where, "choices x experts of the planning exchange", "at most INT_MAX", J * E);
      std::vector<std::int64_t> mine(cells, 0), all(cells * static_cast<std::size_t>(size), 0);
      for (Index i = 0; i < n; ++i)
        ++mine[static_cast<std::size_t>(choice[static_cast<std::size_t>(i)] * E + routing.expert[static_cast<std::size_t>(i)])];
      {
        const impl::ScopeTimer timer(mpi_seconds);
        impl::check_mpi(MPI_Allgather(mine.data(), static_cast<int>(cells), MPI_INT64_T, all.data(),
                                      static_cast<int>(cells), MPI_INT64_T, comm),
                        where, "MPI_Allgather (counts per choice and expert)");
      }
      plan_bytes += static_cast<std::uint64_t>(size - 1) * cells * sizeof(std::int64_t);
      // base[j E + e]: assignments of e served before this rank's j-th choices.
      std::vector<std::int64_t> base(cells, 0);
      for (std::size_t e = 0; e < static_cast<std::size_t>(E); ++e) {
        std::int64_t before = 0;  // every rank's choices j' < j of e
        for (std::size_t j = 0; j < static_cast<std::size_t>(J); ++j) {
          const std::size_t c = j * static_cast<std::size_t>(E) + e;
          std::int64_t lower = 0, total = 0;
          for (Index q = 0; q < size; ++q) {
            const std::int64_t v = all[static_cast<std::size_t>(q) * cells + c];
            total += v;
            if (q < rank) lower += v;
          }
          base[c] = before + lower;
          before += total;
        }
      }
      // This rank's own serving order: (choice, token, assignment).
      std::vector<Index> order(static_cast<std::size_t>(n));
      for (Index i = 0; i < n; ++i) order[static_cast<std::size_t>(i)] = i;
      std::sort(order.begin(), order.end(), [&](Index a, Index b) {
        const auto au = static_cast<std::size_t>(a), bu = static_cast<std::size_t>(b);
        if (choice[au] != choice[bu]) return choice[au] < choice[bu];
        if (routing.token[au] != routing.token[bu]) return routing.token[au] < routing.token[bu];
        return a < b;
      });
      for (const Index i : order) {
        const auto iu = static_cast<std::size_t>(i);
        const std::size_t c = static_cast<std::size_t>(choice[iu] * E + routing.expert[iu]);
        kept[iu] = base[c]++ < C ? 1 : 0;
      }
    }

    /// Priority::batch_prioritized over the concatenation: the order depends on every token's
    /// score, so every rank gathers every assignment's (token, expert, gate), rebuilds the
    /// concatenation's routing and serves it as build_plan does in one process.
    template <class S>
    void prioritized_kept(const RoutingResult<S>& routing, const Capacity& capacity, const std::vector<std::int64_t>& head,
                          Index n_total, Index T_before, Index n_before, Index J, std::vector<std::uint8_t>& kept,
                          const char* where) {
      const Index E = partition.num_experts(), n = routing.size();
      detail::require(3 * n_total <= INT_MAX, where, "3 x assignments of all ranks (planning exchange)",
                      "at most INT_MAX", 3 * n_total);
      std::vector<std::int64_t> mine(static_cast<std::size_t>(3 * n)), all(static_cast<std::size_t>(3 * n_total));
      for (Index i = 0; i < n; ++i) {
        const auto iu = static_cast<std::size_t>(i);
        mine[3 * iu] = routing.token[iu] + T_before;
        mine[3 * iu + 1] = routing.expert[iu];
        mine[3 * iu + 2] = std::bit_cast<std::int64_t>(static_cast<double>(routing.gate[iu]));  // exact for float
      }
      std::vector<int> counts(static_cast<std::size_t>(size)), displs(static_cast<std::size_t>(size));
      Index T_total = 0;
      for (Index q = 0, off = 0; q < size; ++q) {
        const std::int64_t nq = head[static_cast<std::size_t>(q) * header_fields + h_assignments];
        counts[static_cast<std::size_t>(q)] = static_cast<int>(3 * nq);
        displs[static_cast<std::size_t>(q)] = static_cast<int>(off);
        off += 3 * nq;
        T_total += head[static_cast<std::size_t>(q) * header_fields + h_tokens];
      }
      {
        static std::int64_t dummy = 0;
        const impl::ScopeTimer timer(mpi_seconds);
        impl::check_mpi(MPI_Allgatherv(mine.empty() ? &dummy : mine.data(), static_cast<int>(3 * n), MPI_INT64_T,
                                       all.empty() ? &dummy : all.data(), counts.data(), displs.data(), MPI_INT64_T, comm),
                        where, "MPI_Allgatherv (assignments)");
      }
      plan_bytes += static_cast<std::uint64_t>(size - 1) * mine.size() * sizeof(std::int64_t);
      RoutingResult<S> whole;
      whole.reset(T_total, E, n_total, J);
      for (std::size_t i = 0; i < static_cast<std::size_t>(n_total); ++i) {
        whole.token[i] = all[3 * i];
        whole.expert[i] = all[3 * i + 1];
        whole.gate[i] = static_cast<S>(std::bit_cast<double>(all[3 * i + 2]));
      }
      DispatchPlan<S> served;
      build_plan(whole, served, capacity);
      for (Index i = 0; i < n; ++i) kept[static_cast<std::size_t>(i)] = served.kept(n_before + i) ? 1 : 0;
    }

    [[nodiscard]] std::uint64_t count_bytes() const {
      return static_cast<std::uint64_t>((size - 1) * block) * sizeof(std::int64_t);
    }

    /// Throws on every rank when any rank's flag is set: this rank's own message when it is
    /// one of them, else one naming the first failing rank.
    void throw_on_flags(const std::vector<std::int64_t>& recv, const std::string& own, const char* where,
                        const char* when) const {
      Index failed = -1;
      for (Index s = 0; s < size && failed < 0; ++s)
        if (recv[static_cast<std::size_t>(s * block)] != 0) failed = s;
      if (failed < 0) return;
      if (!own.empty()) throw std::runtime_error(own);
      throw std::runtime_error(detail::concat(where, ": every rank's call expected to reach the exchange, got rank ",
                                              failed, " failed ", when, " (its own exception says why)"));
    }

    /// An MPI_Allgather of one flag per rank: every rank throws when any rank's error is set.
    void agree(const std::string& error, const char* where, const char* when) {
      int mine = error.empty() ? 0 : 1;
      std::vector<int> all(static_cast<std::size_t>(size), 0);
      {
        const impl::ScopeTimer timer(mpi_seconds);
        impl::check_mpi(MPI_Allgather(&mine, 1, MPI_INT, all.data(), 1, MPI_INT, comm), where, "MPI_Allgather (flags)");
      }
      if (!error.empty()) throw std::runtime_error(error);
      for (Index s = 0; s < size; ++s)
        if (all[static_cast<std::size_t>(s)] != 0)
          throw std::runtime_error(detail::concat(where, ": every rank's experts expected to run, got rank ", s,
                                                  " failed ", when, " (its own exception says why)"));
    }

    void unpack_counts(const std::vector<std::int64_t>& recv, std::vector<std::int64_t>& received) const {
      received.assign(static_cast<std::size_t>(size * count), 0);
      for (Index s = 0; s < size; ++s)
        for (Index j = 0; j < count; ++j)
          received[static_cast<std::size_t>(s * count + j)] = recv[static_cast<std::size_t>(s * block + 1 + j)];
    }

    template <class S>
    Layout layout(const DispatchPlan<S>& plan, const std::vector<std::int64_t>& received, const char* where) const {
      Layout l;
      l.self = rank;
      const auto P = static_cast<std::size_t>(size);
      l.send_rows.resize(P), l.send_displ.resize(P), l.recv_rows.resize(P);
      const auto as_int = [&](Index v, const char* what) {
        detail::require(v >= 0 && v <= INT_MAX, where, what, "at most INT_MAX rows", v);
        return static_cast<int>(v);
      };
      for (Index q = 0; q < size; ++q) {
        // offsets has E + 1 entries: begin(E) is the end of the last expert's rows.
        const Index b = plan.begin(partition.first(q)), e = plan.begin(partition.first(q + 1));
        l.send_displ[static_cast<std::size_t>(q)] = as_int(b, "rows sent (displacement)");
        l.send_rows[static_cast<std::size_t>(q)] = as_int(e - b, "rows sent");
      }
      for (Index s = 0; s < size; ++s) {
        Index n = 0;
        for (Index j = 0; j < count; ++j) n += received[static_cast<std::size_t>(s * count + j)];
        l.recv_rows[static_cast<std::size_t>(s)] = as_int(n, "rows received");
      }
      return l;
    }

    /// The owned experts' slabs: expert j's rows from every source, sources in rank order.
    template <class S>
    void local_plan(const std::vector<std::int64_t>& received, DispatchPlan<S>& plan) const {
      plan.num_experts = count;
      plan.capacity = -1;
      plan.offsets.assign(static_cast<std::size_t>(count) + 1, 0);
      for (Index j = 0; j < count; ++j) {
        Index n = 0;
        for (Index s = 0; s < size; ++s) n += received[static_cast<std::size_t>(s * count + j)];
        plan.offsets[static_cast<std::size_t>(j) + 1] = plan.offsets[static_cast<std::size_t>(j)] + n;
      }
      plan.num_tokens = plan.rows();
    }

    /// One row exchange between the senders' flat buffers (x_perm, y_perm, ...: the rows for
    /// rank q one contiguous range, expert-major) and the owner's expert-major slabs (expert
    /// j's rows from every source, sources in rank order): an MPI_Alltoallw whose datatype for
    /// a source scatters its rows into the slabs (one block per owned expert), so the rows
    /// land where the experts read them, with no reorder copy. to_slabs: flat -> slabs (x, dy);
    /// else slabs -> flat (y, dx), the same rows back. Byte offsets live in the datatypes
    /// (MPI_Aint), so buffers past 2 GiB are fine.
    template <class T>
    void exchange_slabs(bool to_slabs, T* flat, T* slabs, Index cols, MPI_Datatype scalar,
                        const std::vector<std::int64_t>& received, const Layout& l, const DispatchPlan<T>& plan,
                        const char* where) {
      const impl::RowType row(cols, scalar, where);
      const auto row_bytes = static_cast<MPI_Aint>(cols) * static_cast<MPI_Aint>(sizeof(T));
      const auto P = static_cast<std::size_t>(size);
      std::vector<MPI_Datatype> flat_types(P, MPI_DATATYPE_NULL), slab_types(P, MPI_DATATYPE_NULL);
      std::vector<int> flat_counts(P, 0), slab_counts(P, 0), zero(P, 0);
      const auto free_types = [&] {
        for (auto* types : {&flat_types, &slab_types})
          for (MPI_Datatype& t : *types)
            if (t != MPI_DATATYPE_NULL) MPI_Type_free(&t);
      };
      const auto commit = [&](MPI_Datatype& t) {
        const int rc = MPI_Type_commit(&t);
        if (rc != MPI_SUCCESS) free_types();
        impl::check_mpi(rc, where, "MPI_Type_commit");
      };
      std::vector<int> lengths(static_cast<std::size_t>(count));
      std::vector<MPI_Aint> displs(static_cast<std::size_t>(count));
      std::vector<Index> into(static_cast<std::size_t>(count));
      for (Index j = 0; j < count; ++j) into[static_cast<std::size_t>(j)] = plan.begin(j);
      for (std::size_t q = 0; q < P; ++q) {
        // The flat side: one block of this rank's rows for q (or, back, from q).
        MPI_Aint at = static_cast<MPI_Aint>(l.send_displ[q]) * row_bytes;
        int one = l.send_rows[q];
        int rc = MPI_Type_create_hindexed(1, &one, &at, row.get(), &flat_types[q]);
        if (rc != MPI_SUCCESS) free_types();
        impl::check_mpi(rc, where, "MPI_Type_create_hindexed (rows)");
        commit(flat_types[q]);
        flat_counts[q] = one > 0 ? 1 : 0;
        // The slab side: source q's rows of owned expert j at into[j], j = 0 .. count - 1.
        int total = 0;
        for (Index j = 0; j < count; ++j) {
          const auto ju = static_cast<std::size_t>(j);
          const Index n = received[q * static_cast<std::size_t>(count) + ju];
          lengths[ju] = static_cast<int>(n);
          displs[ju] = static_cast<MPI_Aint>(into[ju]) * row_bytes;
          into[ju] += n;
          total += lengths[ju];
        }
        rc = MPI_Type_create_hindexed(static_cast<int>(count), lengths.data(), displs.data(), row.get(), &slab_types[q]);
        if (rc != MPI_SUCCESS) free_types();
        impl::check_mpi(rc, where, "MPI_Type_create_hindexed (slabs)");
        commit(slab_types[q]);
        slab_counts[q] = total > 0 ? 1 : 0;
      }
      static T dummy{};
      int rc = MPI_SUCCESS;
      {
        const impl::ScopeTimer timer(mpi_seconds);
        if (to_slabs)
          rc = MPI_Alltoallw(flat != nullptr ? flat : &dummy, flat_counts.data(), zero.data(), flat_types.data(),
                             slabs != nullptr ? slabs : &dummy, slab_counts.data(), zero.data(), slab_types.data(), comm);
        else
          rc = MPI_Alltoallw(slabs != nullptr ? slabs : &dummy, slab_counts.data(), zero.data(), slab_types.data(),
                             flat != nullptr ? flat : &dummy, flat_counts.data(), zero.data(), flat_types.data(), comm);
      }
      free_types();
      impl::check_mpi(rc, where, "MPI_Alltoallw (rows)");
    }

    /// Rows to other ranks in one row exchange: out to the owners, or (back) from them.
    [[nodiscard]] ExchangeStatistics row_statistics(const Layout& l, Index row_bytes, bool back) const {
      ExchangeStatistics s{};
      for (Index q = 0; q < size; ++q) {
        if (q == rank) continue;
        const auto out = static_cast<std::uint64_t>(l.send_rows[static_cast<std::size_t>(q)]);
        const auto in = static_cast<std::uint64_t>(l.recv_rows[static_cast<std::size_t>(q)]);
        s.rows_sent += back ? in : out;
        s.rows_received += back ? out : in;
      }
      s.bytes_sent = s.rows_sent * static_cast<std::uint64_t>(row_bytes);
      s.bytes_received = s.rows_received * static_cast<std::uint64_t>(row_bytes);
      return s;
    }

    template <class S>
    impl::Saved<S>& saved(const void* key) {
      if constexpr (std::is_same_v<S, float>) return saved_f[key];
      else return saved_d[key];
    }
    template <class S>
    impl::Saved<S>* find_saved(const void* key) {
      auto& m = [&]() -> auto& {
        if constexpr (std::is_same_v<S, float>) return saved_f;
        else return saved_d;
      }();
      const auto it = m.find(key);
      return it == m.end() ? nullptr : &it->second;
    }
    /// Scratch matrices of the calls: the owner's outputs or dy rows (0), dx rows (1), dhidden (2).
    template <class S>
    RowMatrix<S>& buffer(std::size_t i) {
      if constexpr (std::is_same_v<S, float>) return buffers_f[i];
      else return buffers_d[i];
    }

    ExpertPartition partition;
    CapacityScope scope = CapacityScope::per_rank;
    bool planned = false;         // plan() ran under global scope; the forward's counts exchange follows
    std::uint64_t plan_bytes = 0;  // bytes this rank sent in the current forward's planning exchange
    MPI_Comm comm = MPI_COMM_NULL;
    Index rank = 0, size = 1, first = 0, count = 0, block = 1;
    std::mutex mutex;
    std::uint64_t exchanges = 0;
    double mpi_seconds = 0;  // the current call's time in MPI (ExchangeStatistics::mpi_seconds)
    ExchangeStatistics last{}, totals{};
    std::map<const void*, impl::Saved<float>> saved_f;
    std::map<const void*, impl::Saved<double>> saved_d;
    RowMatrix<float> buffers_f[3];
    RowMatrix<double> buffers_d[3];
  };

  std::shared_ptr<State> state_;
};

}  // namespace moe::parallel

#endif  // MOE_PARALLEL_MPI_EXPERT_EXECUTOR_HPP
