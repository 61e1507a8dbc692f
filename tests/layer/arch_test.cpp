// The layer's Arch reaches every call: each policy, the executor and every loss is
// instantiated with the layer's architecture, forward and backward; and a layer built for a
// non-default architecture gives the default's bits where the kernels promise it (copies,
// gathers, scatter-adds, ReLU and Eigen's GEMM, whose SIMD is fixed at compile time).
#include <moe/moe.hpp>

#include <catch2/catch.hpp>

#include <set>
#include <string>
#include <type_traits>

#include "support/random.hpp"

namespace {

using moe::ConstMatrixRef;
using moe::Index;
using moe::MatrixRef;
using moe::RowMatrix;
using moe::test::fill;

/// Every architecture a call was instantiated for, by policy and member.
std::set<std::string>& seen() {
  static std::set<std::string> s;
  return s;
}
template <class Arch>
void record(const char* who) {
  seen().insert(std::string(who) + ":" + Arch::name());
}

struct SpyBank : moe::SwiGLUExperts<double> {
  using moe::SwiGLUExperts<double>::SwiGLUExperts;
  template <class Arch>
  void forward(Index e, const ConstMatrixRef<double>& x, MatrixRef<double> h, MatrixRef<double> y,
               moe::GemmKernel kernel) const {
    record<Arch>("experts.forward");
    moe::SwiGLUExperts<double>::forward<Arch>(e, x, h, y, kernel);
  }
  template <class Arch>
  void backward(Index e, const ConstMatrixRef<double>& x, const ConstMatrixRef<double>& h,
                const ConstMatrixRef<double>& dy, MatrixRef<double> dx, MatrixRef<double> dh, SpyBank& grad) const {
    record<Arch>("experts.backward");
    moe::SwiGLUExperts<double>::backward<Arch>(e, x, h, dy, dx, dh, grad);
  }
};

struct SpyRouter : moe::SoftmaxTopKRouter<double> {
  using moe::SoftmaxTopKRouter<double>::SoftmaxTopKRouter;
  template <class Arch>
  void route(const ConstMatrixRef<double>& x, moe::RoutingResult<double>& out, const moe::ForwardContext& ctx) const {
    record<Arch>("router.route");
    moe::SoftmaxTopKRouter<double>::route<Arch>(x, out, ctx);
  }
  template <class Arch>
  void backward(const moe::RouterBackward<double>& in, SpyRouter& grad, const auto& losses) const {
    record<Arch>("router.backward");
    moe::SoftmaxTopKRouter<double>::backward<Arch>(in, grad, losses);
  }
};

struct SpyCombiner : moe::WeightedSumCombiner<double> {
  template <class Arch>
  void combine(const ConstMatrixRef<double>& x, const moe::DispatchPlan<double>& plan,
               const ConstMatrixRef<double>& y_perm, MatrixRef<double> y, const moe::CombineContext<double>& cc) const {
    record<Arch>("combiner.combine");
    moe::WeightedSumCombiner<double>::combine<Arch>(x, plan, y_perm, y, cc);
  }
  template <class Arch>
  void backward(const moe::CombinerBackward<double>& in, SpyCombiner& grad,
                const moe::CombineContext<double>& cc) const {
    record<Arch>("combiner.backward");
    moe::WeightedSumCombiner<double>::backward<Arch>(in, grad, cc);
  }
};

struct SpyLoss {
  template <class S>
  S value(const moe::LossInput<S>& in) const {
    return moe::RouterZLoss{}.value(in);
  }
  template <class Arch, class S>
  void backward(const moe::LossInput<S>& in, std::type_identity_t<S> w, const moe::LossGradient<S>& out) const {
    record<Arch>("loss.backward");
    moe::RouterZLoss{}.backward<Arch>(in, w, out);
  }
};

struct SpyExecutor {
  template <class Arch, class E, class S>
  void forward(const E& experts, const moe::ExpertStep<S>& step) const {
    record<Arch>("executor.forward");
    moe::LocalExecutor{}.forward<Arch>(experts, step);
  }
  template <class Arch, class E, class S>
  void backward(const E& experts, const moe::ExpertStepBackward<S>& step, E& grad) const {
    record<Arch>("executor.backward");
    moe::LocalExecutor{}.backward<Arch>(experts, step, grad);
  }
};

template <class Arch>
void train_once() {
  const Index E = 4, d = 6, ff = 5, T = 9;
  SpyBank experts(E, d, ff);
  fill(experts.gate_up(), 1, 0.3);
  fill(experts.down(), 4, 0.3);
  moe::MoELayer<SpyBank, SpyRouter, SpyCombiner, Arch, SpyExecutor> layer(std::move(experts), SpyRouter(E, d, 2),
                                                                          SpyCombiner{});
  fill(layer.router().weight(), 2);
  RowMatrix<double> x(T, d);
  fill(x, 3);
  moe::Workspace<double> ws;
  moe::ForwardContext ctx;
  ctx.mode = moe::Mode::training;
  const RowMatrix<double> y = layer.forward(x, ws, ctx);
  auto grads = layer.make_gradients();
  (void)layer.backward(y, ws, grads, moe::losses(moe::weighted(SpyLoss{}, 0.1)));
}

template <class Arch>
void check_every_call_sees() {
  seen().clear();
  train_once<Arch>();
  const std::string a = Arch::name();
  const std::set<std::string> expected = {
      "experts.forward:" + a, "experts.backward:" + a, "router.route:" + a,     "router.backward:" + a,
      "combiner.combine:" + a, "combiner.backward:" + a, "loss.backward:" + a, "executor.forward:" + a,
      "executor.backward:" + a};
  CHECK(seen() == expected);
}

/// A layer whose every step is bit-for-bit across architectures that fuse their multiply-adds
/// alike: hash routing (gates 1), ReLU FFN experts (forward: the packed kernel, one depth
/// chain per element whatever the tile, fused or not as kernels::packed_fused says; backward:
/// Eigen's GEMM, every product with more rows than the row-wise kernel takes, whose sums are
/// vector-width dependent), the weighted sum.
template <class Arch>
using HashRelu = moe::MoELayer<moe::FFNExperts<double, moe::Activation::relu>, moe::HashRouter<double>,
                               moe::WeightedSumCombiner<double>, Arch>;

template <class Arch>
struct Run {
  RowMatrix<double> y, dx;
  RowMatrix<double> grad_w1, grad_w2;
};

template <class Arch>
Run<Arch> run_hash_relu() {
  constexpr Index m = moe::kernels::rowwise_max_rows;
  const Index E = 2, d = m + 4, ff = m + 8, T = 5 * m;
  moe::FFNExperts<double, moe::Activation::relu> experts(E, d, ff);
  experts.for_each_parameter([k = 10u](const std::string&, auto&& block) mutable {
    RowMatrix<double> m(block.rows(), block.cols());
    fill(m, k++);
    block = m;
  });
  HashRelu<Arch> layer(std::move(experts), moe::HashRouter<double>::balanced(13, E, d, 7));
  RowMatrix<double> x(T, d), g(T, d);
  fill(x, 20);
  fill(g, 21);
  std::vector<std::int64_t> ids(static_cast<std::size_t>(T));
  for (std::size_t t = 0; t < ids.size(); ++t) ids[t] = static_cast<std::int64_t>((t * 5) % 13);
  moe::ForwardContext ctx;
  ctx.mode = moe::Mode::training;
  ctx.token_ids = ids;
  moe::Workspace<double> ws;
  Run<Arch> r;
  r.y = layer.forward(x, ws, ctx);
  for (const Index load : ws.stats.expert_load) REQUIRE(load > m);  // every slab on Eigen's GEMM
  auto grads = layer.make_gradients();
  r.dx = layer.backward(g, ws, grads);
  std::vector<RowMatrix<double>> blocks;
  grads.for_each_parameter([&](const std::string&, const auto& b) { blocks.emplace_back(b); });
  r.grad_w1 = blocks.at(0);
  r.grad_w2 = blocks.at(1);
  return r;
}

/// The same bits as the default architecture where both fuse multiply-adds alike (the packed
/// expert products' one promise across architectures); where one fuses and the other rounds
/// the product first, the two runs agree to double rounding (and must not be bit-identical:
/// the check that the packed kernel's fusion really follows the architecture).
template <class Arch>
void check_bits_match_default() {
  const auto a = run_hash_relu<Arch>();
  const auto b = run_hash_relu<xsimd::default_arch>();
  INFO(Arch::name() << " against " << xsimd::default_arch::name());
  if constexpr (moe::kernels::packed_fused<Arch> == moe::kernels::packed_fused<xsimd::default_arch>) {
    CHECK(a.y == b.y);
    CHECK(a.dx == b.dx);
    CHECK(a.grad_w1 == b.grad_w1);
    CHECK(a.grad_w2 == b.grad_w2);
  } else {
    CHECK(a.y != b.y);
    CHECK(a.y.isApprox(b.y, 1e-12));
    CHECK(a.dx.isApprox(b.dx, 1e-12));
    CHECK(a.grad_w1.isApprox(b.grad_w1, 1e-12));
    CHECK(a.grad_w2.isApprox(b.grad_w2, 1e-12));
  }
  CHECK(a.y.cwiseAbs().maxCoeff() > 0);  // not vacuous
}

}  // namespace

TEST_CASE("the layer's Arch reaches every policy, the executor and the losses", "[layer][arch]") {
  check_every_call_sees<xsimd::default_arch>();
#if XSIMD_WITH_SSE2
  check_every_call_sees<xsimd::sse2>();
#endif
#if XSIMD_WITH_AVX2
  check_every_call_sees<xsimd::avx2>();
#endif
}

TEST_CASE("a layer for another architecture gives the default's bits where the kernels promise them",
          "[layer][arch]") {
#if XSIMD_WITH_SSE2
  check_bits_match_default<xsimd::sse2>();
#endif
#if XSIMD_WITH_AVX2
  check_bits_match_default<xsimd::avx2>();
#endif
#if XSIMD_WITH_FMA3_AVX2
  check_bits_match_default<xsimd::fma3<xsimd::avx2>>();  // 6 x 16 tiles, fused: the AVX-512 bits
#endif
}
