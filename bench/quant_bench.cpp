// moe_bench_quant: the routed experts' products with block-quantized weights (Q8_0, Q4_0,
// Q4_K) beside packed float and bf16, in one run (issue #12 item 6; bench/README.md).
//
//   moe_bench_quant [--tokens 1,4,16,32,512,2048] [--calls N] [--sweep-mib M]
//                   [--triad-mib M] [--triad-reps N] [Google Benchmark flags]
//
// For each scaled shape (bench_shapes.hpp) and T, a layer with the shape's router routes T
// tokens of N(0, 1) input once (moe_bench_products' slabs: every expert that receives rows,
// T k / E of them on average), and one iteration runs, for every expert with rows, the
// expert's products on its slab, one thread:
//   hidden[:, 0:2ff] = x_e W_gate_up,e^T;  hidden[:, 2ff:3ff] = silu(gate) * up;
//   y_e = hidden[:, 2ff:3ff] W_down,e^T
// with the weights as
//   F32    kernels::packed_gemm on PackedMatrix<float>
//   BF16   kernels::packed_gemm on PackedMatrix<bf16>
//   Q8_0, Q4_0, Q4_K   kernels::quant_gemm on QuantMatrix<Block> (activation rows quantized
//          inside each call, as a layer's forward does)
// all from the same N(0, 0.02) float weights. Before every call a read sweep of --sweep-mib
// MiB (untimed) evicts the weights from the caches, so each call reads them from memory, as a
// layer of a model finds them after the other layers ran.
//
// Counters: tokens/s and GFLOP/s (2 rows 3 d ff per iteration; rates of CPU time); at
// T <= 16 the bytes of the selected experts' weights (PackedMatrix::bytes(),
// QuantMatrix::bytes()), the GB/s they were read at and bw_ratio = time / (bytes / STREAM-triad
// bandwidth), the triad measured at the start of the run (moe_bench_decode's method); at
// T >= 512 vs_F32, F32's time / this time. max_rel_diff: the output's largest difference from
// F32's over the slabs, relative to F32's largest magnitude (weight quantization included).
// act_quant_share: the CPU time of quantizing one iteration's activation rows
// (QuantActivations::quantize on every slab, timed apart after the loop, best of 2) over the
// mean call time. The label names the kernel that ran (packed_kernel_name, quant_kernel_name).
// A table of the fastest repetitions ends the run (stdout for the console format, else stderr).
//
// On this project's 2-core Zen 5 VM: about 50 s with one repetition, 2-2.5 minutes with the 3
// that bench_all.sh runs (REPS); 30 s of it, once, quantizing the weights (Q4_K's reference
// quantizer).
#include <moe/kernels/activations.hpp>
#include <moe/kernels/arch.hpp>
#include <moe/kernels/packed_gemm.hpp>
#include <moe/kernels/quant_gemm.hpp>
#include <moe/moe.hpp>

#include "bench_measure.hpp"
#include "bench_shapes.hpp"

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <iomanip>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

using S = float;
using Arch = xsimd::default_arch;
using moe::Index;
using moe::RowMatrix;
using moe::kernels::BlockQ4_0;
using moe::kernels::BlockQ4_K;
using moe::kernels::BlockQ8_0;
using moe::kernels::PackedMatrix;
using moe::kernels::QuantMatrix;
using moe_bench::kMixtralScaled;
using moe_bench::kOlmoeScaled;
using moe_bench::Shape;
using moe_bench::Slabs;

constexpr double kWeightStd = 0.02;

enum class WType { f32, bf16, q8_0, q4_0, q4_k };
constexpr WType kTypes[] = {WType::f32, WType::bf16, WType::q8_0, WType::q4_0, WType::q4_k};

const char* type_name(WType t) {
  switch (t) {
    case WType::f32:
      return "F32";
    case WType::bf16:
      return "BF16";
    case WType::q8_0:
      return "Q8_0";
    case WType::q4_0:
      return "Q4_0";
    case WType::q4_k:
      return "Q4_K";
  }
  return "?";
}

