// moe_bench_products: the expert products against the machine's FMA peak and the other
// kernels, in one run (issue #11 item 5; bench/README.md).
//
//   ./moe_bench_products [--reps N] [--tokens 1,4,16,32,512,2048] [--json FILE]
//
// 1. FMA peak: float fused multiply-adds on independent register accumulators, the
//    instruction the packed kernel runs (kernels::detail::madd on the default architecture).
// 2. For each scaled shape and T: the layer routes x once; then the experts' products on the
//    slabs it built (gate|up GEMM, SwiGLU, down GEMM), on one thread, timed as
//      packed     SwiGLUExperts::forward, ComputeType::native (kernels::packed_gemm)
//      bf16       the same bank with ComputeType::bf16
//      gemm       kernels::gemm, the library's previous path (Eigen's GEMM, the row-wise
//                 kernel at <= 32 rows)
//      openblas   cblas_sgemm on the same products (built only where CMake finds OpenBLAS)
//    best CPU time of --reps calls; GFLOP/s of the expert FLOPs, the fraction of the peak,
//    and the whole layer's forward (route, dispatch, experts, combine) in float and bf16, in
//    tokens/s, for the PyTorch peer's rows (bench/peers/torch_moe.py) to compare against.
#include <moe/kernels/arch.hpp>
#include <moe/kernels/packed_gemm.hpp>
#include <moe/moe.hpp>

#include "bench_shapes.hpp"

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <functional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(MOE_BENCH_OPENBLAS)
extern "C" {
void cblas_sgemm(int order, int trans_a, int trans_b, int m, int n, int k, float alpha, const float* a, int lda,
                 const float* b, int ldb, float beta, float* c, int ldc);
void openblas_set_num_threads(int n);
char* openblas_get_corename();
}
#endif

namespace {

using S = float;
using moe::Index;
using moe::RowMatrix;
using moe_bench::json_number;
using moe_bench::kMixtralScaled;
using moe_bench::kOlmoeScaled;
using moe_bench::Shape;

double cpu_now() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

/// Best CPU time of reps calls of f, after one warm-up call.
double best_of(int reps, const std::function<void()>& f) {
  f();
  double best = 1e30;
  for (int i = 0; i < reps; ++i) {
    const double t0 = cpu_now();
    f();
    best = std::min(best, cpu_now() - t0);
  }
  return best;
}

MOE_KERNELS_BEGIN_SIMD_CODE

/// GFLOP/s of float FMAs on 24 independent accumulators (the packed kernel's register tile
/// on AVX-512; more than latency x throughput on every x86 core), best of 5.
double fma_peak() {
  using Arch = xsimd::default_arch;
  using V = xsimd::batch<S, Arch>;
  constexpr int kAcc = 24;
  constexpr long kIters = 20'000'000;
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    V acc[kAcc];
    for (int i = 0; i < kAcc; ++i) acc[i] = V(S(i) * S(1e-3));
    const V a(S(0.999999f));
    const V b(S(1e-7f));
    const double t0 = cpu_now();
    for (long it = 0; it < kIters; ++it) {
#pragma GCC unroll 24
      for (int i = 0; i < kAcc; ++i) acc[i] = moe::kernels::detail::madd<Arch>(acc[i], a, b);
    }
    const double t = cpu_now() - t0;
    S sink = 0;
    for (int i = 0; i < kAcc; ++i) sink += xsimd::hadd(acc[i]);
    if (!std::isfinite(sink)) throw std::runtime_error("fma_peak: non-finite");
    best = std::max(best, 2.0 * double(V::size) * kAcc * double(kIters) / t * 1e-9);
  }
  return best;
}

MOE_KERNELS_END_SIMD_CODE

/// The slabs of one routed batch, and buffers for the products.
struct Slabs {
  std::vector<Index> offsets;  // E + 1
  RowMatrix<S> x;              // x_perm [N, d]
  RowMatrix<S> hidden;         // [N, 3 ff]
  RowMatrix<S> y;              // [N, d]
  double flops = 0;
};

/// f(e, b, n) for every expert e with rows: its slab is rows [b, b + n) of s.
template <class F>
void for_each_slab(Index num_experts, const Slabs& s, F&& f) {
  for (Index e = 0; e < num_experts; ++e) {
    const Index b = s.offsets[std::size_t(e)];
    const Index n = s.offsets[std::size_t(e) + 1] - b;
    if (n > 0) f(e, b, n);
  }
}

