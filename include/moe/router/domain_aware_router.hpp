// Domain-aware routing (domain-conditioned experts as in DEMix, Gururangan et al. 2021): a
// domain classifier's probabilities shift the router's logits toward the experts that suit
// the token's domain, through learned per-domain expert affinities.
#ifndef MOE_ROUTER_DOMAIN_AWARE_ROUTER_HPP
#define MOE_ROUTER_DOMAIN_AWARE_ROUTER_HPP

#include <moe/core/context.hpp>
#include <moe/core/error.hpp>
#include <moe/core/scratch.hpp>
#include <moe/core/types.hpp>
#include <moe/contracts/routing_result.hpp>
#include <moe/contracts/training.hpp>
#include <moe/kernels/gemm.hpp>
#include <moe/kernels/softmax.hpp>
#include <moe/loss/domain_loss.hpp>
#include <moe/router/gating.hpp>
#include <moe/router/router_wrapper.hpp>
#include <moe/router/top_k_router.hpp>

#include <string>
#include <type_traits>
#include <utility>
#include <xsimd/xsimd.hpp>

namespace moe {

/// q = softmax(x C^T) over D domains (a linear classifier, no bias); logits = x Wg^T + q A,
/// then the wrapped TopKRouter's gating rule. C and A are trained end to end through the
/// routing; DomainLoss (the cross-entropy of q against ForwardContext::domain_ids) can
/// supervise the classifier, and this router's backward consumes it.
///
/// | member        | shape  | golden name                   |
/// |---------------|--------|-------------------------------|
/// | weight()      | [E, d] | moe.gate.weight               |
/// | classifier()  | [D, d] | moe.domain_classifier.weight  |
/// | affinity()    | [D, E] | moe.domain_affinity (used as stored: q A) |
///
/// RoutingResult: logits are x Wg^T + q A (after any bias of the wrapped router); the rest as
/// TopKRouter's. q is not kept: backward recomputes it from x (one [T, D] product), so the
/// router stays const and shareable between threads.
template <class GatingType>
class DomainAwareRouter : public RouterWrapper<TopKRouter<GatingType>> {
  using Base = RouterWrapper<TopKRouter<GatingType>>;
  using Base::router_;

 public:
  using typename Base::scalar_type;
  using S = scalar_type;
  using gating_type = GatingType;

  /// This router consumes DomainLoss (it reads the classifier's probabilities, which the
  /// routing does not hold); every other loss is the layer's business.
  template <class L>
  static constexpr bool accepts_loss = std::is_same_v<L, DomainLoss>;

  struct Names {
    std::string classifier = "domain_classifier.weight";
    std::string affinity = "domain_affinity";
  };

  /// Wraps router ([E, d]) with a classifier [D, d] and affinities [D, E].
  DomainAwareRouter(TopKRouter<GatingType> router, RowMatrix<S> classifier, RowMatrix<S> affinity)
      : Base(std::move(router)), classifier_(std::move(classifier)), affinity_(std::move(affinity)) {
    check_shapes_impl("DomainAwareRouter::DomainAwareRouter()");
  }

  /// Zero weights: E experts over inputs of width d, D domains, k experts per token.
  DomainAwareRouter(Index num_experts, Index input_dim, Index num_domains, Index k, GatingType gating = {})
      : DomainAwareRouter(TopKRouter<GatingType>(num_experts, input_dim, k, std::move(gating)),
                          RowMatrix<S>::Zero(num_domains, input_dim), RowMatrix<S>::Zero(num_domains, num_experts)) {}

  [[nodiscard]] Index k() const noexcept { return router_.k(); }
  [[nodiscard]] Index num_domains() const noexcept { return classifier_.rows(); }
  [[nodiscard]] RowMatrix<S>& weight() noexcept { return router_.weight(); }
  [[nodiscard]] const RowMatrix<S>& weight() const noexcept { return router_.weight(); }
  [[nodiscard]] RowMatrix<S>& classifier() noexcept { return classifier_; }
  [[nodiscard]] const RowMatrix<S>& classifier() const noexcept { return classifier_; }
  [[nodiscard]] RowMatrix<S>& affinity() noexcept { return affinity_; }
  [[nodiscard]] const RowMatrix<S>& affinity() const noexcept { return affinity_; }
  [[nodiscard]] GatingType& gating() noexcept { return router_.gating(); }
  [[nodiscard]] const GatingType& gating() const noexcept { return router_.gating(); }
  [[nodiscard]] Names& names() noexcept { return names_; }
  [[nodiscard]] const Names& names() const noexcept { return names_; }

  template <class F>
  void for_each_parameter(F&& f) {
    router_.for_each_parameter(f);
    f(names_.classifier, classifier_);
    f(names_.affinity, affinity_);
  }
  template <class F>
  void for_each_parameter(F&& f) const {
    router_.for_each_parameter(f);
    f(names_.classifier, classifier_);
    f(names_.affinity, affinity_);
  }

  /// The wrapped router's check, and the classifier and affinities against E, d and D (D >= 1,
  /// as at construction, in case both were resized through their accessors).
  void check_shapes() const {
    router_.check_shapes();
    check_shapes_impl("DomainAwareRouter::check_shapes()");
  }

