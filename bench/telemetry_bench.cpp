// Issue #16 item 5: what RoutingTelemetry costs. One forward of the OLMoE-scaled layer (64
// experts, top-8: the most logits per token of the benchmark shapes, so the collector's
// softmax over them weighs most) at T = 1, 16 and 512, with no collector attached ("off",
// forward's one pointer test) and with one attached ("on": a record per call, cleared every
// 1024 calls so memory stays bounded). The on/off ratio comes from one run; the cost of "off"
// against a build without telemetry is an A/B of two builds (docs/telemetry.md#cost).
#include <benchmark/benchmark.h>

#include "bench_shapes.hpp"

namespace {

using moe::Index;
using moe_bench::S;

const moe::OlmoeMoE<S>& layer() {
  static const auto l = moe_bench::make_layer<moe::OlmoeMoE<S>>(moe_bench::kOlmoeScaled);
  return l;
}

void bm_forward(benchmark::State& state, bool attached) {
  const auto T = static_cast<Index>(state.range(0));
  moe::RowMatrix<S> x(T, layer().input_dim()), y(T, layer().output_dim());
  moe_bench::fill_normal(x, 7, 1.0);
  moe::Workspace<S> ws;
  moe::RoutingTelemetry telemetry;
  moe::ForwardContext ctx;
  if (attached) ctx.telemetry = &telemetry;
  layer().forward(x, y, ws, ctx);
  for (auto _ : state) {
    layer().forward(x, y, ws, ctx);
    benchmark::DoNotOptimize(y.data());
    if (telemetry.records().size() >= 1024) telemetry.clear();
  }
  state.counters["tokens"] = benchmark::Counter(double(T), benchmark::Counter::kIsIterationInvariantRate);
}

void bm_off(benchmark::State& state) { bm_forward(state, false); }
void bm_on(benchmark::State& state) { bm_forward(state, true); }

}  // namespace

BENCHMARK(bm_off)->Arg(1)->Arg(16)->Arg(512)->Unit(benchmark::kMicrosecond);
BENCHMARK(bm_on)->Arg(1)->Arg(16)->Arg(512)->Unit(benchmark::kMicrosecond);
BENCHMARK_MAIN();
