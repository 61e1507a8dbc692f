// The supervised domain loss of domain-aware routing: the cross-entropy of the router's
// domain classifier against given domain ids.
#ifndef MOE_LOSS_DOMAIN_LOSS_HPP
#define MOE_LOSS_DOMAIN_LOSS_HPP

#include <moe/core/error.hpp>
#include <moe/core/types.hpp>

#include <cmath>
#include <cstdint>
#include <span>
#include <type_traits>

namespace moe {

/// mean over the T tokens of -log q[t, domain_ids[t]], with q [T, D] the domain classifier's
/// probabilities (DomainAwareRouter::domain_probs). A loss on the router's internals: the
/// router's backward consumes it (router_traits<R>::accepts_loss), reading the labels from
/// the forward's ForwardContext::domain_ids; it reaches the classifier's weight only.
struct DomainLoss {
  template <class S>
  [[nodiscard]] S operator()(const ConstMatrixRef<S>& q, std::span<const std::int64_t> domain_ids) const {
    check(q, domain_ids, "DomainLoss::operator()");
    const Index T = q.rows();
    if (T == 0) return S(0);
    S sum = 0;
    for (Index t = 0; t < T; ++t) sum -= std::log(q(t, static_cast<Index>(domain_ids[static_cast<std::size_t>(t)])));
    return sum / static_cast<S>(T);
  }

  /// The same on any Eigen matrix of probabilities (a RowMatrix from domain_probs(x)).
  template <class Derived>
  [[nodiscard]] typename Derived::Scalar operator()(const Eigen::MatrixBase<Derived>& q,
                                                    std::span<const std::int64_t> domain_ids) const {
    using S = typename Derived::Scalar;
    return (*this)(ConstMatrixRef<S>(q.derived()), domain_ids);  // binds a RowMatrix without a copy
  }

  /// Adds weight * dL/dz into dz [T, D], z the classifier's logits (q = softmax(z)):
  /// weight * (q - onehot(domain_ids)) / T.
  template <class S>
  void backward(const ConstMatrixRef<S>& q, std::span<const std::int64_t> domain_ids, std::type_identity_t<S> weight,
                MatrixRef<std::type_identity_t<S>> dz) const {
    constexpr const char* where = "DomainLoss::backward()";
    check(q, domain_ids, where);
    detail::require_shape(dz, q.rows(), q.cols(), where, "dz (as q)");
    const Index T = q.rows();
    if (T == 0 || weight == S(0)) return;
    const S scale = weight / static_cast<S>(T);
    for (Index t = 0; t < T; ++t) {
      for (Index j = 0; j < q.cols(); ++j) dz(t, j) += scale * q(t, j);
      dz(t, static_cast<Index>(domain_ids[static_cast<std::size_t>(t)])) -= scale;
    }
  }

 private:
  template <class S>
  static void check(const ConstMatrixRef<S>& q, std::span<const std::int64_t> ids, const char* where) {
    if (static_cast<Index>(ids.size()) != q.rows())
      detail::throw_invalid(where, "domain_ids length (one per token; ForwardContext::domain_ids)", q.rows(),
                            ids.size());
    for (std::size_t t = 0; t < ids.size(); ++t)
      if (ids[t] < 0 || ids[t] >= q.cols())
        detail::throw_invalid(where, detail::concat("domain_ids[", t, "]"),
                              detail::concat("in [0, num_domains = ", q.cols(), ")"), ids[t]);
  }
};

}  // namespace moe

#endif  // MOE_LOSS_DOMAIN_LOSS_HPP
