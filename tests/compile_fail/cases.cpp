// Programs the library must refuse, every case in this one translation unit: g++ reports each
// failed static_assert and goes on, so one compile gives every case's diagnostic (the headers
// are parsed once instead of once per case). Each case is a namespace cf_<name> that starts at
// its "// CASE <name>" line and ends where the next case starts; it uses types of its own, so
// no two cases share an instantiation. tests/compile_fail/check.py attributes each error to the
// case whose lines the error's "required from here" (or its own location) points into, and the
// test compile_fail.<name> passes only when an error of case <name> prints the message
// tests/CMakeLists.txt pins for it (MOE_COMPILE_FAIL_CASES). Every static_assert in include/moe/
// has a case here, except two checks of the platform no program can fail on these hosts:
// io/dtype.hpp's little-endian host and kernels/weight_types.hpp's bf16 layout.
//
// A case must fail through its own code: nothing outside the CASE blocks may be ill-formed
// (check.py fails every case if an error points outside them).
#include <moe/io/save_layer.hpp>
#include <moe/layer/quantized_layers.hpp>
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
using Router = moe::SoftmaxTopKRouter<float>;
using Sum = moe::WeightedSumCombiner<float>;

// A complete, minimal policy set; the cases take one member away (each case its own Tag, so
// its own type).
template <class Tag, bool Backward = true, bool Parameters = true>
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
  template <class Arch>
    requires Backward
  void backward(Index, const ConstMatrixRef<float>&, const ConstMatrixRef<float>&, const ConstMatrixRef<float>& dy,
                MatrixRef<float> dx, MatrixRef<float>, Bank&) const {
    dx = dy;
  }
  template <class F>
    requires Parameters
  void for_each_parameter(F&&) const {}
};

template <class Tag, bool Backward = true, bool Parameters = true>
struct Combiner {
  using scalar_type = float;
  template <class Arch>
  void combine(const ConstMatrixRef<float>&, const moe::DispatchPlan<float>&, const ConstMatrixRef<float>&,
               MatrixRef<float> y, const moe::CombineContext<float>&) const {
    y.setZero();
  }
  template <class Arch>
    requires Backward
  void backward(const moe::CombinerBackward<float>&, Combiner&, const moe::CombineContext<float>&) const {}
  template <class F>
    requires Parameters
  void for_each_parameter(F&&) const {}
};

/// Builds a layer's gradients and calls backward (with the loss list, if any): where training
/// is first used.
template <class Layer, class... Losses>
int train(const Layer& layer, const Losses&... losses) {
  moe::Workspace<float> ws;
  auto grads = layer.make_gradients();
  const moe::RowMatrix<float> x = moe::RowMatrix<float>::Zero(2, 4);
  (void)layer.backward(x, ws, grads, losses...);
  return 0;
}
}  // namespace cf

// CASE expert_without_forward
namespace cf_expert_without_forward {
struct NoForward {
  using scalar_type = float;
  moe::Index num_experts() const { return 2; }
  moe::Index input_dim() const { return 4; }
  moe::Index output_dim() const { return 4; }
  moe::Index hidden_cols() const { return 0; }
};
int run() {
  moe::MoELayer<NoForward, cf::Router, cf::Sum> layer(NoForward{}, cf::Router(2, 4, 1));
  return static_cast<int>(layer.num_experts());
}
}  // namespace cf_expert_without_forward

// CASE router_without_route
namespace cf_router_without_route {
struct NoRoute {
  using scalar_type = float;
  moe::Index num_experts() const { return 2; }
  moe::Index input_dim() const { return 4; }
};
int run() {
  moe::MoELayer<moe::SwiGLUExperts<float>, NoRoute, cf::Sum> layer(moe::SwiGLUExperts<float>(2, 4, 4), NoRoute{});
  return static_cast<int>(layer.num_experts());
}
}  // namespace cf_router_without_route

// CASE mixed_scalar_types
namespace cf_mixed_scalar_types {
int run() {
  moe::MoELayer<moe::SwiGLUExperts<float>, moe::SoftmaxTopKRouter<double>, cf::Sum> layer(
      moe::SwiGLUExperts<float>(2, 4, 4), moe::SoftmaxTopKRouter<double>(2, 4, 1));
  return static_cast<int>(layer.num_experts());
}
}  // namespace cf_mixed_scalar_types

