// Must not compile, once per case: each MOE_CF_<case> defines a program that one
// static_assert of the library refuses. tests/CMakeLists.txt builds one target per case and
// pins the message the compiler prints (docs/policies.md lists every requirement).
#include <moe/moe.hpp>
#include <moe/train/expert_dropout.hpp>

#include <cstdint>
#include <string>

namespace cf {
/// A block-quantized weight element gemm does not take yet (weight_traits::block = 2).
struct Block2 {
  std::uint8_t bits;
};
struct NotAWeight {};
}  // namespace cf

template <>
struct moe::kernels::weight_traits<cf::Block2> {
  using compute_type = float;
  static constexpr moe::Index block = 2;
  static void widen(const cf::Block2*, float*, moe::Index) noexcept {}
};
template <>
struct Eigen::NumTraits<cf::Block2> : Eigen::GenericNumTraits<cf::Block2> {
  enum { IsInteger = 0, IsSigned = 0, IsComplex = 0, RequireInitialization = 0, ReadCost = 1, AddCost = 1, MulCost = 1 };
  using Real = cf::Block2;
  using NonInteger = cf::Block2;
  using Literal = cf::Block2;
  using Nested = cf::Block2;
};

namespace cf {
using moe::ConstMatrixRef;
using moe::Index;
using moe::MatrixRef;

// A complete, minimal policy set: the cases below each take one member away.
struct Bank {
  using scalar_type = float;
  Index num_experts() const { return 2; }
  Index input_dim() const { return 4; }
  Index output_dim() const { return 4; }
  Index hidden_cols() const { return 0; }
  template <class Arch>
  void forward(Index, const ConstMatrixRef<float>& x, MatrixRef<float>, MatrixRef<float> y) const {
    y = x;
  }
#if !defined(MOE_CF_expert_without_backward)
  template <class Arch>
  void backward(Index, const ConstMatrixRef<float>&, const ConstMatrixRef<float>&, const ConstMatrixRef<float>& dy,
                MatrixRef<float> dx, MatrixRef<float>, Bank&) const {
    dx = dy;
  }
#endif
#if !defined(MOE_CF_expert_without_parameters)
  template <class F>
  void for_each_parameter(F&&) const {}
#endif
};

struct BankWithoutSizes {
  using scalar_type = float;
  template <class Arch>
  void forward(Index, const ConstMatrixRef<float>&, MatrixRef<float>, MatrixRef<float>) const {}
};
struct BankWithoutScalarType {
  Index num_experts() const { return 2; }
  Index input_dim() const { return 4; }
  Index output_dim() const { return 4; }
  Index hidden_cols() const { return 0; }
};

struct RouterWithoutSizes {
  using scalar_type = float;
  template <class Arch>
  void route(const ConstMatrixRef<float>&, moe::RoutingResult<float>&, const moe::ForwardContext&) const {}
};
struct RouterWithoutScalarType {
  Index num_experts() const { return 2; }
  Index input_dim() const { return 4; }
};

// A router that routes but does not train, or trains without naming its parameters.
struct InferenceRouter : moe::SoftmaxTopKRouter<float> {
  using moe::SoftmaxTopKRouter<float>::SoftmaxTopKRouter;
#if defined(MOE_CF_router_without_backward)
  template <class Arch>
  void backward() const = delete;
#endif
#if defined(MOE_CF_router_without_parameters)
  template <class F>
  void for_each_parameter() const = delete;
#endif
};

struct Combiner {
  using scalar_type = float;
  template <class Arch>
  void combine(const ConstMatrixRef<float>&, const moe::DispatchPlan<float>&, const ConstMatrixRef<float>&,
               MatrixRef<float> y, const moe::CombineContext<float>&) const {
    y.setZero();
  }
#if !defined(MOE_CF_combiner_without_backward)
  template <class Arch>
  void backward(const moe::CombinerBackward<float>&, Combiner&, const moe::CombineContext<float>&) const {}
#endif
#if !defined(MOE_CF_combiner_without_parameters)
  template <class F>
  void for_each_parameter(F&&) const {}
#endif
};
struct CombinerWithoutCombine {
  using scalar_type = float;
};

struct ExecutorWithoutForward {};
struct ExecutorWithoutBackward {
  template <class Arch, class E, class S>
  void forward(const E& experts, const moe::ExpertStep<S>& step) const {
    moe::LocalExecutor{}.forward<Arch>(experts, step);
  }
};

struct NotALoss {};

template <class Layer>
int train(const Layer& layer) {
  moe::Workspace<float> ws;
  auto grads = layer.make_gradients();
  const moe::RowMatrix<float> x = moe::RowMatrix<float>::Zero(2, 4);
  (void)layer.backward(x, ws, grads);
  return 0;
}
}  // namespace cf

using Router = moe::SoftmaxTopKRouter<float>;
using Sum = moe::WeightedSumCombiner<float>;