/// The previous path: kernels::gemm in SwiGLUExperts' form on the checkpoint layout.
void gemm_experts(const moe::SwiGLUExperts<S>& bank, Slabs& s) {
  const Index d = bank.input_dim();
  const Index ff = bank.d_ff();
  const moe::kernels::SiluMul<xsimd::default_arch> glu{};
  for_each_slab(bank.num_experts(), s, [&](Index e, Index b, Index n) {
    moe::MatrixRef<S> he = s.hidden.middleRows(b, n);
    moe::kernels::gemm(he.leftCols(2 * ff), s.x.middleRows(b, n), moe::Op::none,
                       bank.gate_up().middleRows(e * 2 * ff, 2 * ff), moe::Op::transpose, S(1), S(0));
    for (Index r = 0; r < n; ++r) {
      S* row = he.row(r).data();
      glu(row, row + ff, row + 2 * ff, ff);
    }
    moe::kernels::gemm(s.y.middleRows(b, n), he.middleCols(2 * ff, ff), moe::Op::none,
                       bank.down().middleRows(e * d, d), moe::Op::transpose, S(1), S(0));
  });
}

#if defined(MOE_BENCH_OPENBLAS)
void openblas_experts(const moe::SwiGLUExperts<S>& bank, Slabs& s) {
  constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;
  const Index d = bank.input_dim();
  const Index ff = bank.d_ff();
  const moe::kernels::SiluMul<xsimd::default_arch> glu{};
  for_each_slab(bank.num_experts(), s, [&](Index e, Index b, Index n) {
    S* h = s.hidden.row(b).data();
    const int ldh = int(s.hidden.cols());
    cblas_sgemm(kRowMajor, kNoTrans, kTrans, int(n), int(2 * ff), int(d), 1.0f, s.x.row(b).data(), int(d),
                bank.gate_up().row(e * 2 * ff).data(), int(d), 0.0f, h, ldh);
    for (Index r = 0; r < n; ++r) {
      S* row = h + r * ldh;
      glu(row, row + ff, row + 2 * ff, ff);
    }
    cblas_sgemm(kRowMajor, kNoTrans, kTrans, int(n), int(d), int(ff), 1.0f, h + 2 * ff, ldh,
                bank.down().row(e * d).data(), int(ff), 0.0f, s.y.row(b).data(), int(d));
  });
}
#endif

void bank_experts(const moe::SwiGLUExperts<S>& bank, Slabs& s) {
  for_each_slab(bank.num_experts(), s, [&](Index e, Index b, Index n) {
    bank.forward(e, s.x.middleRows(b, n), s.hidden.middleRows(b, n), s.y.middleRows(b, n));
  });
}

struct Row {
  std::string shape;
  Index tokens = 0;
  double flops = 0;
  double packed = 0, bf16 = 0, gemm = 0, openblas = 0;  // seconds (0: not run)
  double layer_float = 0, layer_bf16 = 0;              // seconds of a whole forward
  double bf16_error = 0;  // max |y_bf16 - y_float| / max |y_float| over the slabs
};

template <class Layer>
Row measure(const Shape& shape, Index T, int reps) {
  const Layer layer = moe_bench::make_layer<Layer>(shape);
  Layer layer16 = layer;
  layer16.experts().set_compute(moe::ComputeType::bf16);
  RowMatrix<S> x(T, shape.d_model);
  moe_bench::fill_normal(x, 100 + std::uint64_t(T), 1.0);
  RowMatrix<S> out(T, shape.d_model);
  moe::Workspace<S> ws;
  layer.forward(x, out, ws);
  Slabs s;
  s.offsets = ws.plan.offsets;
  s.x = ws.x_perm;
  const Index rows = s.x.rows();
  s.hidden.resize(rows, 3 * shape.d_ff);
  s.y.resize(rows, shape.d_model);
  Row r{shape.name, T};
  r.flops = double(rows) * 2.0 * 3.0 * double(shape.d_model) * double(shape.d_ff);
  const auto& bank = layer.experts();
  const auto& bank16 = layer16.experts();
  r.packed = best_of(reps, [&] { bank_experts(bank, s); });
  const RowMatrix<S> y32 = s.y;
  r.bf16 = best_of(reps, [&] { bank_experts(bank16, s); });
  const double scale = std::max<double>(y32.cwiseAbs().maxCoeff(), 1e-30);
  r.bf16_error = (s.y - y32).cwiseAbs().maxCoeff() / scale;
  r.gemm = best_of(reps, [&] { gemm_experts(bank, s); });
#if defined(MOE_BENCH_OPENBLAS)
  r.openblas = best_of(reps, [&] { openblas_experts(bank, s); });
#endif
  r.layer_float = best_of(reps, [&] { layer.forward(x, out, ws); });
  moe::Workspace<S> ws16;
  r.layer_bf16 = best_of(reps, [&] { layer16.forward(x, out, ws16); });
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 5;
  std::vector<Index> tokens{1, 4, 16, 32, 512, 2048};
  std::string json_path;
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      const auto value = [&]() -> std::string {
        if (i + 1 >= argc) throw std::invalid_argument("option " + a + " needs a value");
        return argv[++i];
      };
      if (a == "--reps") {
        reps = std::stoi(value());
      } else if (a == "--json") {
        json_path = value();
      } else if (a == "--tokens") {
        tokens.clear();
        std::stringstream list(value());
        for (std::string t; std::getline(list, t, ',');) tokens.push_back(std::stoll(t));
      } else if (a == "--help" || a == "-h") {
        std::printf("usage: %s [--reps N] [--tokens 1,4,16,32,512,2048] [--json FILE]\n", argv[0]);
        return 0;
      } else {
        throw std::invalid_argument("unknown option " + a);
      }
    }
    if (reps < 1 || tokens.empty()) throw std::invalid_argument("--reps must be >= 1 and --tokens non-empty");
    for (const Index t : tokens)
      if (t < 1) throw std::invalid_argument("--tokens: every T must be >= 1");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe_bench_products: %s\n", e.what());
    return 2;
  }