// CASE combiner_without_scalar_type
namespace cf_combiner_without_scalar_type {
struct NoScalar {};
int run() {
  moe::MoELayer<moe::SwiGLUExperts<float>, cf::Router, NoScalar> layer(moe::SwiGLUExperts<float>(2, 4, 4),
                                                                       cf::Router(2, 4, 1), NoScalar{});
  return static_cast<int>(layer.num_experts());
}
}  // namespace cf_combiner_without_scalar_type

// CASE save_layer_without_family
namespace cf_save_layer_without_family {
int run() {
  const moe::MixtralMoE<float> layer(moe::SwiGLUExperts<float>(2, 4, 4), cf::Router(2, 4, 1));
  moe::io::SafetensorsWriter w;
  moe::io::save_layer(w, layer, "mlp.");
  return 0;
}
}  // namespace cf_save_layer_without_family

// CASE expert_without_scalar_type
namespace cf_expert_without_scalar_type {
struct NoScalar {
  moe::Index num_experts() const { return 2; }
  moe::Index input_dim() const { return 4; }
  moe::Index output_dim() const { return 4; }
  moe::Index hidden_cols() const { return 0; }
};
int run() {
  moe::MoELayer<NoScalar, cf::Router, cf::Sum> layer(NoScalar{}, cf::Router(2, 4, 1));
  return static_cast<int>(layer.num_experts());
}
}  // namespace cf_expert_without_scalar_type

// CASE expert_without_sizes
namespace cf_expert_without_sizes {
struct NoSizes {
  using scalar_type = float;
  template <class Arch>
  void forward(moe::Index, const cf::ConstMatrixRef<float>&, cf::MatrixRef<float>, cf::MatrixRef<float>) const {}
};
int run() {
  moe::MoELayer<NoSizes, cf::Router, cf::Sum> layer(NoSizes{}, cf::Router(2, 4, 1));
  return 0;
}
}  // namespace cf_expert_without_sizes

// CASE router_without_scalar_type
namespace cf_router_without_scalar_type {
struct Tag;
struct NoScalar {
  moe::Index num_experts() const { return 2; }
  moe::Index input_dim() const { return 4; }
};
int run() {
  moe::MoELayer<cf::Bank<Tag>, NoScalar, cf::Sum> layer(cf::Bank<Tag>{}, NoScalar{});
  return 0;
}
}  // namespace cf_router_without_scalar_type

// CASE router_without_sizes
namespace cf_router_without_sizes {
struct Tag;
struct NoSizes {
  using scalar_type = float;
  template <class Arch>
  void route(const cf::ConstMatrixRef<float>&, moe::RoutingResult<float>&, const moe::ForwardContext&) const {}
};
int run() {
  moe::MoELayer<cf::Bank<Tag>, NoSizes, cf::Sum> layer(cf::Bank<Tag>{}, NoSizes{});
  return 0;
}
}  // namespace cf_router_without_sizes

// CASE combiner_without_combine
namespace cf_combiner_without_combine {
struct Tag;
struct NoCombine {
  using scalar_type = float;
};
int run() {
  moe::MoELayer<cf::Bank<Tag>, cf::Router, NoCombine> layer(cf::Bank<Tag>{}, cf::Router(2, 4, 1));
  return 0;
}
}  // namespace cf_combiner_without_combine

// CASE dense_router_sparse_combiner
namespace cf_dense_router_sparse_combiner {
struct Tag;
int run() {
  moe::MoELayer<cf::Bank<Tag>, moe::SoftRouter<float>, cf::Sum> layer(cf::Bank<Tag>{}, moe::SoftRouter<float>(2, 4, 1));
  return 0;
}
}  // namespace cf_dense_router_sparse_combiner

// CASE executor_without_forward
namespace cf_executor_without_forward {
struct Tag;
struct NoForward {};
int run() {
  moe::MoELayer<cf::Bank<Tag>, cf::Router, cf::Sum, xsimd::default_arch, NoForward> layer(cf::Bank<Tag>{},
                                                                                         cf::Router(2, 4, 1));
  return 0;
}
}  // namespace cf_executor_without_forward