std::string kernel_name(WType t) {
  switch (t) {
    case WType::f32:
      return moe::kernels::packed_kernel_name<S, S, Arch>();
    case WType::bf16:
      return moe::kernels::packed_kernel_name<S, moe::bf16, Arch>();
    case WType::q8_0:
      return moe::kernels::quant_kernel_name<BlockQ8_0, Arch>();
    case WType::q4_0:
      return moe::kernels::quant_kernel_name<BlockQ4_0, Arch>();
    case WType::q4_k:
      return moe::kernels::quant_kernel_name<BlockQ4_K, Arch>();
  }
  return "?";
}

/// Every expert's gate|up [2ff, d] and down [d, ff] in one storage type.
template <class M>
struct Weights {
  std::vector<M> gate_up, down;
  [[nodiscard]] std::size_t bytes(Index e) const {
    return gate_up[std::size_t(e)].bytes() + down[std::size_t(e)].bytes();
  }
};

void product(moe::MatrixRef<S> c, const moe::ConstMatrixRef<S>& a, const PackedMatrix<S>& w) {
  moe::kernels::packed_gemm<Arch>(c, a, w);
}
void product(moe::MatrixRef<S> c, const moe::ConstMatrixRef<S>& a, const PackedMatrix<moe::bf16>& w) {
  moe::kernels::packed_gemm<Arch>(c, a, w);
}
template <class Block>
void product(moe::MatrixRef<S> c, const moe::ConstMatrixRef<S>& a, const QuantMatrix<Block>& w) {
  moe::kernels::quant_gemm<Arch>(c, a, w);
}

/// One iteration: every expert's products on its slab.
template <class M>
void run_experts(const Weights<M>& w, Slabs& s, Index ff) {
  const moe::kernels::SiluMul<Arch> glu{};
  moe_bench::for_each_slab(s, [&](Index e, Index b, Index n) {
    moe::MatrixRef<S> he = s.hidden.middleRows(b, n);
    product(he.leftCols(2 * ff), s.x.middleRows(b, n), w.gate_up[std::size_t(e)]);
    for (Index r = 0; r < n; ++r) {
      S* row = he.row(r).data();
      glu(row, row + ff, row + 2 * ff, ff);
    }
    product(s.y.middleRows(b, n), he.middleCols(2 * ff, ff), w.down[std::size_t(e)]);
  });
}

/// The block type of a QuantMatrix (void for the packed float and bf16 weights).
template <class M>
struct block_of {
  using type = void;
};
template <class Block>
struct block_of<QuantMatrix<Block>> {
  using type = Block;
};

/// CPU time of quantizing the activations of one iteration (every slab's x rows for gate|up
/// and its silu(gate) * up rows for down), best of 2: the part of a quantized call that the
/// float kernels do not have. 0 for float and bf16 weights.
template <class M>
double activation_quantize_s(Slabs& s, Index ff) {
  using Block = typename block_of<M>::type;
  if constexpr (std::is_void_v<Block>) {
    return 0.0;
  } else {
    moe::kernels::QuantActivations<Block> act;
    double best = 1e300;
    for (int rep = 0; rep < 2; ++rep) {
      const double t0 = moe_bench::thread_cpu_seconds();
      moe_bench::for_each_slab(s, [&](Index, Index b, Index n) {
        act.quantize(s.x.middleRows(b, n));
        act.quantize(s.hidden.middleRows(b, n).middleCols(2 * ff, ff));
      });
      best = std::min(best, moe_bench::thread_cpu_seconds() - t0);
    }
    return best;
  }
}

