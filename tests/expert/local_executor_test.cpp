// LocalExecutor, the default step 4: every expert on its own slab of X_perm, in tasks of at
// most expert_rows_per_task rows, on the forward's pool; and the weight-element seam of an
// expert bank (issue #10 item 5) it prepares for: a bank whose weights are
// stored as bf16 (expert_traits<E>::weight_type) while activations stay float runs through
// MoELayer, and gives exactly what the same bank with its weights widened to float gives:
// widening is exact and kernels::gemm runs the float product on the widened panels.
#include <moe/kernels/weight_types.hpp>
#include <moe/dispatch/dispatch_plan.hpp>
#include <moe/expert/local_executor.hpp>
#include <moe/layer/moe_layer.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <random>
#include <utility>
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

TEST_CASE("LocalExecutor runs expert e on its own slab of rows, in tasks of at most 512 rows",
          "[expert][executor]") {
  std::mt19937 rng(41);
  // 900 tokens, k = 2, 3 experts: slabs of about 600 rows, more than one task each.
  const moe::RoutingResult<double> r = moe::test::random_routing(rng, 900, 3, 2);
  moe::DispatchPlan<double> plan;
  moe::build_plan(r, plan);
  Index largest = 0;
  for (Index e = 0; e < 3; ++e) largest = std::max(largest, plan.count(e));
  REQUIRE(largest > moe::expert_rows_per_task);
  const moe::SwiGLUExperts<double> bank = moe::test::swiglu<double>(3, 6, 5, 42);
  const RowMatrix<double> x_perm = moe::test::random_matrix(plan.rows(), 6, 43);
  const RowMatrix<double> input = RowMatrix<double>::Zero(900, 6);
  moe::ForwardContext ctx;
  RowMatrix<double> hidden(plan.rows(), bank.hidden_cols()), y_perm(plan.rows(), 6);
  moe::LocalExecutor{}.forward(bank, moe::ExpertStep<double>{plan, x_perm, hidden, y_perm, input, ctx});
  for (Index e = 0; e < 3; ++e) {
    // Expert e by itself on its slab, row by row.
    for (Index i = plan.begin(e); i < plan.begin(e) + plan.count(e); ++i) {
      RowMatrix<double> h(1, bank.hidden_cols()), y(1, 6);
      bank.forward(e, x_perm.middleRows(i, 1), h, y);
      REQUIRE((y_perm.row(i) - y).cwiseAbs().maxCoeff() < 1e-12);
    }
  }
  moe::ThreadPool pool(3);
  ctx.pool = &pool;
  RowMatrix<double> hidden2(plan.rows(), bank.hidden_cols()), pooled(plan.rows(), 6);
  moe::LocalExecutor{}.forward(bank, moe::ExpertStep<double>{plan, x_perm, hidden2, pooled, input, ctx});
  CHECK(pooled == y_perm);  // the tasks do not depend on the pool
  CHECK(hidden2 == hidden);

  // Backward: an expert's weight gradient sums over every row of its slab; the sum of the
  // gradients of the slab's two halves, taken expert by expert, is the same sum.
  const RowMatrix<double> dy_perm = moe::test::random_matrix(plan.rows(), 6, 44);
  RowMatrix<double> dx_perm(plan.rows(), 6), dhidden(plan.rows(), bank.hidden_cols());
  moe::SwiGLUExperts<double> grad = moe::zeros_like(bank);
  moe::LocalExecutor{}.backward(
      bank, moe::ExpertStepBackward<double>{plan, x_perm, hidden, dy_perm, dx_perm, dhidden, input, ctx}, grad);
  moe::SwiGLUExperts<double> halves = moe::zeros_like(bank);
  for (Index e = 0; e < 3; ++e) {
    const Index b = plan.begin(e), n = plan.count(e), m = n / 2;
    for (const auto& [from, rows] : {std::pair{b, m}, std::pair{b + m, n - m}}) {
      RowMatrix<double> dx(rows, 6), dh(rows, bank.hidden_cols());
      bank.backward(e, x_perm.middleRows(from, rows), hidden.middleRows(from, rows), dy_perm.middleRows(from, rows), dx,
                    dh, halves);
      CHECK((dx - dx_perm.middleRows(from, rows)).cwiseAbs().maxCoeff() < 1e-12);
    }
  }
  CHECK((grad.gate_up() - halves.gate_up()).cwiseAbs().maxCoeff() < 1e-10);
  CHECK((grad.down() - halves.down()).cwiseAbs().maxCoeff() < 1e-10);
  CHECK(grad.down().cwiseAbs().maxCoeff() > 0);
}