// CASE executor_without_backward
namespace cf_executor_without_backward {
struct Tag;
struct NoBackward {
  template <class Arch, class E, class S>
  void forward(const E& experts, const moe::ExpertStep<S>& step) const {
    moe::LocalExecutor{}.forward<Arch>(experts, step);
  }
};
int run() {
  return cf::train(moe::MoELayer<cf::Bank<Tag>, cf::Router, cf::Sum, xsimd::default_arch, NoBackward>(
      cf::Bank<Tag>{}, cf::Router(2, 4, 1)));
}
}  // namespace cf_executor_without_backward

// CASE expert_without_backward
namespace cf_expert_without_backward {
struct Tag;
using Bank = cf::Bank<Tag, false, true>;
int run() { return cf::train(moe::MoELayer<Bank, cf::Router, cf::Sum>(Bank{}, cf::Router(2, 4, 1))); }
}  // namespace cf_expert_without_backward

// CASE expert_without_parameters
namespace cf_expert_without_parameters {
struct Tag;
using Bank = cf::Bank<Tag, true, false>;
int run() { return cf::train(moe::MoELayer<Bank, cf::Router, cf::Sum>(Bank{}, cf::Router(2, 4, 1))); }
}  // namespace cf_expert_without_parameters

// CASE router_without_backward
namespace cf_router_without_backward {
struct Tag;
// A router that routes but does not train: its deleted backward hides the base's.
struct InferenceRouter : moe::SoftmaxTopKRouter<float> {
  using moe::SoftmaxTopKRouter<float>::SoftmaxTopKRouter;
  template <class Arch>
  void backward() const = delete;
};
int run() {
  return cf::train(moe::MoELayer<cf::Bank<Tag>, InferenceRouter, cf::Sum>(cf::Bank<Tag>{}, InferenceRouter(2, 4, 1)));
}
}  // namespace cf_router_without_backward

// CASE router_without_parameters
namespace cf_router_without_parameters {
struct Tag;
// A router that trains without naming its parameters.
struct UnnamedRouter : moe::SoftmaxTopKRouter<float> {
  using moe::SoftmaxTopKRouter<float>::SoftmaxTopKRouter;
  template <class F>
  void for_each_parameter() const = delete;
};
int run() {
  return cf::train(moe::MoELayer<cf::Bank<Tag>, UnnamedRouter, cf::Sum>(cf::Bank<Tag>{}, UnnamedRouter(2, 4, 1)));
}
}  // namespace cf_router_without_parameters

// CASE combiner_without_backward
namespace cf_combiner_without_backward {
struct Tag;
using Combiner = cf::Combiner<Tag, false, true>;
int run() {
  return cf::train(moe::MoELayer<cf::Bank<Tag>, cf::Router, Combiner>(cf::Bank<Tag>{}, cf::Router(2, 4, 1), Combiner{}));
}
}  // namespace cf_combiner_without_backward

// CASE combiner_without_parameters
namespace cf_combiner_without_parameters {
struct Tag;
using Combiner = cf::Combiner<Tag, true, false>;
int run() {
  return cf::train(moe::MoELayer<cf::Bank<Tag>, cf::Router, Combiner>(cf::Bank<Tag>{}, cf::Router(2, 4, 1), Combiner{}));
}
}  // namespace cf_combiner_without_parameters

// CASE loss_not_weighted
namespace cf_loss_not_weighted {
struct Tag;
using Layer = moe::MoELayer<cf::Bank<Tag>, cf::Router, cf::Sum>;
int run() {
  const Layer layer(cf::Bank<Tag>{}, cf::Router(2, 4, 1));
  return cf::train(layer, moe::losses(moe::LoadBalancingLoss{}));
}
}  // namespace cf_loss_not_weighted

// CASE loss_without_protocol
namespace cf_loss_without_protocol {
struct Tag;
struct NotALoss {};
using Layer = moe::MoELayer<cf::Bank<Tag>, cf::Router, cf::Sum>;
int run() {
  const Layer layer(cf::Bank<Tag>{}, cf::Router(2, 4, 1));
  return cf::train(layer, moe::losses(moe::weighted(NotALoss{}, 1.0f)));
}
}  // namespace cf_loss_without_protocol

// CASE dense_router_with_losses
namespace cf_dense_router_with_losses {
int run() {
  const moe::SoftMoE<float> layer(moe::FFNExperts<float, moe::Activation::gelu_erf>(2, 4, 4),
                                  moe::SoftRouter<float>(2, 4, 1));
  return cf::train(layer, moe::losses(moe::weighted(moe::RouterZLoss{}, 1.0f)));
}
}  // namespace cf_dense_router_with_losses