#if defined(MOE_BENCH_OPENBLAS)
  openblas_set_num_threads(1);
  const std::string blas = std::string("OpenBLAS ") + openblas_get_corename();
#else
  const std::string blas = "none (OpenBLAS not found at build time)";
#endif

  const double peak = fma_peak();
  std::vector<Row> rows;
  for (const Index T : tokens) {
    rows.push_back(measure<moe::MixtralMoE<S>>(kMixtralScaled, T, reps));
    rows.push_back(measure<moe::OlmoeMoE<S>>(kOlmoeScaled, T, reps));
  }
  const double peak_again = fma_peak();

  const std::string float_kernel = moe::kernels::packed_kernel_name<S, S>();
  const std::string bf16_kernel = moe::kernels::packed_kernel_name<S, moe::bf16>();
  std::printf("FMA peak (float, %s, 24 accumulators): %.1f GFLOP/s (again after the run: %.1f)\n",
              moe::kernels::arch_name<>(), peak, peak_again);
  std::printf("packed kernels: float %s, bf16 %s; gemm: Eigen %s; BLAS: %s\n\n", float_kernel.c_str(),
              bf16_kernel.c_str(), Eigen::SimdInstructionSetsInUse(), blas.c_str());
  std::printf("%-15s %5s | %8s %6s | %8s %6s %6s | %8s %6s | %8s %6s | %9s %9s | %8s\n", "shape", "T", "packed",
              "%peak", "bf16", "x pk", "err", "gemm", "pk/gm", "openblas", "pk/ob", "layer f32", "layer b16",
              "GFLOP");
  for (const Row& r : rows) {
    const auto gf = [&](double t) { return t > 0 ? r.flops / t * 1e-9 : 0.0; };
    std::printf("%-15s %5lld | %8.1f %5.1f%% | %8.1f %6.2f %6.1e | %8.1f %6.2f | %8.1f %6.2f | %7.0f/s %7.0f/s | %8.3f\n",
                r.shape.c_str(), static_cast<long long>(r.tokens), gf(r.packed), 100 * gf(r.packed) / peak,
                gf(r.bf16), r.packed / r.bf16, r.bf16_error, gf(r.gemm), r.gemm / r.packed, gf(r.openblas),
                r.openblas > 0 ? r.openblas / r.packed : 0.0, double(r.tokens) / r.layer_float,
                double(r.tokens) / r.layer_bf16, r.flops * 1e-9);
  }
  std::printf("GFLOP/s of the expert products on the routed slabs (one thread, best of %d); %%peak of the FMA\n"
              "peak; x pk = bf16 speed-up over packed float; err = bf16's max relative difference from float;\n"
              "pk/gm and pk/ob = packed's speed-up over kernels::gemm and OpenBLAS sgemm; layer = whole forward,\n"
              "tokens/s\n",
              reps);

  if (!json_path.empty()) {
    std::ofstream f(json_path);
    f << "{\n  \"context\": {\"moe_kernel_arch\": \"" << moe::kernels::arch_name<>() << "\", \"packed_float\": \""
      << float_kernel << "\", \"packed_bf16\": \"" << bf16_kernel << "\", \"eigen_simd\": \""
      << Eigen::SimdInstructionSetsInUse() << "\", \"blas\": \"" << blas << "\", \"reps\": " << reps
      << ", \"fma_peak_gflops\": " << json_number(std::max(peak, peak_again)) << "},\n  \"products\": [\n";
    for (std::size_t i = 0; i < rows.size(); ++i) {
      const Row& r = rows[i];
      f << "    {\"shape\": \"" << r.shape << "\", \"tokens\": " << r.tokens << ", \"flops\": " << json_number(r.flops)
        << ", \"packed_s\": " << json_number(r.packed) << ", \"bf16_s\": " << json_number(r.bf16)
        << ", \"gemm_s\": " << json_number(r.gemm) << ", \"openblas_s\": " << json_number(r.openblas)
        << ", \"layer_float_s\": " << json_number(r.layer_float) << ", \"layer_bf16_s\": " << json_number(r.layer_bf16)
        << ", \"bf16_max_rel_diff\": " << json_number(r.bf16_error) << "}" << (i + 1 < rows.size() ? "," : "") << "\n";
    }
    f << "  ]\n}\n";
    if (!f) {
      std::fprintf(stderr, "moe_bench_products: could not write %s\n", json_path.c_str());
      return 1;
    }
  }
  return 0;
}