/// One shape's weights in the five types and its routed slabs for every T. Built on the first
/// benchmark of the shape; the previous shape's bank is freed first (they run shape by shape).
struct Bank {
  const Shape* shape = nullptr;
  std::map<Index, Slabs> slabs;
  Weights<PackedMatrix<S>> f32;
  Weights<PackedMatrix<moe::bf16>> bf16;
  Weights<QuantMatrix<BlockQ8_0>> q8_0;
  Weights<QuantMatrix<BlockQ4_0>> q4_0;
  Weights<QuantMatrix<BlockQ4_K>> q4_k;
  double setup_s = 0;  // wall time of building it
};

template <class Layer>
void fill_bank(Bank& bank, const Shape& s, const std::vector<Index>& tokens) {
  // The layer of bench_shapes.hpp's make_layer (same router, seed 3), with N(0, 0.02) experts.
  moe::SwiGLUExperts<S> experts(s.num_experts, s.d_model, s.d_ff);
  moe_bench::fill_normal(experts.gate_up(), 1, kWeightStd);
  moe_bench::fill_normal(experts.down(), 2, kWeightStd);
  moe::SoftmaxTopKRouter<S> router(s.num_experts, s.d_model, s.top_k,
                                   moe::SoftmaxTopK<S>{.renormalize = s.renormalize});
  moe_bench::fill_normal(router.weight(), 3, 1.0 / std::sqrt(double(s.d_model)));
  const Layer layer(std::move(experts), std::move(router));
  for (const Index T : tokens) bank.slabs.emplace(T, moe_bench::route(layer, s, T));

  const auto& ex = layer.experts();
  const Index d = s.d_model, ff = s.d_ff;
  const auto E = std::size_t(s.num_experts);
  bank.f32.gate_up.resize(E);
  bank.f32.down.resize(E);
  bank.bf16.gate_up.resize(E);
  bank.bf16.down.resize(E);
  for (std::size_t e = 0; e < E; ++e) {
    const auto gu = ex.gate_up().middleRows(Index(e) * 2 * ff, 2 * ff);
    const auto dn = ex.down().middleRows(Index(e) * d, d);
    moe::kernels::pack_for<S, Arch>(bank.f32.gate_up[e], gu);
    moe::kernels::pack_for<S, Arch>(bank.f32.down[e], dn);
    moe::kernels::pack_for<S, Arch>(bank.bf16.gate_up[e], gu);
    moe::kernels::pack_for<S, Arch>(bank.bf16.down[e], dn);
    bank.q8_0.gate_up.push_back(QuantMatrix<BlockQ8_0>::quantize(gu));
    bank.q8_0.down.push_back(QuantMatrix<BlockQ8_0>::quantize(dn));
    bank.q4_0.gate_up.push_back(QuantMatrix<BlockQ4_0>::quantize(gu));
    bank.q4_0.down.push_back(QuantMatrix<BlockQ4_0>::quantize(dn));
    bank.q4_k.gate_up.push_back(QuantMatrix<BlockQ4_K>::quantize(gu));
    bank.q4_k.down.push_back(QuantMatrix<BlockQ4_K>::quantize(dn));
  }
}

struct Options {
  std::vector<Index> tokens{1, 4, 16, 32, 512, 2048};
  int calls = 30;           // timed calls per repetition at T <= 32 (fewer above)
  Index sweep_mib = 128;    // read before each call: 4x the 32 MiB L3 here
  Index triad_mib = 128;    // per array, as moe_bench_decode
  int triad_reps = 30;
};

/// Run-wide state the benchmarks share.
struct RunState {
  Options opt;
  moe_bench::Triad triad;
  std::unique_ptr<moe_bench::CacheSweep> sweep;
  std::unique_ptr<Bank> bank;
  // F32's result and its fastest mean call time at the (shape, T) being run, for vs_F32 and
  // max_rel_diff of the types after it.
  std::string ref_key;
  RowMatrix<S> ref_y;
  double ref_s = 0;
};
RunState g_run;

