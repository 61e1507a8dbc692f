// moe_bench_ep: issue #13 item 9, expert parallelism over MPI against one process, in one run.
//
//   mpirun -np 2 build/release/bench/moe_bench_ep            # one rank per core
//   mpirun -np 2 build/release/bench/moe_bench_ep --quick    # T = 512 only, to check the program
//   (as root: OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1)
//
// For the mixtral-scaled and olmoe-scaled layers (bench_shapes.hpp) and a global batch of
// T = 512, 2048 and 8192 tokens, forward and forward+backward:
//   local/...  the single-process layer (LocalExecutor, one thread) on the whole batch, run by
//              rank 0 while the other ranks sleep in a barrier: time(1 rank);
//   ep/...     the expert-parallel layer, rank r running rows [T r / P, T (r + 1) / P) of the
//              same batch and owning its block of the experts (moe::parallel::forward and
//              backward, plus sum_replicated_gradients in forward+backward, as a training step
//              does): time(P ranks);
//   busy/...   every rank runs the single-process layer on the whole batch at once: how much P
//              busy cores slow each other on this work (shared caches, memory bandwidth, a VM's
//              cores), so P time(1 rank) / time(busy) is the ceiling of the ratio on this
//              machine, what perfect balance and a free exchange would reach.
// An iteration's time is the slowest rank's (MPI_Allreduce MAX), so all ranks see the same
// times and run the same iterations. At the end rank 0 prints, per row: time(1 rank) /
// time(P ranks) (goal >= 1.7 at T >= 2048 with P = 2), bytes sent between ranks per token
// against the model 2 k d sizeof(S) (1 - 1/P) per forward (4 k d ... for forward+backward), and
// the share of the time the ranks spend in MPI calls (waiting for the slowest rank included)
// against running their experts, and the ranks' imbalance (slowest rank's expert time over the
// mean). docs/expert_parallel.md#benchmark has the figures.
#include <moe/kernels/arch.hpp>
#include <moe/moe.hpp>
#include <moe/parallel/expert_parallel.hpp>

#include "bench_shapes.hpp"

#include <benchmark/benchmark.h>
#include <mpi.h>

#include <Eigen/Core>
#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace {

using S = float;
using moe::Index;
using moe_bench::fill_normal;
using moe_bench::Shape;

using Whole = moe::MixtralMoE<S>;
using Router = std::remove_cvref_t<decltype(std::declval<const Whole&>().router())>;
using Combiner = std::remove_cvref_t<decltype(std::declval<const Whole&>().combiner())>;
using EpLayer = moe::parallel::ExpertParallelLayer<moe::SwiGLUExperts<S>, Router, Combiner>;

constexpr Shape kShapes[] = {moe_bench::kMixtralScaled, moe_bench::kOlmoeScaled};

Index g_rank = 0, g_ranks = 1;

/// One shape: the whole layer (every rank builds it from the same seeds), this rank's
/// expert-parallel layer, and per T the global batch and upstream gradient.
struct Case {
  explicit Case(const Shape& s) : shape(s), whole(moe_bench::make_layer<Whole>(s)) {
    moe::parallel::MpiExpertExecutor executor(MPI_COMM_WORLD, s.num_experts);
    const auto& part = executor.partition();
    ep.emplace(moe::parallel::expert_parallel_layer(
        moe::parallel::ExpertSlice<moe::SwiGLUExperts<S>>(
            moe::parallel::copy_experts(whole.experts(), part.first(g_rank), part.count(g_rank),
                                        [&](Index n) { return moe::SwiGLUExperts<S>(n, s.d_model, s.d_ff); }),
            part, g_rank),
        whole.router(), whole.combiner(), {}, executor));
  }
  const moe::RowMatrix<S>& batch(Index T) {
    auto& x = batches[T];
    if (x.size() == 0) {
      x.resize(T, shape.d_model);
      fill_normal(x, 100 + static_cast<std::uint64_t>(T), 1.0);
    }
    return x;
  }
  const moe::RowMatrix<S>& upstream(Index T) {
    auto& dy = upstreams[T];
    if (dy.size() == 0) {
      dy.resize(T, shape.d_model);
      fill_normal(dy, 200 + static_cast<std::uint64_t>(T), 1.0 / static_cast<double>(T));
    }
    return dy;
  }
  Shape shape;
  Whole whole;
  std::optional<EpLayer> ep;
  std::map<Index, moe::RowMatrix<S>> batches, upstreams;
};

Case& get_case(const Shape& s) {
  static std::map<std::string, std::unique_ptr<Case>> cases;
  auto& c = cases[s.name];
  if (!c) c = std::make_unique<Case>(s);
  return *c;
}

enum class Mode { local, busy, ep };

