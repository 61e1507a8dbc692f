// moe_bench_threads: issue #5 ratio d, forward at T = 2048 with a ThreadPool of 1 thread and of
// n threads (2, 4, 8, 16 where std::thread::hardware_concurrency() allows), in one run, then a
// table of d = time(1) / time(n) (goal: >= 1.8 for n = 2; >= 12 for n = 16 on a 16-core machine).
//
//   ./moe_bench_threads                                  # both scaled shapes
//   ./moe_bench_threads --benchmark_out=t.json --benchmark_out_format=json
//
// Times are wall-clock (UseRealTime): the pool's workers do the work, so the calling thread's
// CPU time would not measure it. bench/README.md explains every number.
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
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace {

using S = float;
using moe::Index;

using moe_bench::fill_normal;
using moe_bench::Shape;
constexpr Shape kShapes[] = {moe_bench::kMixtralScaled, moe_bench::kOlmoeScaled};
constexpr Index kTokens = 2048;

/// One shape's layer and input, built on first use and shared by every thread count.
struct Case {
  explicit Case(const Shape& s) {
    layer = std::make_unique<moe::MixtralMoE<S>>(moe_bench::make_layer<moe::MixtralMoE<S>>(s));
    x.resize(kTokens, s.d_model);
    fill_normal(x, 100 + static_cast<std::uint64_t>(kTokens), 1.0);
    y.resize(kTokens, s.d_model);
    y_serial.resize(kTokens, s.d_model);
    layer->forward(x, y_serial, ws);  // the reference output: every pool size must give these bits
  }
  std::unique_ptr<moe::MixtralMoE<S>> layer;
  moe::RowMatrix<S> x, y, y_serial;
  moe::Workspace<S> ws;
};

Case& get_case(const Shape& s) {
  static std::map<std::string, std::unique_ptr<Case>> cases;
  auto& c = cases[s.name];
  if (!c) c = std::make_unique<Case>(s);
  return *c;
}

void bm_threads(benchmark::State& state, const Shape* shape) {
  const Index n = state.range(0);
  Case& c = get_case(*shape);
  moe::ThreadPool pool(n);
  moe::ForwardContext ctx;
  ctx.pool = &pool;
  c.layer->forward(c.x, c.y, c.ws, ctx);  // warm-up: the pool's threads grow their scratch
  if (c.y != c.y_serial) {
    state.SkipWithError("the pool's output differs from the serial forward's");
    return;
  }
  for (auto _ : state) {
    c.layer->forward(c.x, c.y, c.ws, ctx);
    benchmark::DoNotOptimize(c.y.data());
    benchmark::ClobberMemory();
  }
  state.counters["tokens"] = benchmark::Counter(double(kTokens), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = benchmark::Counter(double(n));
}

double min_of(const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); }

/// Forwards to the display reporter and prints d = time(1) / time(n) from the fastest
/// repetition of each (load from other processes only adds time).
class RatioReporter : public benchmark::BenchmarkReporter {
 public:
  explicit RatioReporter(benchmark::BenchmarkReporter* inner) : inner_(inner) {}
  bool ReportContext(const Context& context) override { return inner_->ReportContext(context); }
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& run : runs) {
      if (run.error_occurred) continue;
      const double us = run.GetAdjustedRealTime() * 1e6 / benchmark::GetTimeUnitMultiplier(run.time_unit);
      auto& best = fastest_[run.run_name.function_name + "/" + run.run_name.args];
      if (run.run_type == Run::RT_Iteration || run.aggregate_name == "min") best = best ? std::min(*best, us) : us;
    }
    inner_->ReportRuns(runs);
  }
  void Finalize() override {
    inner_->Finalize();
    std::ostream& out = dynamic_cast<benchmark::ConsoleReporter*>(inner_) != nullptr ? std::cout : std::cerr;
    out << "\nRatio d: forward at T = " << kTokens << ", wall time with a pool of 1 thread / with n threads "
        << "(fastest repetition); " << std::thread::hardware_concurrency() << " hardware threads, kernels "
        << moe::kernels::arch_name<>() << "\n"
        << std::left << std::setw(16) << "shape" << std::right << std::setw(9) << "threads" << std::setw(14)
        << "ms" << std::setw(9) << "d" << "\n";
    for (const Shape& s : kShapes) {
      const std::string base = std::string("threads/") + s.name + "/T:" + std::to_string(kTokens) + "/threads:";
      const auto one = fastest_.find(base + "1");
      for (const auto& [name, t] : fastest_) {
        if (name.rfind(base, 0) != 0 || !t) continue;
        out << std::left << std::setw(16) << s.name << std::right << std::setw(9) << name.substr(base.size())
            << std::setw(14) << std::fixed << std::setprecision(1) << *t / 1000.0 << std::setw(9)
            << std::setprecision(3);
        if (one != fastest_.end() && one->second)
          out << *one->second / *t;
        else
          out << "-";
        out << "\n";
      }
    }
    out << std::flush;
  }

 private:
  benchmark::BenchmarkReporter* inner_;
  std::map<std::string, std::optional<double>> fastest_;
};

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args = {argv[0], "--benchmark_min_time=0.1", "--benchmark_repetitions=3",
                                   "--benchmark_enable_random_interleaving=true",
                                   "--benchmark_display_aggregates_only=true"};
  for (int i = 1; i < argc; ++i) args.emplace_back(argv[i]);
  std::vector<char*> cargs;
  for (std::string& a : args) cargs.push_back(a.data());
  cargs.push_back(nullptr);
  int cargc = static_cast<int>(args.size());
  benchmark::Initialize(&cargc, cargs.data());
  if (benchmark::ReportUnrecognizedArguments(cargc, cargs.data())) return 1;
  benchmark::AddCustomContext("moe_kernel_arch", moe::kernels::arch_name<>());
  benchmark::AddCustomContext("eigen_simd", Eigen::SimdInstructionSetsInUse());

  const auto hw = static_cast<Index>(std::max(1U, std::thread::hardware_concurrency()));
  for (const Shape& s : kShapes) {
    const std::string name = std::string("threads/") + s.name + "/T:" + std::to_string(kTokens);
    auto* b = benchmark::RegisterBenchmark(name.c_str(), bm_threads, &s);
    b->ArgName("threads")->Unit(benchmark::kMillisecond)->UseRealTime()->ComputeStatistics("min", min_of);
    for (const Index n : {1, 2, 4, 8, 16})
      if (n == 1 || n <= hw) b->Arg(n);
  }
  RatioReporter reporter(benchmark::CreateDefaultDisplayReporter());
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  return 0;
}