Bank& bank_for(const Shape& s) {
  if (!g_run.bank || g_run.bank->shape != &s) {
    g_run.bank.reset();  // free the previous shape's weights first
    const double t0 = moe_bench::wall_seconds();
    auto bank = std::make_unique<Bank>();
    bank->shape = &s;
    if (&s == &kMixtralScaled)
      fill_bank<moe::MixtralMoE<S>>(*bank, s, g_run.opt.tokens);
    else
      fill_bank<moe::OlmoeMoE<S>>(*bank, s, g_run.opt.tokens);
    bank->setup_s = moe_bench::wall_seconds() - t0;
    std::fprintf(stderr, "moe_bench_quant: %s weights packed and quantized, slabs routed, in %.1f s\n", s.name,
                 bank->setup_s);
    g_run.bank = std::move(bank);
  }
  return *g_run.bank;
}

template <class M>
void bm_products(benchmark::State& state, const Shape* shape, Index T, WType type,
                 Weights<M> Bank::*member) {
  Bank& bank = bank_for(*shape);
  Slabs& s = bank.slabs.at(T);
  const Weights<M>& w = bank.*member;
  const Index ff = shape->d_ff;
  const std::string key = std::string(shape->name) + "/" + std::to_string(T);

  run_experts(w, s, ff);  // warm-up: the thread's buffers, and the output compared below
  if (type == WType::f32) {
    if (g_run.ref_key != key) {
      g_run.ref_key = key;
      g_run.ref_s = 0;
    }
    g_run.ref_y = s.y;
  }
  double max_rel_diff = -1;
  if (type != WType::f32 && g_run.ref_key == key && g_run.ref_y.rows() == s.y.rows()) {
    const double scale = std::max<double>(g_run.ref_y.cwiseAbs().maxCoeff(), 1e-30);
    max_rel_diff = (s.y - g_run.ref_y).cwiseAbs().maxCoeff() / scale;
  }

  double timed = 0;
  std::int64_t calls = 0;
  for (auto _ : state) {
    state.PauseTiming();
    (*g_run.sweep)();
    state.ResumeTiming();
    const double t0 = moe_bench::thread_cpu_seconds();
    run_experts(w, s, ff);
    timed += moe_bench::thread_cpu_seconds() - t0;
    ++calls;
    benchmark::DoNotOptimize(s.y.data());
    benchmark::ClobberMemory();
  }
  const double mean_s = calls > 0 ? timed / double(calls) : 0;
  const double act_s = activation_quantize_s<M>(s, ff);
  if (type == WType::f32 && g_run.ref_key == key && mean_s > 0)
    g_run.ref_s = g_run.ref_s > 0 ? std::min(g_run.ref_s, mean_s) : mean_s;

  using benchmark::Counter;
  const double rows = double(s.rows());
  const double flops = rows * 2.0 * 3.0 * double(shape->d_model) * double(ff);
  state.counters["tok/s"] = Counter(double(T), Counter::kIsIterationInvariantRate);
  state.counters["GFLOP/s"] = Counter(flops * 1e-9, Counter::kIsIterationInvariantRate);
  state.counters["rows"] = Counter(rows);
  state.counters["experts"] = Counter(double(s.experts_used()));
  if (T <= 16) {
    double bytes = 0;
    moe_bench::for_each_slab(s, [&](Index e, Index, Index) { bytes += double(w.bytes(e)); });
    const double bound_s = bytes / (g_run.triad.gb_per_s() * 1e9);
    state.counters["weight_bytes"] = Counter(bytes);
    state.counters["GB/s"] = Counter(bytes * 1e-9, Counter::kIsIterationInvariantRate);
    state.counters["bw_ratio"] = Counter(bound_s, Counter::kIsIterationInvariantRate | Counter::kInvert);
  }
  if (T >= 512 && type != WType::f32 && g_run.ref_key == key && g_run.ref_s > 0)
    state.counters["vs_F32"] = Counter(g_run.ref_s, Counter::kIsIterationInvariantRate);
  if (max_rel_diff >= 0) state.counters["max_rel_diff"] = Counter(max_rel_diff);
  if (act_s > 0 && mean_s > 0) state.counters["act_quant_share"] = Counter(act_s / mean_s);
  state.SetLabel(kernel_name(type));
}

