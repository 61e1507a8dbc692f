// moe_bench_forward: forward of named MoE layers beside the "ideal", the same expert GEMMs
// run on tokens already grouped by expert, then a table of MoE time / ideal time.
//
//   ./moe_bench_forward                       # scaled shapes, a couple of minutes on 2 cores
//   ./moe_bench_forward --moe_full            # adds the real model sizes, longer runs
//   ./moe_bench_forward --benchmark_format=json > out.json   # table goes to stderr
//
// bench/README.md explains every number.
#include <moe/kernels/arch.hpp>
#include <moe/moe.hpp>

#include "bench_shapes.hpp"

#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <iomanip>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace {

using S = float;
using moe::Index;

using moe_bench::fill_normal;
using moe_bench::kMixtral8x7b;
using moe_bench::kMixtralScaled;
using moe_bench::kOlmoe1b7b;
using moe_bench::kOlmoeScaled;
using moe_bench::Shape;

constexpr Index kTokens[] = {1, 32, 512, 2048};

/// The ideal: for each expert e, Y_e = (silu(X_e Wg_e^T) * (X_e Wu_e^T)) Wd_e^T on rows already
/// grouped by expert. No routing, no plan, no gather, no combine. Each expert runs exactly what
/// the layer's step 4 runs, SwiGLUExperts::forward (the packed products and the SIMD SiluMul;
/// docs/experts.md#packed-weights), so MoE time / ideal time isolates routing + dispatch +
/// combine. (moe_bench_products compares the product kernels themselves.)
template <class Arch = xsimd::default_arch>
void ideal_experts(const moe::SwiGLUExperts<S>& bank, const std::vector<Index>& offsets,
                   const moe::ConstMatrixRef<S>& x, moe::MatrixRef<S> hidden, moe::MatrixRef<S> y) {
  for (Index e = 0; e < bank.num_experts(); ++e) {
    const Index b = offsets[static_cast<std::size_t>(e)];
    const Index n = offsets[static_cast<std::size_t>(e) + 1] - b;
    if (n == 0) continue;
    bank.template forward<Arch>(e, x.middleRows(b, n), hidden.middleRows(b, n), y.middleRows(b, n));
  }
}

/// One (shape, T): the input, the MoE's workspace, and the ideal's pre-grouped buffers.
struct Case {
  moe::RowMatrix<S> x;
  moe::RowMatrix<S> y;
  moe::Workspace<S> ws;
  std::vector<Index> offsets;  // per-expert row ranges of this input's routing, E + 1
  moe::RowMatrix<S> x_grouped;
  moe::RowMatrix<S> hidden;
  moe::RowMatrix<S> y_grouped;
  double expert_flops = 0;  // sum over experts of 2 n d 2ff + 2 n ff d
  double router_flops = 0;  // 2 T d E
  double expert_weight_bytes = 0;  // weights of the experts that received rows
  double router_weight_bytes = 0;
  Index rows = 0;
  Index experts_used = 0;
  std::string error;  // set when the ideal does not reproduce the MoE's expert outputs
};

/// A layer of one shape, built on first use and shared by the MoE and ideal benchmarks, so both
/// read the very same weights.
template <class Layer>
class ShapeBench {
 public:
  explicit ShapeBench(const Shape& shape) : shape_(shape) {}

  [[nodiscard]] const Shape& shape() const noexcept { return shape_; }

  const Layer& layer() {
    if (!layer_) layer_ = std::make_unique<Layer>(moe_bench::make_layer<Layer>(shape_));
    return *layer_;
  }

  Case& get(Index T) {
    auto& slot = cases_[T];
    if (!slot) slot = make_case(T);
    return *slot;
  }

