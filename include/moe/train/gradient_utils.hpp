// Whole-gradient operations a training loop needs between backward and the optimiser step.
#ifndef MOE_TRAIN_GRADIENT_UTILS_HPP
#define MOE_TRAIN_GRADIENT_UTILS_HPP

#include <moe/core/error.hpp>
#include <moe/core/types.hpp>

#include <cmath>
#include <string>
#include <type_traits>

namespace moe {

namespace detail {

/// A strided view of one parameter block as a row-major matrix. Policies hand out their
/// tensors as temporaries (slices of a bank, rows, whole matrices, column vectors); the view
/// keeps the address and strides, which stay valid as long as the policy is not resized.
template <class S>
using ParameterMap = Eigen::Map<RowMatrix<S>, Eigen::Unaligned, Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>>;
template <class S>
using ConstParameterMap =
    Eigen::Map<const RowMatrix<S>, Eigen::Unaligned, Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>>;

template <class Block>
[[nodiscard]] auto parameter_map(Block&& b) {
  using S = typename std::remove_cvref_t<Block>::Scalar;
  using Map = std::conditional_t<std::is_const_v<std::remove_pointer_t<decltype(b.data())>>, ConstParameterMap<S>,
                                 ParameterMap<S>>;
  // Row-major map: the outer stride steps rows, the inner stride steps columns.
  return Map(b.data(), b.rows(), b.cols(), Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>(b.rowStride(), b.colStride()));
}

}  // namespace detail

/// Sets every gradient to zero. Works on a layer's Gradients and on any policy with
/// for_each_parameter; call it once per step before backward, which accumulates.
template <class Grads>
void zero_grad(Grads& grads) {
  grads.for_each_parameter([](const std::string&, auto&& g) { g.setZero(); });
}

/// The global L2 norm sqrt(sum over every gradient tensor of its squared entries), summed in
/// double so a float model's norm does not lose the small tensors beside the large ones.
template <class Grads>
[[nodiscard]] double grad_norm(const Grads& grads) {
  double sum = 0.0;
  grads.for_each_parameter([&](const std::string&, const auto& g) {
    if (g.size() != 0) sum += g.template cast<double>().squaredNorm();
  });
  return std::sqrt(sum);
}

/// torch.nn.utils.clip_grad_norm_: with n = grad_norm(grads) and c = max_norm / (n + eps),
/// every gradient is multiplied by c when c < 1. Returns n, the norm before clipping. eps is
/// PyTorch's 1e-6, which keeps c finite for n = 0; eps = 0 clips to max_norm exactly (up to
/// rounding). A non-finite n is returned and nothing is scaled.
template <class Grads>
double clip_grad_norm(Grads& grads, double max_norm, double eps = 1e-6) {
  constexpr const char* where = "clip_grad_norm()";
  detail::require(std::isfinite(max_norm) && max_norm >= 0.0, where, "max_norm", "finite and >= 0", max_norm);
  detail::require(std::isfinite(eps) && eps >= 0.0, where, "eps", "finite and >= 0", eps);
  const double norm = grad_norm(grads);
  if (!std::isfinite(norm)) return norm;
  const double denom = norm + eps;
  if (denom == 0.0) return norm;
  const double coef = max_norm / denom;
  if (coef < 1.0)
    grads.for_each_parameter([&](const std::string&, auto&& g) {
      using S = typename std::remove_cvref_t<decltype(g)>::Scalar;
      g *= static_cast<S>(coef);
    });
  return norm;
}

}  // namespace moe

#endif  // MOE_TRAIN_GRADIENT_UTILS_HPP