int main() {
#if defined(MOE_CF_expert_without_scalar_type)
  moe::MoELayer<cf::BankWithoutScalarType, Router, Sum> layer(cf::BankWithoutScalarType{}, Router(2, 4, 1));
  return static_cast<int>(layer.num_experts());
#elif defined(MOE_CF_expert_without_sizes)
  moe::MoELayer<cf::BankWithoutSizes, Router, Sum> layer(cf::BankWithoutSizes{}, Router(2, 4, 1));
  return 0;
#elif defined(MOE_CF_router_without_scalar_type)
  moe::MoELayer<cf::Bank, cf::RouterWithoutScalarType, Sum> layer(cf::Bank{}, cf::RouterWithoutScalarType{});
  return 0;
#elif defined(MOE_CF_router_without_sizes)
  moe::MoELayer<cf::Bank, cf::RouterWithoutSizes, Sum> layer(cf::Bank{}, cf::RouterWithoutSizes{});
  return 0;
#elif defined(MOE_CF_combiner_without_combine)
  moe::MoELayer<cf::Bank, Router, cf::CombinerWithoutCombine> layer(cf::Bank{}, Router(2, 4, 1));
  return 0;
#elif defined(MOE_CF_dense_router_sparse_combiner)
  moe::MoELayer<cf::Bank, moe::SoftRouter<float>, Sum> layer(cf::Bank{}, moe::SoftRouter<float>(2, 4, 1));
  return 0;
#elif defined(MOE_CF_executor_without_forward)
  moe::MoELayer<cf::Bank, Router, Sum, xsimd::default_arch, cf::ExecutorWithoutForward> layer(cf::Bank{},
                                                                                               Router(2, 4, 1));
  return 0;
#elif defined(MOE_CF_executor_without_backward)
  return cf::train(moe::MoELayer<cf::Bank, Router, Sum, xsimd::default_arch, cf::ExecutorWithoutBackward>(
      cf::Bank{}, Router(2, 4, 1)));
#elif defined(MOE_CF_expert_without_backward) || defined(MOE_CF_expert_without_parameters) || \
    defined(MOE_CF_combiner_without_backward) || defined(MOE_CF_combiner_without_parameters)
  return cf::train(moe::MoELayer<cf::Bank, Router, cf::Combiner>(cf::Bank{}, Router(2, 4, 1), cf::Combiner{}));
#elif defined(MOE_CF_router_without_backward) || defined(MOE_CF_router_without_parameters)
  return cf::train(moe::MoELayer<cf::Bank, cf::InferenceRouter, Sum>(cf::Bank{}, cf::InferenceRouter(2, 4, 1)));
#elif defined(MOE_CF_loss_not_weighted)
  moe::MixtralMoE<float> layer(moe::SwiGLUExperts<float>(2, 4, 4), Router(2, 4, 1));
  moe::Workspace<float> ws;
  auto grads = layer.make_gradients();
  const moe::RowMatrix<float> x = moe::RowMatrix<float>::Zero(2, 4);
  (void)layer.backward(x, ws, grads, moe::losses(moe::LoadBalancingLoss{}));
  return 0;
#elif defined(MOE_CF_loss_without_protocol)
  moe::MixtralMoE<float> layer(moe::SwiGLUExperts<float>(2, 4, 4), Router(2, 4, 1));
  moe::Workspace<float> ws;
  auto grads = layer.make_gradients();
  const moe::RowMatrix<float> x = moe::RowMatrix<float>::Zero(2, 4);
  (void)layer.backward(x, ws, grads, moe::losses(moe::weighted(cf::NotALoss{}, 1.0f)));
  return 0;
#elif defined(MOE_CF_dense_router_with_losses)
  moe::SoftMoE<float> layer(moe::FFNExperts<float, moe::Activation::gelu_erf>(2, 4, 4), moe::SoftRouter<float>(2, 4, 1));
  moe::Workspace<float> ws;
  auto grads = layer.make_gradients();
  const moe::RowMatrix<float> x = moe::RowMatrix<float>::Zero(2, 4);
  (void)layer.backward(x, ws, grads, moe::losses(moe::weighted(moe::RouterZLoss{}, 1.0f)));
  return 0;
#elif defined(MOE_CF_shared_expert_with_context)
  using Bank = moe::PositionScaledExperts<moe::SwiGLUExperts<float>>;
  moe::SharedExpertCombiner<Bank, moe::SharedGate::none> combiner(Bank(moe::SwiGLUExperts<float>(1, 4, 4), 0.5));
  return static_cast<int>(combiner.shared_expert().num_experts());
#elif defined(MOE_CF_gemm_block_weights)
  moe::RowMatrix<float> c(2, 2), a = moe::RowMatrix<float>::Zero(2, 2);
  const moe::RowMatrix<cf::Block2> b(2, 2);
  moe::kernels::gemm(c, a, moe::Op::none, b, moe::Op::none, 1.0f, 0.0f);
  return 0;
#elif defined(MOE_CF_prepare_threads_unknown_weight)
  moe::kernels::prepare_threads<float, cf::NotAWeight>(nullptr);
  return 0;
#elif defined(MOE_CF_expert_dropout_dense_router)
  moe::ExpertDropout<moe::SoftRouter<float>> router(moe::SoftRouter<float>(2, 4, 1), 0.1);
  return static_cast<int>(router.num_experts());
#else
#error "protocol_cases.cpp: define one MOE_CF_<case> (tests/CMakeLists.txt)"
#endif
}
