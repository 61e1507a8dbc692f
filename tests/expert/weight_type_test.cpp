// The weight-element seam of an expert bank (issue #10 item 5): a bank whose weights are
// stored as bf16 (expert_traits<E>::weight_type) while activations stay float runs through
// MoELayer, and gives exactly what the same bank with its weights widened to float gives:
// widening is exact and kernels::gemm runs the float product on the widened panels.
#include <moe/kernels/weight_types.hpp>
#include <moe/layer/moe_layer.hpp>

#include <catch2/catch.hpp>

#include <type_traits>

#include "support/random.hpp"

namespace {

using moe::ConstMatrixRef;
using moe::Index;
using moe::MatrixRef;
using moe::RowMatrix;

/// E linear experts y = x W_e^T with W_e [d, d] stored as W (bf16 or float).
template <class W>
struct LinearExperts {
  using scalar_type = float;
  using weight_type = W;
  Index E = 0, d = 0;
  RowMatrix<W> weight;  ///< [E * d, d]

  Index num_experts() const { return E; }
  Index input_dim() const { return d; }
  Index output_dim() const { return d; }
  Index hidden_cols() const { return 0; }
  template <class Arch>
  void forward(Index e, const ConstMatrixRef<float>& x, MatrixRef<float>, MatrixRef<float> y,
               moe::GemmKernel kernel = moe::GemmKernel::fast) const {
    moe::kernels::gemm<Arch>(y, x, moe::Op::none, weight.middleRows(e * d, d), moe::Op::transpose, 1.0f, 0.0f, kernel);
  }
};

template <class W>
RowMatrix<float> run(const LinearExperts<W>& experts, const RowMatrix<float>& router_weight, const RowMatrix<float>& x,
                     moe::GemmKernel kernel, moe::ThreadPool* pool) {
  moe::MoELayer<LinearExperts<W>, moe::SoftmaxTopKRouter<float>, moe::WeightedSumCombiner<float>> layer(
      experts, moe::SoftmaxTopKRouter<float>(router_weight, 2));
  moe::Workspace<float> ws;
  moe::ForwardContext ctx;
  ctx.gemm = kernel;
  ctx.pool = pool;
  return layer.forward(x, ws, ctx);
}

}  // namespace

TEST_CASE("a bank with bf16 weights runs through the layer as its float-widened twin, bit for bit",
          "[expert][weight_type]") {
  static_assert(std::is_same_v<moe::expert_traits<LinearExperts<moe::bf16>>::weight_type, moe::bf16>);
  static_assert(std::is_same_v<moe::expert_traits<moe::SwiGLUExperts<float>>::weight_type, float>);
  static_assert(moe::ExpertBank<LinearExperts<moe::bf16>>);
  const Index E = 4, d = 24;
  RowMatrix<float> master(E * d, d), router_weight(E, d);
  moe::test::fill(master, 1, 0.4);
  moe::test::fill(router_weight, 2);
  LinearExperts<moe::bf16> half{E, d, master.cast<moe::bf16>()};
  LinearExperts<float> widened{E, d, half.weight.cast<float>()};
  REQUIRE(widened.weight != master);  // the rounding to bf16 did something
  moe::ThreadPool pool(2);
  for (const Index T : {Index{3}, Index{40}, Index{700}})
    for (const auto kernel : {moe::GemmKernel::fast, moe::GemmKernel::batch_invariant})
      for (moe::ThreadPool* p : {static_cast<moe::ThreadPool*>(nullptr), &pool}) {
        INFO("T " << T << ", kernel " << int(kernel) << ", pool " << (p != nullptr));
        RowMatrix<float> x(T, d);
        moe::test::fill(x, 3 + static_cast<unsigned>(T));
        const RowMatrix<float> y = run(half, router_weight, x, kernel, p);
        CHECK(y == run(widened, router_weight, x, kernel, p));
        CHECK(y.cwiseAbs().maxCoeff() > 0);
      }
}