// CASE shared_expert_with_context
namespace cf_shared_expert_with_context {
int run() {
  using Bank = moe::PositionScaledExperts<moe::SwiGLUExperts<float>>;
  moe::SharedExpertCombiner<Bank, moe::SharedGate::none> combiner(Bank(moe::SwiGLUExperts<float>(1, 4, 4), 0.5));
  return static_cast<int>(combiner.shared_expert().num_experts());
}
}  // namespace cf_shared_expert_with_context

// CASE gemm_block_weights
namespace cf_gemm_block_weights {
int run() {
  moe::RowMatrix<float> c(2, 2), a = moe::RowMatrix<float>::Zero(2, 2);
  const moe::RowMatrix<cf::Block2> b(2, 2);
  moe::kernels::gemm(c, a, moe::Op::none, b, moe::Op::none, 1.0f, 0.0f);
  return 0;
}
}  // namespace cf_gemm_block_weights

// CASE prepare_threads_unknown_weight
namespace cf_prepare_threads_unknown_weight {
int run() {
  moe::kernels::prepare_threads<float, cf::NotAWeight>(nullptr);
  return 0;
}
}  // namespace cf_prepare_threads_unknown_weight

// CASE expert_dropout_dense_router
namespace cf_expert_dropout_dense_router {
int run() {
  moe::ExpertDropout<moe::SoftRouter<float>> router(moe::SoftRouter<float>(2, 4, 1), 0.1);
  return static_cast<int>(router.num_experts());
}
}  // namespace cf_expert_dropout_dense_router

// CASE calibrate_dense_router
namespace cf_calibrate_dense_router {
int run() {
  const moe::SoftMoE<double> layer(moe::FFNExperts<double, moe::Activation::gelu_erf>(2, 4, 3),
                                   moe::SoftRouter<double>(2, 4, 1));
  moe::ExpertUsage usage;
  moe::Workspace<double> ws;
  const moe::RowMatrix<double> x = moe::RowMatrix<double>::Zero(2, 4);
  return static_cast<int>(moe::calibrate(layer, x, usage, ws).rows());
}
}  // namespace cf_calibrate_dense_router

// CASE prune_hash_router
namespace cf_prune_hash_router {
int run() {
  const moe::HashMoE<double> layer(moe::SwiGLUExperts<double>(3, 4, 3), moe::HashRouter<double>({0, 1, 2}, 3, 4));
  return static_cast<int>(moe::prune_experts(layer, {0, 1}).num_experts());
}
}  // namespace cf_prune_hash_router

// CASE prune_low_rank_bank
namespace cf_prune_low_rank_bank {
int run() {
  const moe::LowRankMoE<double> layer(moe::LowRankExperts<double>(3, 4, 2),
                                      moe::SoftmaxTopKRouter<double>(3, 4, 1),
                                      moe::SharedExpertCombiner<moe::LinearExperts<double>, moe::SharedGate::none>(
                                          moe::LinearExperts<double>(1, 4, 4)));
  return static_cast<int>(moe::prune_experts(layer, {0, 1}).num_experts());
}
}  // namespace cf_prune_low_rank_bank

// CASE quantized_layer_training
namespace cf_quantized_layer_training {
int run() {
  return cf::train(moe::QuantizedMixtralMoE<moe::kernels::BlockQ8_0>(
      moe::QuantizedSwiGLUExperts<moe::kernels::BlockQ8_0>(2, 4, 4), moe::SoftmaxTopKRouter<float>(2, 4, 1)));
}
}  // namespace cf_quantized_layer_training

// CASE quantized_bank_backward
namespace cf_quantized_bank_backward {
int run() {
  using Bank = moe::QuantizedFFNExperts<moe::kernels::BlockQ4_0, moe::Activation::relu>;
  const Bank bank(1, 32, 32);
  Bank grad(1, 32, 32);
  moe::RowMatrix<float> x(1, 32), h(1, 64), dx(1, 32), s(1, 64);
  bank.backward(0, x, h, x, dx, s, grad);
  return 0;
}
}  // namespace cf_quantized_bank_backward

// END