  /// z = x C^T [T, D], the classifier's logits.
  template <class Arch = xsimd::default_arch>
  void domain_logits(const ConstMatrixRef<S>& x, MatrixRef<S> z, GemmKernel kernel = GemmKernel::fast) const {
    detail::require(x.cols() == this->input_dim(), "DomainAwareRouter::domain_logits()", "x columns (input_dim)",
                    this->input_dim(), x.cols());
    kernels::gemm<Arch>(z, x, Op::none, classifier_, Op::transpose, S(1), S(0), kernel);
  }
  /// q = softmax(x C^T) [T, D], the classifier's probabilities (what DomainLoss reads).
  template <class Arch = xsimd::default_arch>
  void domain_probs(const ConstMatrixRef<S>& x, MatrixRef<S> q, GemmKernel kernel = GemmKernel::fast) const {
    domain_logits<Arch>(x, q, kernel);
    kernels::SoftmaxRows<Arch>{}(q.data(), q.rows(), q.cols(), q.outerStride());
  }
  /// The same, returning a new [T, D] matrix.
  template <class Arch = xsimd::default_arch>
  [[nodiscard]] RowMatrix<S> domain_probs(const ConstMatrixRef<S>& x) const {
    RowMatrix<S> q(x.rows(), num_domains());
    domain_probs<Arch>(x, q);
    return q;
  }

  template <class Arch = xsimd::default_arch>
  void route(const ConstMatrixRef<S>& x, RoutingResult<S>& out, const ForwardContext& ctx = {}) const {
    router_.template project<Arch>(x, out, ctx);
    struct Tag {};
    detail::ScratchLease<S, Tag> q_lease;
    auto q = q_lease.matrix(x.rows(), num_domains());
    domain_probs<Arch>(x, q, ctx.gemm);
    kernels::gemm<Arch>(out.logits, q, Op::none, affinity_, Op::none, S(1), S(1), ctx.gemm);
    router_.gating().template select<Arch>(out, router_.k());
  }

  /// Backward of route() (docs/routers.md#training). The wrapped router's backward turns
  /// in.dgate and the losses' dL/dlogits into the total dL/dlogits (left in in.dlogits), dL/dWg
  /// and Wg's share of dL/dx; then, with q recomputed from x:
  ///   dL/dA += q^T dlogits,  dL/dq = dlogits A^T,  dL/dz = q * (dL/dq - <q, dL/dq>) plus every
  ///   weighted(DomainLoss{}, w) of `losses` (w (q - onehot) / T, labels from
  ///   in.context.forward.domain_ids),  dL/dC += dz^T x,  dL/dx += dz C.
  template <class Arch = xsimd::default_arch>
  void backward(const RouterBackward<S>& in, DomainAwareRouter& grad, const auto& losses) const {
    router_.template backward<Arch>(in, grad.router_, losses);
    S domain_weight = S(0);
    losses.for_each([&](const auto& term) {
      if constexpr (std::is_same_v<typename std::remove_cvref_t<decltype(term)>::loss_type, DomainLoss>)
        domain_weight += term.weight;
    });
    const ConstMatrixRef<S>& x = in.x;
    const Index T = x.rows();
    const Index D = num_domains();
    struct Tag {};
    detail::ScratchLease<S, Tag> q_lease, dz_lease;
    auto q = q_lease.matrix(T, D);
    auto dz = dz_lease.matrix(T, D);
    domain_probs<Arch>(x, q);
    const ConstMatrixRef<S> dlogits = in.dlogits;
    kernels::gemm<Arch>(grad.affinity_, q, Op::transpose, dlogits, Op::none, S(1), S(1));
    kernels::gemm<Arch>(dz, dlogits, Op::none, affinity_, Op::transpose, S(1), S(0));  // dL/dq
    for (Index t = 0; t < T; ++t) {
      S dot = 0;
      for (Index j = 0; j < D; ++j) dot += q(t, j) * dz(t, j);
      for (Index j = 0; j < D; ++j) dz(t, j) = q(t, j) * (dz(t, j) - dot);
    }
    if (domain_weight != S(0)) DomainLoss{}.backward<S>(q, in.context.forward.domain_ids, domain_weight, dz);
    kernels::gemm<Arch>(grad.classifier_, dz, Op::transpose, x, Op::none, S(1), S(1));
    kernels::gemm<Arch>(in.dx, dz, Op::none, classifier_, Op::none, S(1), S(1));
  }

 private:
  // Runs every forward (check_shapes): messages are built only on failure.
  void check_shapes_impl(const char* where) const {
    const Index E = this->num_experts();
    const Index d = this->input_dim();
    if (classifier_.rows() < 1) detail::throw_invalid(where, "num_domains (classifier rows)", ">= 1", classifier_.rows());
    if (classifier_.cols() != d)
      detail::throw_invalid(where, "classifier columns (input_dim)", d, classifier_.cols());
    if (affinity_.rows() != classifier_.rows() || affinity_.cols() != E)
      detail::throw_invalid(where, "affinity shape", detail::concat("[num_domains = ", classifier_.rows(),
                                                                    ", num_experts = ", E, "]"),
                            detail::concat("[", affinity_.rows(), ", ", affinity_.cols(), "]"));
  }

  RowMatrix<S> classifier_;
  RowMatrix<S> affinity_;
  Names names_;
};

/// Softmax, top-k, optional renormalisation over logits shifted by the domain term: the
/// golden case domain_aware.
template <class S>
using DomainAwareSoftmaxTopKRouter = DomainAwareRouter<SoftmaxTopK<S>>;

}  // namespace moe

#endif  // MOE_ROUTER_DOMAIN_AWARE_ROUTER_HPP