 private:
  std::unique_ptr<Case> make_case(Index T) {
    const Layer& l = layer();
    const Shape& s = shape_;
    auto c = std::make_unique<Case>();
    c->x.resize(T, s.d_model);
    fill_normal(c->x, 100 + static_cast<std::uint64_t>(T), 1.0);
    c->y.resize(T, s.d_model);
    // One forward fixes the routing of this input: the ideal takes the same per-expert rows,
    // already grouped (the MoE's own gather of x), and the workspace is sized for the loop.
    l.forward(c->x, c->y, c->ws);
    const moe::DispatchPlan<S>& plan = c->ws.plan;
    c->offsets = plan.offsets;
    c->rows = plan.rows();
    c->x_grouped = c->ws.x_perm;
    c->hidden.resize(c->rows, l.experts().hidden_cols());
    c->y_grouped.resize(c->rows, s.d_model);
    const double d = double(s.d_model), ff = double(s.d_ff);
    for (Index e = 0; e < s.num_experts; ++e) {
      const double n = double(plan.count(e));
      c->expert_flops += 2 * n * d * 2 * ff + 2 * n * ff * d;
      if (n > 0) ++c->experts_used;
    }
    c->expert_weight_bytes = double(c->experts_used) * 3 * d * ff * sizeof(S);
    c->router_flops = 2 * double(T) * d * double(s.num_experts);
    c->router_weight_bytes = d * double(s.num_experts) * sizeof(S);

    // The ideal must compute what the MoE's experts computed, or the ratio compares different work.
    ideal_experts(l.experts(), c->offsets, c->x_grouped, c->hidden, c->y_grouped);
    if (c->rows > 0) {
      const double scale = std::max<double>(c->ws.y_perm.cwiseAbs().maxCoeff(), 1e-30);
      const double diff = (c->y_grouped - c->ws.y_perm).cwiseAbs().maxCoeff();
      if (!(diff <= 1e-5 * scale)) {
        std::ostringstream os;
        os << "ideal expert outputs differ from the MoE's: max |diff| " << diff << " vs max |y| " << scale;
        c->error = os.str();
      }
    }
    return c;
  }

  const Shape& shape_;
  std::unique_ptr<Layer> layer_;
  std::map<Index, std::unique_ptr<Case>> cases_;
};

using benchmark::Counter;

double median_of(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t m = v.size() / 2;
  return v.size() % 2 == 1 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

double min_of(const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); }

// No warm-up call before the loops: make_case's forward already sized the workspace, and the
// weights (277 MB and up) stream from memory on every call, so a first iteration costs what
// the others do; a warm-up would double the longest benchmarks' cost.

template <class Layer>
void bm_moe_forward(benchmark::State& state, ShapeBench<Layer>* bench) {
  const Index T = state.range(0);
  Case& c = bench->get(T);
  const Layer& layer = bench->layer();
  for (auto _ : state) {
    layer.forward(c.x, c.y, c.ws);
    benchmark::DoNotOptimize(c.y.data());
    benchmark::ClobberMemory();
  }
  state.counters["tokens"] = Counter(double(T), Counter::kIsIterationInvariantRate);
  state.counters["expert_FLOP"] = Counter(c.expert_flops, Counter::kIsIterationInvariantRate);
  state.counters["router_FLOP"] = Counter(c.router_flops, Counter::kIsIterationInvariantRate);
  state.counters["weight_B"] =
      Counter(c.expert_weight_bytes + c.router_weight_bytes, Counter::kIsIterationInvariantRate);
  state.counters["experts_used"] = Counter(double(c.experts_used));
}

template <class Layer>
void bm_ideal(benchmark::State& state, ShapeBench<Layer>* bench) {
  const Index T = state.range(0);
  Case& c = bench->get(T);
  if (!c.error.empty()) {
    state.SkipWithError(c.error.c_str());
    return;
  }
  const auto& experts = bench->layer().experts();
  for (auto _ : state) {
    ideal_experts(experts, c.offsets, c.x_grouped, c.hidden, c.y_grouped);
    benchmark::DoNotOptimize(c.y_grouped.data());
    benchmark::ClobberMemory();
  }
  state.counters["tokens"] = Counter(double(T), Counter::kIsIterationInvariantRate);
  state.counters["expert_FLOP"] = Counter(c.expert_flops, Counter::kIsIterationInvariantRate);
  state.counters["weight_B"] = Counter(c.expert_weight_bytes, Counter::kIsIterationInvariantRate);
  state.counters["experts_used"] = Counter(double(c.experts_used));
}

