// moe_bench_decode: how close decode-sized forwards (T = 1, 4, 16) get to the memory-bandwidth
// bound.
//
//   moe_bench_decode [--reps N] [--triad-reps N] [--triad-mib M] [--json FILE]
//
// A decode step reads the router and the k selected experts' weights once and does little
// arithmetic on them, so its floor is bytes / bandwidth. The program measures both in one run:
//   1. STREAM triad, a[i] = b[i] + s * c[i] on three double arrays far larger than the last-level
//      cache, best of --triad-reps passes; bandwidth = 3 * n * 8 bytes / time (STREAM's count:
//      two reads and one write, write-allocate traffic not counted);
//   2. the T = 1, 4 and 16 forwards of the Mixtral-like and OLMoE-like layers of
//      moe_bench_forward, --reps calls each, every call on the next T of 64 different tokens so
//      the selected experts change;
// and prints ratio = latency / ((n * 3 * d * ff + E * d) * 4 bytes / bandwidth), n the number of
// distinct experts the call's tokens selected (k at T = 1), for the call with the best ratio.
// 1.0 means the forward streams the weights it needs once, as fast as triad streams its arrays;
// issue #5 asks for <= 1.3 at T = 1 (ratio c). At T > 1 the row-wise kernel (kernels::gemm,
// at most 32 rows per expert) still reads each selected expert's weights once for all the
// tokens that chose it, so the same bound applies.
//
// A plain main rather than Google Benchmark: the ratio combines two different measurements
// (a bandwidth and a latency), each a best-of-N of one call, into one number per shape, and
// Google Benchmark's iteration-count heuristics and reporters add nothing to a best-of-N
// of calls that each take milliseconds; a reporter would only be needed to get both numbers back.
// Times are CPU time of this thread (as the other benchmarks report), so another process
// taking the core does not count; wall time is recorded in the JSON beside it.
#include <moe/kernels/arch.hpp>
#include <moe/moe.hpp>

#include "bench_shapes.hpp"

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using S = float;
using moe::Index;

using moe_bench::fill_normal;
using moe_bench::json_number;
using moe_bench::kMixtralScaled;
using moe_bench::kOlmoeScaled;
using moe_bench::Shape;

struct Options {
  int reps = 200;         // forwards per shape and T; the best ratio is kept
  int triad_reps = 20;    // triad passes; the best one is kept
  Index triad_mib = 128;  // per array: 4x the 32 MiB L3 here, as STREAM asks
  std::string json_path;
};

/// A pair of clocks read together: CPU time of this thread and wall time.
struct Stamp {
  double cpu;
  double wall;
};

Stamp now() {
  timespec c{}, w{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c);
  clock_gettime(CLOCK_MONOTONIC, &w);
  return {double(c.tv_sec) + 1e-9 * double(c.tv_nsec), double(w.tv_sec) + 1e-9 * double(w.tv_nsec)};
}

/// Best (shortest) CPU and wall times over the samples, and the median CPU time.
struct Best {
  double cpu = 1e300;
  double wall = 1e300;
  std::vector<double> cpu_samples;

  void add(const Stamp& a, const Stamp& b) {
    cpu = std::min(cpu, b.cpu - a.cpu);
    wall = std::min(wall, b.wall - a.wall);
    cpu_samples.push_back(b.cpu - a.cpu);
  }
  [[nodiscard]] double median_cpu() const {
    std::vector<double> v = cpu_samples;
    std::sort(v.begin(), v.end());
    return v.empty() ? 0.0 : v[v.size() / 2];
  }
};

struct TriadResult {
  double bytes_per_pass;
  Best time;
  [[nodiscard]] double gb_per_s() const { return bytes_per_pass / time.cpu * 1e-9; }
  [[nodiscard]] double gb_per_s_wall() const { return bytes_per_pass / time.wall * 1e-9; }
};

