// Measuring helpers for the expert-product benchmarks: a thread CPU clock, the STREAM-triad
// bandwidth (moe_bench_decode's method), a read sweep that takes weights out of the caches,
// and the routed slabs of one batch (moe_bench_products' method). moe_bench_quant uses them;
// decode_bench.cpp and products_bench.cpp still hold their own copies of the same code.
#ifndef MOE_BENCH_BENCH_MEASURE_HPP
#define MOE_BENCH_BENCH_MEASURE_HPP

#include <moe/moe.hpp>

#include "bench_shapes.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <cstddef>
#include <cstdint>
#include <ctime>
#include <memory>
#include <stdexcept>
#include <vector>

namespace moe_bench {

/// CPU time of the calling thread, in seconds (what the benchmarks report: another process
/// taking the core does not count).
inline double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

inline double wall_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

/// STREAM triad, a[i] = b[i] + s c[i] on three double arrays of `mib` MiB each (far larger than
/// the last-level cache), best of `reps` passes; bytes = 3 n 8 (STREAM's count: two reads and
/// one write, write-allocate traffic not counted). The method of moe_bench_decode.
struct Triad {
  double bytes_per_pass = 0;
  double best_cpu_s = 1e300;
  double best_wall_s = 1e300;
  [[nodiscard]] double gb_per_s() const { return bytes_per_pass / best_cpu_s * 1e-9; }
  [[nodiscard]] double gb_per_s_wall() const { return bytes_per_pass / best_wall_s * 1e-9; }
};

inline Triad stream_triad(moe::Index mib, int reps) {
  const std::size_t n = std::size_t(mib) * 1024 * 1024 / sizeof(double);
  std::unique_ptr<double[]> a(new double[n]), b(new double[n]), c(new double[n]);
  for (std::size_t i = 0; i < n; ++i) {  // the pages exist before timing
    a[i] = 0.0;
    b[i] = 1.0 + double(i % 7);
    c[i] = 2.0 - double(i % 5);
  }
  const double s = 3.0;
  Triad r;
  r.bytes_per_pass = 3.0 * double(n) * sizeof(double);
  double* __restrict pa = a.get();
  const double* __restrict pb = b.get();
  const double* __restrict pc = c.get();
  for (int rep = 0; rep < reps; ++rep) {
    const double c0 = thread_cpu_seconds(), w0 = wall_seconds();
    for (std::size_t i = 0; i < n; ++i) pa[i] = pb[i] + s * pc[i];
    const double c1 = thread_cpu_seconds(), w1 = wall_seconds();
    r.best_cpu_s = std::min(r.best_cpu_s, c1 - c0);
    r.best_wall_s = std::min(r.best_wall_s, w1 - w0);
  }
  double check = 0;  // keeps the passes: their results are read
  for (std::size_t i = 0; i < n; i += 4096) check += pa[i];
  if (!std::isfinite(check)) throw std::runtime_error("triad produced a non-finite value");
  return r;
}

/// Reads a buffer of `mib` MiB, one load per cache line, so whatever the caches held before
/// (the weights of the previous call) is evicted. Reads only: the evicted lines are clean, so
/// the next timed call pays no write-back for them.
class CacheSweep {
 public:
  explicit CacheSweep(moe::Index mib) : words_(std::size_t(mib) * 1024 * 1024 / sizeof(std::uint64_t), 1) {}
  void operator()() {
    std::uint64_t sum = 0;
    const std::uint64_t* p = words_.data();
    for (std::size_t i = 0; i < words_.size(); i += 8) sum += p[i];
    sink_ = sink_ + sum;
  }
  [[nodiscard]] std::size_t bytes() const noexcept { return words_.size() * sizeof(std::uint64_t); }

 private:
  std::vector<std::uint64_t> words_;
  volatile std::uint64_t sink_ = 0;
};

/// The slabs of one routed batch (expert e's rows are [offsets[e], offsets[e + 1]) of x) and
/// buffers for their products: hidden [N, 3 ff] (gate | up | silu(gate) * up), y [N, d].
struct Slabs {
  std::vector<moe::Index> offsets;  // E + 1
  moe::RowMatrix<float> x;          // x_perm [N, d]
  moe::RowMatrix<float> hidden;
  moe::RowMatrix<float> y;

  [[nodiscard]] moe::Index rows() const noexcept { return x.rows(); }
  [[nodiscard]] moe::Index experts_used() const {
    moe::Index n = 0;
    for (std::size_t e = 0; e + 1 < offsets.size(); ++e) n += offsets[e + 1] > offsets[e] ? 1 : 0;
    return n;
  }
};

/// f(e, b, n) for every expert e with rows: its slab is rows [b, b + n) of s.
template <class F>
void for_each_slab(const Slabs& s, F&& f) {
  for (std::size_t e = 0; e + 1 < s.offsets.size(); ++e) {
    const moe::Index b = s.offsets[e];
    const moe::Index n = s.offsets[e + 1] - b;
    if (n > 0) f(moe::Index(e), b, n);
  }
}

/// The slabs the layer builds for T tokens of N(0, 1) input (seed 100 + T, as
/// moe_bench_products): one forward, then its plan's offsets and gathered rows.
template <class Layer>
Slabs route(const Layer& layer, const Shape& shape, moe::Index T) {
  moe::RowMatrix<float> x(T, shape.d_model);
  fill_normal(x, 100 + std::uint64_t(T), 1.0);
  moe::RowMatrix<float> out(T, shape.d_model);
  moe::Workspace<float> ws;
  layer.forward(x, out, ws);
  if (const char* path = std::getenv("MOE_BENCH_ROUTING")) {
    // The routing, for a peer that runs the same products (bench/peers/ggml_moe.cpp): one line
    // "shape T k" and each token's experts in token order.
    std::ofstream f(path, std::ios::app);
    const auto& rr = ws.routing;
    const moe::Index k = static_cast<moe::Index>(rr.token.size()) / T;
    f << shape.name << ' ' << T << ' ' << k;
    for (moe::Index t = 0; t < T; ++t)
      for (std::size_t i = 0; i < rr.token.size(); ++i)
        if (rr.token[i] == t) f << ' ' << rr.expert[i];
    f << '\n';
  }
  Slabs s;
  s.offsets = ws.plan.offsets;
  s.x = ws.x_perm;
  s.hidden.resize(s.x.rows(), 3 * shape.d_ff);
  s.y.resize(s.x.rows(), shape.d_model);
  return s;
}

}  // namespace moe_bench

#endif  // MOE_BENCH_BENCH_MEASURE_HPP