/// Forwards everything to the reporter --benchmark_format chose, and keeps the CPU time of every
/// moe_forward and ideal_experts run so Finalize() can print MoE / ideal from this very run.
///
/// The ratio is taken from the fastest repetition of each side: on a shared machine, load from
/// other processes only ever adds time, so the minimum is the least disturbed sample. The
/// ratio of medians is printed beside it; where the two disagree, the run was noisy.
class RatioReporter : public benchmark::BenchmarkReporter {
 public:
  struct Row {
    std::string shape;
    Index tokens;
  };

  RatioReporter(benchmark::BenchmarkReporter* inner, std::vector<Row> rows)
      : inner_(inner), rows_(std::move(rows)) {}

  bool ReportContext(const Context& context) override { return inner_->ReportContext(context); }

  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& run : runs) {
      if (run.error_occurred) continue;
      Timing& t = timings_[run.run_name.function_name + "/" + run.run_name.args];
      const double us = run.GetAdjustedCPUTime() * 1e6 / benchmark::GetTimeUnitMultiplier(run.time_unit);
      if (run.run_type == Run::RT_Iteration)
        t.samples.push_back(us);
      else if (run.aggregate_name == "median")
        t.median = us;
      else if (run.aggregate_name == "min")
        t.min = us;
    }
    inner_->ReportRuns(runs);
  }

  void Finalize() override {
    inner_->Finalize();
    // Keep stdout valid JSON or CSV: the table then goes to stderr.
    std::ostream& out = dynamic_cast<benchmark::ConsoleReporter*>(inner_) != nullptr ? std::cout : std::cerr;
    print_table(out);
  }

 private:
  // With --benchmark_display_aggregates_only (this program's default) only the aggregates
  // arrive here; with one repetition only the single run does.
  struct Timing {
    std::vector<double> samples;
    std::optional<double> median;
    std::optional<double> min;

    [[nodiscard]] std::optional<double> fastest() const {
      if (min) return min;
      if (samples.empty()) return std::nullopt;
      return *std::min_element(samples.begin(), samples.end());
    }
    [[nodiscard]] std::optional<double> middle() const {
      if (median) return median;
      if (samples.empty()) return std::nullopt;
      return median_of(samples);
    }
  };

  [[nodiscard]] const Timing* lookup(const std::string& kind, const Row& row) const {
    const auto it = timings_.find(kind + "/" + row.shape + "/T:" + std::to_string(row.tokens));
    return it == timings_.end() ? nullptr : &it->second;
  }

  void print_table(std::ostream& out) const {
    bool any = false;
    for (const Row& row : rows_) any = any || lookup("moe_forward", row) || lookup("ideal_experts", row);
    if (!any) return;
    out << "\nMoE forward / ideal (the same expert GEMMs on tokens already grouped by expert)\n"
        << "CPU time per forward, fastest repetition (ratio of medians beside it); kernels "
        << moe::kernels::arch_name<>() << ", Eigen " << Eigen::SimdInstructionSetsInUse() << "\n";
    out << std::left << std::setw(16) << "shape" << std::right << std::setw(6) << "T" << std::setw(14) << "MoE us"
        << std::setw(14) << "ideal us" << std::setw(9) << "ratio" << std::setw(16) << "median ratio" << "\n";
    const auto cell = [&out](std::optional<double> v, int width, int precision) {
      if (v)
        out << std::setw(width) << std::fixed << std::setprecision(precision) << *v;
      else
        out << std::setw(width) << "-";
    };
    const auto ratio = [](std::optional<double> a, std::optional<double> b) {
      return a && b && *b > 0 ? std::optional<double>(*a / *b) : std::nullopt;
    };
    for (const Row& row : rows_) {
      const Timing* m = lookup("moe_forward", row);
      const Timing* i = lookup("ideal_experts", row);
      if (m == nullptr && i == nullptr) continue;
      const auto m_fast = m ? m->fastest() : std::nullopt;
      const auto i_fast = i ? i->fastest() : std::nullopt;
      out << std::left << std::setw(16) << row.shape << std::right << std::setw(6) << row.tokens;
      cell(m_fast, 14, 1);
      cell(i_fast, 14, 1);
      cell(ratio(m_fast, i_fast), 9, 3);
      cell(ratio(m ? m->middle() : std::nullopt, i ? i->middle() : std::nullopt), 16, 3);
      out << "\n";
    }
    out << std::flush;
  }

  benchmark::BenchmarkReporter* inner_;
  std::vector<Row> rows_;
  std::map<std::string, Timing> timings_;
};