/// STREAM triad. The arrays are written once before timing so their pages exist; the checksum
/// keeps the compiler from dropping passes whose results are never read.
TriadResult triad(const Options& o) {
  const std::size_t n = std::size_t(o.triad_mib) * 1024 * 1024 / sizeof(double);
  std::unique_ptr<double[]> a(new double[n]), b(new double[n]), c(new double[n]);
  for (std::size_t i = 0; i < n; ++i) {
    a[i] = 0.0;
    b[i] = 1.0 + double(i % 7);
    c[i] = 2.0 - double(i % 5);
  }
  const double s = 3.0;
  TriadResult r{3.0 * double(n) * sizeof(double), {}};
  double* __restrict pa = a.get();
  const double* __restrict pb = b.get();
  const double* __restrict pc = c.get();
  for (int rep = 0; rep < o.triad_reps; ++rep) {
    const Stamp t0 = now();
    for (std::size_t i = 0; i < n; ++i) pa[i] = pb[i] + s * pc[i];
    const Stamp t1 = now();
    r.time.add(t0, t1);
  }
  double check = 0;
  for (std::size_t i = 0; i < n; i += 4096) check += pa[i];
  if (!std::isfinite(check)) throw std::runtime_error("triad produced a non-finite value");
  return r;
}

struct DecodeResult {
  const Shape* shape;
  Index tokens;
  double weight_bytes;  // of the best call: its distinct selected experts (gate, up, down) + router
  Best time;            // latency over all calls (best and median)
  double best_ratio_latency = 0;  // latency of the call with the best ratio
  double best_ratio_bound_bytes = 0;
  moe::ComputeType compute = moe::ComputeType::native;
};

template <class Layer>
DecodeResult decode(const Shape& s, Index T, const Options& o, moe::ComputeType compute) {
  Layer layer = moe_bench::make_layer<Layer>(s);
  layer.experts().set_compute(compute);

  // 64 different tokens, used in turn: the selected experts change from call to call as in
  // decoding, and the weights (277 MB, 403 MB) cannot stay in the 32 MiB cache between calls.
  constexpr Index kTokens = 64;
  moe::RowMatrix<S> x(kTokens, s.d_model);
  fill_normal(x, 100, 1.0);
  moe::RowMatrix<S> y(T, s.d_model);
  moe::Workspace<S> ws;
  layer.forward(x.topRows(T), y, ws);  // sizes the workspace

  DecodeResult r{&s, T, 0.0, {}};
  r.compute = compute;
  // The bytes the products read: float weights, or their bf16 packed copies.
  const double expert_bytes = double(3 * s.d_model * s.d_ff) * (compute == moe::ComputeType::bf16 ? 2.0 : sizeof(S));
  const double router_bytes = double(s.num_experts * s.d_model) * sizeof(S);
  double best_ratio = 0;
  double check = 0;
  for (int rep = 0; rep < o.reps; ++rep) {
    const Index t = (rep * T) % (kTokens - T + 1);
    const Stamp t0 = now();
    layer.forward(x.middleRows(t, T), y, ws);
    const Stamp t1 = now();
    r.time.add(t0, t1);
    check += double(y(0, 0));
    Index distinct = 0;
    for (const Index load : ws.stats.expert_load) distinct += load > 0 ? 1 : 0;
    const double bytes = double(distinct) * expert_bytes + router_bytes;
    const double latency = t1.cpu - t0.cpu;
    // Ratio up to the bandwidth, which is the same for every call: latency / bytes.
    const double ratio = latency / bytes;
    if (rep == 0 || ratio < best_ratio) {
      best_ratio = ratio;
      r.best_ratio_latency = latency;
      r.best_ratio_bound_bytes = bytes;
    }
  }
  r.weight_bytes = r.best_ratio_bound_bytes;
  if (!std::isfinite(check)) throw std::runtime_error(std::string(s.name) + ": forward produced a non-finite value");
  return r;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument("option " + a + " needs a value");
      return argv[++i];
    };
    if (a == "--reps")
      o.reps = std::stoi(value());
    else if (a == "--triad-reps")
      o.triad_reps = std::stoi(value());
    else if (a == "--triad-mib")
      o.triad_mib = std::stol(value());
    else if (a == "--json")
      o.json_path = value();
    else if (a == "--help" || a == "-h") {
      std::printf("usage: %s [--reps N] [--triad-reps N] [--triad-mib M] [--json FILE]\n", argv[0]);
      std::exit(0);
    } else
      throw std::invalid_argument("unknown option " + a);
  }
  if (o.reps < 1 || o.triad_reps < 1 || o.triad_mib < 1)
    throw std::invalid_argument("--reps, --triad-reps and --triad-mib must be >= 1");
  return o;
}

const char* compute_name(moe::ComputeType c) { return c == moe::ComputeType::bf16 ? "bf16" : "float"; }

}  // namespace