struct Spec {
  const Shape* shape;
  Index tokens;
  Mode mode;
  bool backward;
  [[nodiscard]] std::string key() const {
    return std::string(shape->name) + (backward ? "/fwd+bwd" : "/fwd") + "/T:" + std::to_string(tokens);
  }
};

/// What rank 0 keeps of each benchmark for the table: seconds per iteration (slowest rank),
/// bytes sent between ranks per token (all ranks), MPI and expert seconds (mean over ranks),
/// the slowest rank's expert seconds.
struct Result {
  double seconds = 0, bytes_per_token = 0, mpi_seconds = 0, expert_seconds = 0, expert_seconds_max = 0;
};
std::map<std::string, Result> g_local, g_busy, g_ep;

double slowest(double seconds) {
  double out = 0;
  MPI_Allreduce(&seconds, &out, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return out;
}
double summed(double v) {
  double out = 0;
  MPI_Allreduce(&v, &out, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  return out;
}

/// A barrier the ranks wait in asleep: while rank 0 runs the single-process layer, the others
/// must not spin in MPI's busy-polling wait, which takes CPU from rank 0 (on the 2-core VM of
/// docs/expert_parallel.md#benchmark it made the 1-rank time up to 1.8x slower).
void wait_idle() {
  MPI_Request request = MPI_REQUEST_NULL;
  MPI_Ibarrier(MPI_COMM_WORLD, &request);
  int done = 0;
  while (MPI_Test(&request, &done, MPI_STATUS_IGNORE) == MPI_SUCCESS && done == 0)
    std::this_thread::sleep_for(std::chrono::microseconds(100));
}

void bm(benchmark::State& state, const Spec* spec) {
  Case& c = get_case(*spec->shape);
  const Index T = spec->tokens, d = spec->shape->d_model;
  const moe::RowMatrix<S>& X = c.batch(T);
  const moe::RowMatrix<S>& dY = c.upstream(T);
  const Index begin = T * g_rank / g_ranks, end = T * (g_rank + 1) / g_ranks;
  const bool local = spec->mode == Mode::local, ep = spec->mode == Mode::ep;
  const bool runs = !local || g_rank == 0;  // local: rank 0 alone
  const Index rows = ep ? end - begin : (runs ? T : 0);
  const moe::RowMatrix<S> x = ep ? moe::RowMatrix<S>(X.middleRows(begin, rows)) : (runs ? X : moe::RowMatrix<S>());
  const moe::RowMatrix<S> dy = ep ? moe::RowMatrix<S>(dY.middleRows(begin, rows)) : (runs ? dY : moe::RowMatrix<S>());
  moe::RowMatrix<S> y(rows, d), dx(rows, d);
  moe::Workspace<S> ws;
  moe::ForwardContext ctx;
  ctx.mode = spec->backward ? moe::Mode::training : moe::Mode::inference;
  auto whole_grads = c.whole.make_gradients();
  auto ep_grads = c.ep->make_gradients();

  moe::parallel::ExchangeStatistics exchanged{};
  const auto step = [&] {
    if (ep) {
      moe::parallel::forward(*c.ep, x, y, ws, ctx);
      exchanged += c.ep->executor().last_call();
      if (spec->backward) {
        moe::parallel::backward(*c.ep, dy, dx, ws, ep_grads);
        exchanged += c.ep->executor().last_call();
        (void)moe::parallel::sum_replicated_gradients(ep_grads, c.ep->executor());
      }
    } else if (runs) {
      c.whole.forward(x, y, ws, ctx);
      if (spec->backward) c.whole.backward(dy, dx, ws, whole_grads);
    }
  };
  step();  // warm-up: first-touch of the workspace and buffers
  exchanged = {};

  double total = 0;
  for (auto _ : state) {
    MPI_Barrier(MPI_COMM_WORLD);
    const auto t0 = std::chrono::steady_clock::now();
    step();
    const double mine = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!ep) wait_idle();
    const double t = slowest(mine);
    state.SetIterationTime(t);
    total += t;
  }
  const auto n = static_cast<double>(state.iterations());
  Result r;
  r.seconds = total / n;
  r.bytes_per_token = summed(static_cast<double>(exchanged.bytes_sent)) / n / static_cast<double>(T);
  r.mpi_seconds = summed(exchanged.mpi_seconds) / n / static_cast<double>(g_ranks);
  r.expert_seconds = summed(exchanged.expert_seconds) / n / static_cast<double>(g_ranks);
  r.expert_seconds_max = slowest(exchanged.expert_seconds) / n;
  (ep ? g_ep : local ? g_local : g_busy)[spec->key()] = r;
  state.counters["tokens"] = benchmark::Counter(static_cast<double>(T), benchmark::Counter::kIsIterationInvariantRate);
  if (ep) {
    state.counters["bytes/token"] = r.bytes_per_token;
    state.counters["mpi_share"] = r.mpi_seconds / r.seconds;
  }
}

/// Prints rank 0's table after the runs.
void print_table(const std::vector<Spec>& specs) {
  const double P = static_cast<double>(g_ranks);
  std::printf("\nExpert parallelism: time(1 rank, whole batch) / time(%ld ranks), one thread per rank, kernels %s\n",
              static_cast<long>(g_ranks), moe::kernels::arch_name<>());
  std::printf("%-16s %-8s %6s %10s %10s %7s %8s %12s %12s %7s %8s %9s\n", "shape", "pass", "T", "1 rank ms",
              "P ranks ms", "ratio", "ceiling", "bytes/token", "model", "in MPI", "experts", "imbalance");
  for (const Spec& s : specs) {
    if (s.mode != Mode::ep) continue;
    const auto l = g_local.find(s.key()), e = g_ep.find(s.key()), c = g_busy.find(s.key());
    if (l == g_local.end() || e == g_ep.end() || c == g_busy.end()) continue;
    const double k = static_cast<double>(s.shape->top_k), d = static_cast<double>(s.shape->d_model);
    const double model = (s.backward ? 4 : 2) * k * d * sizeof(S) * (1 - 1 / P);
    std::printf("%-16s %-8s %6ld %10.1f %10.1f %7.2f %8.2f %12.1f %12.1f %6.0f%% %7.0f%% %9.2f\n", s.shape->name,
                s.backward ? "fwd+bwd" : "fwd", static_cast<long>(s.tokens), l->second.seconds * 1e3,
                e->second.seconds * 1e3, l->second.seconds / e->second.seconds, P * l->second.seconds / c->second.seconds,
                e->second.bytes_per_token, model, 100 * e->second.mpi_seconds / e->second.seconds,
                100 * e->second.expert_seconds / e->second.seconds,
                e->second.expert_seconds > 0 ? e->second.expert_seconds_max / e->second.expert_seconds : 1.0);
  }
  std::printf("(ceiling: P time(1 rank) / time of P ranks each running the whole layer on the whole batch at once; "
              "in MPI: the ranks' mean wall time inside the executor's MPI calls, waiting included; experts: "
              "running their own experts; both as a share of the step; imbalance: the slowest rank's expert time "
              "over the mean)\n");
  std::fflush(stdout);
}

/// The reporter of ranks other than 0: prints nothing.
class Silent : public benchmark::BenchmarkReporter {
 public:
  bool ReportContext(const Context&) override { return true; }
  void ReportRuns(const std::vector<Run>&) override {}
};

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int r = 0, p = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  MPI_Comm_size(MPI_COMM_WORLD, &p);
  g_rank = r, g_ranks = p;

  bool quick = false;
  std::vector<std::string> args = {argv[0]};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") quick = true;
    else if (r == 0 || a.rfind("--benchmark_out", 0) != 0) args.push_back(a);  // one rank writes files
  }
  std::vector<char*> cargs;
  for (std::string& a : args) cargs.push_back(a.data());
  cargs.push_back(nullptr);
  int cargc = static_cast<int>(args.size());
  benchmark::Initialize(&cargc, cargs.data());
  if (benchmark::ReportUnrecognizedArguments(cargc, cargs.data())) {
    MPI_Abort(MPI_COMM_WORLD, 1);
    return 1;
  }
  benchmark::AddCustomContext("moe_kernel_arch", moe::kernels::arch_name<>());
  benchmark::AddCustomContext("mpi_ranks", std::to_string(p));

  std::vector<Spec> specs;
  for (const Shape& s : kShapes)
    for (const Index T : {Index(512), Index(2048), Index(8192)}) {
      if (quick && T != 512) continue;
      for (const bool backward : {false, true})
        for (const Mode mode : {Mode::local, Mode::busy, Mode::ep}) specs.push_back({&s, T, mode, backward});
    }
  for (const Spec& s : specs) {
    const char* prefix = s.mode == Mode::ep ? "ep/" : s.mode == Mode::busy ? "busy/" : "local/";
    const std::string name =
        prefix + s.key() + (s.mode != Mode::local ? "/ranks:" + std::to_string(p) : "");
    const Index iterations = quick ? 1 : (s.tokens >= 8192 ? 2 : s.tokens >= 2048 ? 3 : 6);
    benchmark::RegisterBenchmark(name.c_str(), bm, &s)
        ->Iterations(iterations)
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond);
  }
  if (r == 0) {
    benchmark::RunSpecifiedBenchmarks();
    print_table(specs);
  } else {
    Silent silent;
    benchmark::RunSpecifiedBenchmarks(&silent);
  }
  benchmark::Shutdown();
  MPI_Finalize();
  return 0;
}