void print_help() {
  benchmark::PrintDefaultHelp();
  std::fprintf(stdout,
               "  --moe_full   also run the real model sizes (Mixtral 8x7B, OLMoE-1B-7B; about 8 GB of\n"
               "               weights) with 7 repetitions of at least 0.5 s each\n");
}

template <class Layer>
void register_shape(ShapeBench<Layer>& bench, std::vector<RatioReporter::Row>& rows) {
  const std::string shape = bench.shape().name;
  for (const Index T : kTokens) rows.push_back({shape, T});
  for (const char* kind : {"moe_forward", "ideal_experts"}) {
    const std::string name = std::string(kind) + "/" + shape;
    benchmark::internal::Benchmark* b =
        std::strcmp(kind, "moe_forward") == 0
            ? benchmark::RegisterBenchmark(name.c_str(), bm_moe_forward<Layer>, &bench)
            : benchmark::RegisterBenchmark(name.c_str(), bm_ideal<Layer>, &bench);
    // "min" beside Google Benchmark's mean, median, stddev and cv: the table reads it.
    b->ArgName("T")->Unit(benchmark::kMicrosecond)->ComputeStatistics("min", min_of);
    for (const Index T : kTokens) b->Arg(T);
  }
}

}  // namespace

int main(int argc, char** argv) {
  bool full = false;
  std::vector<std::string> user;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--moe_full") == 0)
      full = true;
    else
      user.emplace_back(argv[i]);
  }
  // Defaults that keep the plain run to a few minutes on 2 cores. They come first, so the same
  // flag given on the command line wins. Random interleaving spreads the repetitions of all
  // benchmarks over the run, so drift in machine load lands on MoE and ideal alike.
  std::vector<std::string> args = {argv[0],
                                   full ? "--benchmark_min_time=0.5" : "--benchmark_min_time=0.1",
                                   full ? "--benchmark_repetitions=7" : "--benchmark_repetitions=5",
                                   "--benchmark_enable_random_interleaving=true",
                                   "--benchmark_display_aggregates_only=true"};
  args.insert(args.end(), user.begin(), user.end());
  std::vector<char*> cargs;
  for (std::string& a : args) cargs.push_back(a.data());
  cargs.push_back(nullptr);
  int cargc = static_cast<int>(args.size());
  benchmark::Initialize(&cargc, cargs.data(), print_help);
  if (benchmark::ReportUnrecognizedArguments(cargc, cargs.data())) return 1;

  // Which code ran: the xsimd architecture of the layer's kernels and Eigen's GEMM instruction
  // sets. In the context header (stderr for the console) and in JSON's "context".
  benchmark::AddCustomContext("moe_kernel_arch", moe::kernels::arch_name<>());
  benchmark::AddCustomContext("eigen_simd", Eigen::SimdInstructionSetsInUse());

  static ShapeBench<moe::MixtralMoE<S>> mixtral_scaled(kMixtralScaled);
  static ShapeBench<moe::OlmoeMoE<S>> olmoe_scaled(kOlmoeScaled);
  static ShapeBench<moe::MixtralMoE<S>> mixtral_8x7b(kMixtral8x7b);
  static ShapeBench<moe::OlmoeMoE<S>> olmoe_1b_7b(kOlmoe1b7b);
  std::vector<RatioReporter::Row> rows;
  register_shape(mixtral_scaled, rows);
  register_shape(olmoe_scaled, rows);
  if (full) {
    register_shape(mixtral_8x7b, rows);
    register_shape(olmoe_1b_7b, rows);
  }

  RatioReporter reporter(benchmark::CreateDefaultDisplayReporter(), std::move(rows));
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  return 0;
}
