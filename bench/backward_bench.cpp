// Forward+backward against forward alone, for the scaled Mixtral-like and OLMoE-like layers.
//
//   moe_bench_backward [Google Benchmark flags]
//
// Both benchmarks run forward in training mode (it keeps x for backward) on the same layer,
// input and workspace; the table at the end gives (forward + backward) / forward per shape
// and T, from the fastest repetition of each in this run.
#include <moe/moe.hpp>

#include "bench_shapes.hpp"

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

namespace {

using moe::Index;
using moe::RowMatrix;
using S = float;

using moe_bench::fill_normal;
using moe_bench::Shape;

const std::vector<Shape> shapes = {moe_bench::kMixtralScaled, moe_bench::kOlmoeScaled};

void bm_train_step(benchmark::State& state, const Shape& shape, bool with_backward) {
  const Index T = state.range(0);
  const auto layer = moe_bench::make_layer<moe::MixtralMoE<S>>(shape);
  RowMatrix<S> x(T, shape.d_model), dy(T, shape.d_model), y(T, shape.d_model), dx(T, shape.d_model);
  fill_normal(x, 4, 1.0);
  fill_normal(dy, 5, 1.0);
  moe::Workspace<S> ws;
  auto grads = layer.make_gradients();
  moe::ForwardContext ctx;
  ctx.mode = moe::Mode::training;
  const moe::LossWeights<S> weights{S(0.01), S(0.001)};
  for (auto _ : state) {
    layer.forward(x, y, ws, ctx);
    if (with_backward) layer.backward(dy, dx, ws, grads, weights);
    benchmark::DoNotOptimize(y.data());
    benchmark::DoNotOptimize(dx.data());
    benchmark::ClobberMemory();
  }
  state.counters["tokens"] = benchmark::Counter(double(T), benchmark::Counter::kIsIterationInvariantRate);
}

/// Passes everything to the console reporter and keeps the fastest time of each run name.
class RatioReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& r : runs) {
      if (r.run_type != Run::RT_Iteration || r.error_occurred) continue;
      const double t = r.GetAdjustedCPUTime();  // CPU time: single-threaded, robust to a loaded machine
      auto [it, fresh] = best_.try_emplace(r.run_name.function_name + "/" + r.run_name.args, t);
      if (!fresh) it->second = std::min(it->second, t);
    }
    ConsoleReporter::ReportRuns(runs);
  }
  [[nodiscard]] const std::map<std::string, double>& best() const { return best_; }

 private:
  std::map<std::string, double> best_;
};

}  // namespace

int main(int argc, char** argv) {
  for (const Shape& s : shapes) {
    for (const bool bwd : {false, true}) {
      auto* b = benchmark::RegisterBenchmark((std::string(bwd ? "forward_backward/" : "forward/") + s.name).c_str(),
                                             [s, bwd](benchmark::State& st) { bm_train_step(st, s, bwd); });
      b->Arg(32)->Arg(512)->Arg(2048)->Unit(benchmark::kMillisecond)->MinTime(0.2);
    }
  }
  benchmark::Initialize(&argc, argv);
  RatioReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  std::printf("\n%-16s %6s %12s %12s %10s\n", "shape", "T", "fwd ms", "fwd+bwd ms", "ratio");
  for (const Shape& s : shapes)
    for (const char* t : {"32", "512", "2048"}) {
      const auto f = reporter.best().find(std::string("forward/") + s.name + "/" + t);
      const auto fb = reporter.best().find(std::string("forward_backward/") + s.name + "/" + t);
      if (f == reporter.best().end() || fb == reporter.best().end()) continue;
      std::printf("%-16s %6s %12.3f %12.3f %10.2f\n", s.name, t, f->second, fb->second, fb->second / f->second);
    }
  std::printf("ratio = (forward + backward) / forward, CPU time of the fastest repetition of each; kernels %s\n",
              moe::kernels::arch_name());
  benchmark::Shutdown();
  return 0;
}