/// Forwards to the display reporter and keeps each benchmark's fastest repetition (CPU time
/// per iteration and counters) for the table printed at the end.
class TableReporter : public benchmark::BenchmarkReporter {
 public:
  struct Key {
    std::string shape;
    Index tokens;
    WType type;
  };

  TableReporter(benchmark::BenchmarkReporter* inner, std::vector<Key> keys) : inner_(inner), keys_(std::move(keys)) {}

  bool ReportContext(const Context& context) override { return inner_->ReportContext(context); }

  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& run : runs) {
      if (run.error_occurred || run.run_type != Run::RT_Iteration) continue;
      const double s = run.GetAdjustedCPUTime() / benchmark::GetTimeUnitMultiplier(run.time_unit);
      Best& b = best_[run.run_name.function_name];
      if (!b.seconds || s < *b.seconds) {
        b.seconds = s;
        b.counters = run.counters;
      }
    }
    inner_->ReportRuns(runs);
  }

  void Finalize() override {
    inner_->Finalize();
    std::ostream& out = dynamic_cast<benchmark::ConsoleReporter*>(inner_) != nullptr ? std::cout : std::cerr;
    print_table(out);
  }

 private:
  struct Best {
    std::optional<double> seconds;
    benchmark::UserCounters counters;
  };

  static std::string name(const Key& k) {
    return std::string(type_name(k.type)) + "/" + k.shape + "/T:" + std::to_string(k.tokens);
  }

  void print_table(std::ostream& out) const {
    if (best_.empty()) return;
    const double gbs = g_run.triad.gb_per_s();
    out << "\nExpert products by weight type, one thread, fastest repetition; STREAM triad " << std::fixed
        << std::setprecision(1) << gbs << " GB/s\n";
    out << std::left << std::setw(16) << "shape" << std::right << std::setw(6) << "T" << "  " << std::left
        << std::setw(6) << "type" << std::right << std::setw(11) << "ms" << std::setw(11) << "tokens/s" << std::setw(9)
        << "GFLOP/s" << std::setw(11) << "MB read" << std::setw(9) << "ratio" << std::setw(8) << "vs F32"
        << std::setw(10) << "rel diff" << std::setw(7) << "act q" << "  kernel\n";
    std::map<std::string, double> f32;
    for (const Key& k : keys_) {
      const auto it = best_.find(name(k));
      if (it == best_.end() || !it->second.seconds) continue;
      const double t = *it->second.seconds;
      const auto counter = [&](const char* c) -> std::optional<double> {
        const auto ci = it->second.counters.find(c);
        return ci == it->second.counters.end() ? std::nullopt : std::optional<double>(ci->second.value);
      };
      const std::string at = k.shape + "/" + std::to_string(k.tokens);
      if (k.type == WType::f32) f32[at] = t;
      const double rows = counter("rows").value_or(0);
      const auto shape = std::strcmp(k.shape.c_str(), kMixtralScaled.name) == 0 ? kMixtralScaled : kOlmoeScaled;
      const double flops = rows * 6.0 * double(shape.d_model) * double(shape.d_ff);
      out << std::left << std::setw(16) << k.shape << std::right << std::setw(6) << k.tokens << "  " << std::left
          << std::setw(6) << type_name(k.type) << std::right << std::fixed << std::setprecision(3) << std::setw(11)
          << t * 1e3 << std::setprecision(0) << std::setw(11) << double(k.tokens) / t << std::setprecision(1)
          << std::setw(9) << flops / t * 1e-9;
      const auto bytes = counter("weight_bytes");
      if (bytes)
        out << std::setw(11) << *bytes * 1e-6 << std::setprecision(3) << std::setw(9) << t / (*bytes / (gbs * 1e9));
      else
        out << std::setw(11) << "-" << std::setw(9) << "-";
      const auto f = f32.find(at);
      if (k.tokens >= 512 && k.type != WType::f32 && f != f32.end())
        out << std::setprecision(2) << std::setw(8) << f->second / t;
      else
        out << std::setw(8) << "-";
      const auto diff = counter("max_rel_diff");
      if (diff) {
        std::ostringstream d;
        d << std::scientific << std::setprecision(1) << *diff;
        out << std::setw(10) << d.str();
      } else {
        out << std::setw(10) << "-";
      }
      const auto share = counter("act_quant_share");
      if (share)
        out << std::setprecision(0) << std::setw(6) << *share * 100 << "%";
      else
        out << std::setw(7) << "-";
      out << "  " << kernel_name(k.type) << "\n";
    }
    out << "ratio = time / (bytes of the selected experts' weights / triad bandwidth), T <= 16 (goal <= 1.3);\n"
           "vs F32 = F32 time / this time, T >= 512 (goal for Q8_0 >= 2 with VNNI); rel diff = max |y - y_F32| /\n"
           "max |y_F32| over the slabs; act q = the share of a call spent quantizing its activation rows\n"
           "(timed apart); weights evicted from the caches before every call\n"
        << std::flush;
  }

  benchmark::BenchmarkReporter* inner_;
  std::vector<Key> keys_;
  std::map<std::string, Best> best_;
};

