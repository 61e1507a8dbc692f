// The benchmark layers, shared by every program in bench/ so that each ratio of issue #5 is
// measured on the same shapes and the very same weights (bench/README.md).
#ifndef MOE_BENCH_BENCH_SHAPES_HPP
#define MOE_BENCH_BENCH_SHAPES_HPP

#include <moe/moe.hpp>

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <random>

namespace moe_bench {

using S = float;
using moe::Index;

/// Shapes named after real models (STYLE.md "Benchmarks"). The scaled ones keep each model's
/// expert count, top-k and gating, with d and ff cut so weights fit a small machine's memory
/// and one forward takes well under a second on one core.
struct Shape {
  const char* name;
  Index d_model;
  Index d_ff;
  Index num_experts;
  Index top_k;
  bool renormalize;  // Mixtral renormalises the top-k gates; OLMoE (norm_topk_prob = false) does not
};

inline constexpr Shape kMixtralScaled{"mixtral-scaled", 1024, 2816, 8, 2, true};
inline constexpr Shape kOlmoeScaled{"olmoe-scaled", 1024, 512, 64, 8, false};
inline constexpr Shape kMixtral8x7b{"mixtral-8x7b", 4096, 14336, 8, 2, true};  // 5.6 GB of float weights
inline constexpr Shape kOlmoe1b7b{"olmoe-1b-7b", 2048, 1024, 64, 8, false};     // 1.6 GB

/// v for a JSON file: 9 significant digits.
inline std::string json_number(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

/// Fills m with N(0, scale^2). A plain Mersenne twister: the weights only need to look like an
/// initialisation, and generating a few hundred million of them must stay quick.
template <class Derived>
void fill_normal(Eigen::MatrixBase<Derived>& m, std::uint64_t seed, double scale) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<S> dist(S(0), static_cast<S>(scale));
  S* p = m.derived().data();
  const Index n = m.size();
  for (Index i = 0; i < n; ++i) p[i] = dist(gen);
}

/// The layer of a shape: SwiGLU experts and a softmax top-k router with N(0, 1/fan_in) weights
/// (gate, up and router: 1/d; down: 1/ff) from seeds 1, 2 and 3, so activations keep unit
/// scale through the layer. Layer is MixtralMoE<float> or OlmoeMoE<float>.
template <class Layer>
Layer make_layer(const Shape& s) {
  moe::SwiGLUExperts<S> experts(s.num_experts, s.d_model, s.d_ff);
  fill_normal(experts.gate_up(), 1, 1.0 / std::sqrt(double(s.d_model)));
  fill_normal(experts.down(), 2, 1.0 / std::sqrt(double(s.d_ff)));
  moe::SoftmaxTopKRouter<S> router(s.num_experts, s.d_model, s.top_k,
                                   moe::SoftmaxTopK<S>{.renormalize = s.renormalize});
  fill_normal(router.weight(), 3, 1.0 / std::sqrt(double(s.d_model)));
  return Layer(std::move(experts), std::move(router));
}

}  // namespace moe_bench

#endif  // MOE_BENCH_BENCH_SHAPES_HPP