int main(int argc, char** argv) {
  Options o;
  try {
    o = parse(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe_bench_decode: %s\n", e.what());
    return 2;
  }

  // Triad first, then both layers, then triad again: the bandwidth used is the better of the
  // two, so a burst of load from other processes at one end of the run does not set the floor.
  TriadResult bw = triad(o);
  std::vector<DecodeResult> rows;
  for (const moe::ComputeType compute : {moe::ComputeType::native, moe::ComputeType::bf16})
    for (const Index T : {Index{1}, Index{4}, Index{16}}) {
      rows.push_back(decode<moe::MixtralMoE<S>>(kMixtralScaled, T, o, compute));
      rows.push_back(decode<moe::OlmoeMoE<S>>(kOlmoeScaled, T, o, compute));
    }
  const TriadResult bw2 = triad(o);
  if (bw2.time.cpu < bw.time.cpu) bw = bw2;

  const double gbs = bw.gb_per_s();
  std::printf("STREAM triad: %.2f GB/s (CPU time), %.2f GB/s (wall), %lld MiB per array, best of %d\n", gbs,
              bw.gb_per_s_wall(), static_cast<long long>(o.triad_mib), 2 * o.triad_reps);
  std::printf("kernels %s, Eigen %s\n\n", moe::kernels::arch_name<>(), Eigen::SimdInstructionSetsInUse());
  std::printf("packed kernels: float %s, bf16 %s\n\n", moe::kernels::packed_kernel_name<S, S>().c_str(),
              moe::kernels::packed_kernel_name<S, moe::bf16>().c_str());
  std::printf("%-16s %-7s %4s %10s %12s %12s %12s %8s\n", "shape", "weights", "T", "MB read", "latency us", "median us",
              "bound us", "ratio");
  for (const DecodeResult& r : rows) {
    const double bound = r.weight_bytes / (gbs * 1e9);
    std::printf("%-16s %-7s %4lld %10.1f %12.1f %12.1f %12.1f %8.3f\n", r.shape->name, compute_name(r.compute),
                static_cast<long long>(r.tokens),
                r.weight_bytes * 1e-6, r.best_ratio_latency * 1e6, r.time.median_cpu() * 1e6, bound * 1e6,
                r.best_ratio_latency / bound);
  }
  std::printf("ratio = forward latency / (bytes of the distinct selected experts + router / triad bandwidth),\n"
              "        for the call with the best ratio; ratio c of issue #5 is the T = 1 row\n");

  if (!o.json_path.empty()) {
    std::ofstream f(o.json_path);
    f << "{\n  \"context\": {\"moe_kernel_arch\": \"" << moe::kernels::arch_name<>() << "\", \"eigen_simd\": \""
      << Eigen::SimdInstructionSetsInUse() << "\", \"reps\": " << o.reps << ", \"triad_reps\": " << 2 * o.triad_reps
      << ", \"triad_mib_per_array\": " << o.triad_mib << "},\n";
    f << "  \"triad\": {\"bytes_per_pass\": " << json_number(bw.bytes_per_pass)
      << ", \"best_cpu_s\": " << json_number(bw.time.cpu) << ", \"best_wall_s\": " << json_number(bw.time.wall)
      << ", \"gb_per_s\": " << json_number(gbs) << ", \"gb_per_s_wall\": " << json_number(bw.gb_per_s_wall())
      << "},\n  \"decode\": [\n";
    for (std::size_t i = 0; i < rows.size(); ++i) {
      const DecodeResult& r = rows[i];
      const Shape& s = *r.shape;
      const double bound = r.weight_bytes / (gbs * 1e9);
      f << "    {\"shape\": \"" << s.name << "\", \"weights\": \"" << compute_name(r.compute) << "\", \"tokens\": " << r.tokens << ", \"d_model\": " << s.d_model << ", \"d_ff\": " << s.d_ff
        << ", \"experts\": " << s.num_experts << ", \"top_k\": " << s.top_k
        << ", \"weight_bytes\": " << json_number(r.weight_bytes)
        << ", \"latency_s\": " << json_number(r.best_ratio_latency)
        << ", \"latency_wall_s\": " << json_number(r.time.wall)
        << ", \"median_latency_s\": " << json_number(r.time.median_cpu()) << ", \"bound_s\": " << json_number(bound)
        << ", \"ratio\": " << json_number(r.best_ratio_latency / bound) << "}" << (i + 1 < rows.size() ? "," : "") << "\n";
    }
    f << "  ]\n}\n";
    if (!f) {
      std::fprintf(stderr, "moe_bench_decode: could not write %s\n", o.json_path.c_str());
      return 1;
    }
  }
  return 0;
}