void print_help() {
  benchmark::PrintDefaultHelp();
  std::fprintf(stdout,
               "  --tokens 1,4,16,32,512,2048   token counts T\n"
               "  --calls N        timed calls per repetition at T <= 32 (default 30; N * 64 / T above, at least 2)\n"
               "  --sweep-mib M    MiB read before every call to evict the weights (default 128)\n"
               "  --triad-mib M    MiB per STREAM-triad array (default 128)\n"
               "  --triad-reps N   triad passes, the best kept (default 30)\n");
}

/// Takes this program's options out of argv (Google Benchmark's stay).
Options parse(std::vector<std::string>& args) {
  Options o;
  std::vector<std::string> rest;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    const auto value = [&]() -> std::string {
      if (i + 1 >= args.size()) throw std::invalid_argument("option " + a + " needs a value");
      return args[++i];
    };
    if (a == "--tokens") {
      o.tokens.clear();
      std::stringstream list(value());
      for (std::string t; std::getline(list, t, ',');) o.tokens.push_back(std::stoll(t));
    } else if (a == "--calls") {
      o.calls = std::stoi(value());
    } else if (a == "--sweep-mib") {
      o.sweep_mib = std::stoll(value());
    } else if (a == "--triad-mib") {
      o.triad_mib = std::stoll(value());
    } else if (a == "--triad-reps") {
      o.triad_reps = std::stoi(value());
    } else {
      rest.push_back(a);
    }
  }
  if (o.tokens.empty() || o.calls < 1 || o.sweep_mib < 1 || o.triad_mib < 1 || o.triad_reps < 1)
    throw std::invalid_argument("--tokens must be non-empty, --calls, --sweep-mib, --triad-mib, --triad-reps >= 1");
  for (const Index t : o.tokens)
    if (t < 1) throw std::invalid_argument("--tokens: every T must be >= 1");
  args = std::move(rest);
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> user(argv + 1, argv + argc);
  try {
    g_run.opt = parse(user);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe_bench_quant: %s\n", e.what());
    return 2;
  }
  // Fixed iteration counts (below) instead of --benchmark_min_time: the cache sweep before
  // each call is untimed, and min_time would count only the timed part.
  std::vector<std::string> args = {argv[0]};
  args.insert(args.end(), user.begin(), user.end());
  std::vector<char*> cargs;
  for (std::string& a : args) cargs.push_back(a.data());
  cargs.push_back(nullptr);
  int cargc = static_cast<int>(args.size());
  benchmark::Initialize(&cargc, cargs.data(), print_help);
  if (benchmark::ReportUnrecognizedArguments(cargc, cargs.data())) return 1;

  const Options& o = g_run.opt;
  g_run.triad = moe_bench::stream_triad(o.triad_mib, o.triad_reps);
  g_run.sweep = std::make_unique<moe_bench::CacheSweep>(o.sweep_mib);
  std::fprintf(stderr, "moe_bench_quant: STREAM triad %.2f GB/s (CPU time; %.2f wall), %lld MiB per array, best of %d\n",
               g_run.triad.gb_per_s(), g_run.triad.gb_per_s_wall(), static_cast<long long>(o.triad_mib), o.triad_reps);

  benchmark::AddCustomContext("moe_kernel_arch", moe::kernels::arch_name<Arch>());
  benchmark::AddCustomContext("quant_path", moe::kernels::quant_path_name(moe::kernels::quant_path<Arch>()));
  for (const WType t : kTypes) benchmark::AddCustomContext(std::string("kernel_") + type_name(t), kernel_name(t));
  benchmark::AddCustomContext("triad_gb_per_s", moe_bench::json_number(g_run.triad.gb_per_s()));
  benchmark::AddCustomContext("triad_gb_per_s_wall", moe_bench::json_number(g_run.triad.gb_per_s_wall()));
  benchmark::AddCustomContext("triad_mib_per_array", std::to_string(o.triad_mib));
  benchmark::AddCustomContext("sweep_mib", std::to_string(o.sweep_mib));
  benchmark::AddCustomContext("weights", "N(0, 0.02), quantized by QuantMatrix<Block>::quantize");

  // Shape by shape (one bank in memory at a time), T by T, F32 first (the reference of the
  // others' vs_F32 and max_rel_diff).
  std::vector<TableReporter::Key> keys;
  for (const Shape* shape : {&kMixtralScaled, &kOlmoeScaled}) {
    for (const Index T : o.tokens) {
      const std::int64_t iters = T <= 32 ? o.calls : std::max<std::int64_t>(2, std::int64_t(o.calls) * 64 / T);
      for (const WType type : kTypes) {
        keys.push_back({shape->name, T, type});
        const std::string name = std::string(type_name(type)) + "/" + shape->name + "/T:" + std::to_string(T);
        benchmark::internal::Benchmark* b = nullptr;
        switch (type) {
          case WType::f32:
            b = benchmark::RegisterBenchmark(name.c_str(), bm_products<PackedMatrix<S>>, shape, T, type, &Bank::f32);
            break;
          case WType::bf16:
            b = benchmark::RegisterBenchmark(name.c_str(), bm_products<PackedMatrix<moe::bf16>>, shape, T, type,
                                             &Bank::bf16);
            break;
          case WType::q8_0:
            b = benchmark::RegisterBenchmark(name.c_str(), bm_products<QuantMatrix<BlockQ8_0>>, shape, T, type,
                                             &Bank::q8_0);
            break;
          case WType::q4_0:
            b = benchmark::RegisterBenchmark(name.c_str(), bm_products<QuantMatrix<BlockQ4_0>>, shape, T, type,
                                             &Bank::q4_0);
            break;
          case WType::q4_k:
            b = benchmark::RegisterBenchmark(name.c_str(), bm_products<QuantMatrix<BlockQ4_K>>, shape, T, type,
                                             &Bank::q4_k);
            break;
        }
        b->Iterations(iters)->Unit(benchmark::kMillisecond);
      }
    }
  }

  TableReporter reporter(benchmark::CreateDefaultDisplayReporter(), std::move(keys));
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  return 0;
}
