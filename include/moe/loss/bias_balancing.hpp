// DeepSeek-V3's balancing (Liu et al. 2024, section 2.1.2): the auxiliary-loss-free bias
// update, and the complementary sequence-wise balance loss.
#ifndef MOE_LOSS_BIAS_BALANCING_HPP
#define MOE_LOSS_BIAS_BALANCING_HPP

#include <moe/core/error.hpp>
#include <moe/core/scratch.hpp>
#include <moe/core/types.hpp>
#include <moe/contracts/routing_result.hpp>
#include <moe/contracts/statistics.hpp>
#include <moe/contracts/training.hpp>
#include <xsimd/xsimd.hpp>

#include <cstdint>
#include <span>
#include <type_traits>
#include <vector>

namespace moe {

/// The auxiliary-loss-free update a training loop calls after each step:
///   b_e += gamma * sign(mean load - load_e),
/// so an overloaded expert's bias falls and an underloaded one's rises. The bias only
/// steers selection (SigmoidGroupLimited::correction_bias), never the gate values, so it
/// balances load without a gradient that competes with the language-model loss.
///
/// With `mean_centred`, the mean of the update is subtracted so the biases keep their mean
/// (zero if they start at zero): a common variant that stops them drifting together, which
/// changes nothing in selection since top-k is invariant to a shared offset.
///
/// The sign is computed exactly in integers (sign(sum - E * load_e)). An empty bias stands
/// for zero (as in SigmoidGroupLimited) and is first sized to E.
struct BiasBalancing {
  double update_rate = 1e-3;  ///< gamma (DeepSeek-V3: 0.001, then 0 for the last 500B tokens)
  bool mean_centred = false;

  template <class S>
  void operator()(Vector<S>& bias, std::span<const Index> load) const {
    constexpr const char* where = "BiasBalancing::operator()()";
    const auto E = static_cast<Index>(load.size());
    detail::require(E >= 1, where, "load length (one per expert)", ">= 1", E);
    if (bias.size() == 0) bias = Vector<S>::Zero(E);
    detail::require(bias.size() == E, where, "bias length (one per expert, as the load)", E, bias.size());
    Index total = 0;
    for (const Index l : load) total += l;
    Index sign_sum = 0;
    for (Index e = 0; e < E; ++e) {
      const Index diff = total - E * load[static_cast<std::size_t>(e)];
      const Index sign = (diff > 0) - (diff < 0);
      sign_sum += sign;
      bias[e] += static_cast<S>(update_rate * static_cast<double>(sign));
    }
    if (mean_centred) bias.array() -= static_cast<S>(update_rate * static_cast<double>(sign_sum) / static_cast<double>(E));
  }

  /// The kept load of the last forward (after capacity).
  template <class S>
  void operator()(Vector<S>& bias, const LayerStatistics& stats) const {
    (*this)(bias, std::span<const Index>(stats.expert_load));
  }

  /// The router's choices (before capacity).
  template <class S>
  void operator()(Vector<S>& bias, const RoutingResult<S>& routing) const {
    const std::vector<Index> counts = routing.expert_counts();
    (*this)(bias, std::span<const Index>(counts));
  }
};

/// DeepSeek-V3's complementary sequence-wise balance loss, for each sequence of T_s tokens:
///   L_seq = alpha * sum_e f_e P_e,
///   f_e = E / (k T_s) * (tokens of the sequence that chose e),
///   P_e = mean over the sequence's tokens of s'_{t,e} = s_{t,e} / sum_e' s_{t,e'},
/// averaged over the sequences of the batch. s are routing.scores, which must be
/// non-negative (DeepSeek-V3's sigmoid scores, or softmax probabilities); the choices are the
/// router's triples, i.e. after the correction bias steered them. At perfect balance every
/// f_e = 1 and L = alpha, whatever the scores.
///
/// Backward: f counts discrete choices and is a constant; the gradient flows through P, i.e.
/// through each token's normalised scores, then through the score function (score_function:
/// sigmoid for DeepSeek-V3, softmax for a softmax router) to the logits. The bias update has
/// no gradient: it is not a loss.
struct SequenceBalanceLoss {
  /// How routing.scores came from routing.logits, for backward.
  enum class ScoreFunction : std::uint8_t { sigmoid, softmax };

  double alpha = 1e-4;  ///< DeepSeek-V3: 0.0001
  ScoreFunction score_function = ScoreFunction::sigmoid;

  /// sequence_length 0: the whole batch is one sequence. Needs a token-choice result (k >= 1).
  template <class S>
  [[nodiscard]] S operator()(const RoutingResult<S>& routing, Index sequence_length = 0) const {
    constexpr const char* where = "SequenceBalanceLoss::operator()()";
    check(routing, sequence_length, where);
    const Index T = routing.num_tokens;
    const Index E = routing.num_experts;
    const Index k = routing.k;
    if (T == 0) return S(0);
    const Index n = sequence_length == 0 ? T : sequence_length;
    const Index B = T / n;
    const std::vector<Index> count = counts(routing, n);
    Vector<S> p(E);
    S total = 0;
    for (Index b = 0; b < B; ++b) {
      p.setZero();
      for (Index t = b * n; t < (b + 1) * n; ++t) p += routing.scores.row(t).transpose() / routing.scores.row(t).sum();
      S seq = 0;
      for (Index e = 0; e < E; ++e)
        seq += static_cast<S>(E) / static_cast<S>(k * n) * static_cast<S>(count[static_cast<std::size_t>(b * E + e)]) *
               (p[e] / static_cast<S>(n));
      total += seq;
    }
    return static_cast<S>(alpha) * total / static_cast<S>(B);
  }

  /// Adds weight * dL/dscores to dscores [T, E]. For token t of sequence b (n tokens, B
  /// sequences), with Z_t = sum_e s_te and c = alpha / B * E / (k n) / n:
  ///   dL/ds_tj = c * (count_bj / Z_t - sum_e count_be s_te / Z_t^2).
  template <class S>
  void backward_scores(const RoutingResult<S>& routing, Index sequence_length, std::type_identity_t<S> weight,
                       MatrixRef<std::type_identity_t<S>> dscores) const {
    constexpr const char* where = "SequenceBalanceLoss::backward_scores()";
    check(routing, sequence_length, where);
    const Index T = routing.num_tokens;
    const Index E = routing.num_experts;
    detail::require_shape(dscores, T, E, where, "dscores");
    if (T == 0 || weight == S(0)) return;
    const Index n = sequence_length == 0 ? T : sequence_length;
    const Index B = T / n;
    // Counts kept by the thread: no allocation in a steady-state backward.
    struct Tag {};
    detail::ScratchLease<Index, Tag> count_lease;
    const Index* count = counts(routing, n, count_lease);
    const S c = weight * static_cast<S>(alpha) / static_cast<S>(B) * static_cast<S>(E) /
                (static_cast<S>(routing.k) * static_cast<S>(n) * static_cast<S>(n));
    for (Index t = 0; t < T; ++t) {
      const Index* cnt = count + (t / n) * E;
      const S z = routing.scores.row(t).sum();
      S dot = 0;
      for (Index e = 0; e < E; ++e) dot += static_cast<S>(cnt[e]) * routing.scores(t, e);
      for (Index e = 0; e < E; ++e) dscores(t, e) += c * (static_cast<S>(cnt[e]) / z - dot / (z * z));
    }
  }

  /// Adds weight * dL/dlogits to dlogits [T, E], through score_function (scores must be
  /// sigmoid(logits) or softmax(logits), as the router computed them).
  template <class S>
  void backward(const RoutingResult<S>& routing, Index sequence_length, std::type_identity_t<S> weight,
                MatrixRef<std::type_identity_t<S>> dlogits) const {
    const Index T = routing.num_tokens;
    const Index E = routing.num_experts;
    detail::require_shape(dlogits, T, E, "SequenceBalanceLoss::backward()", "dlogits");
    // dL/dscores [T, E] kept by the thread: no allocation in a steady-state backward.
    struct Tag {};
    detail::ScratchLease<RowMatrix<S>, Tag> ds_lease;
    RowMatrix<S>& ds = ds_lease.one();
    ds.setZero(T, E);
    backward_scores(routing, sequence_length, weight, ds);
    const auto& s = routing.scores;
    for (Index t = 0; t < T; ++t) {
      if (score_function == ScoreFunction::sigmoid) {
        for (Index e = 0; e < E; ++e) dlogits(t, e) += ds(t, e) * s(t, e) * (S(1) - s(t, e));
      } else {
        const S dot = s.row(t).dot(ds.row(t));
        for (Index e = 0; e < E; ++e) dlogits(t, e) += s(t, e) * (ds(t, e) - dot);
      }
    }
  }

  /// The loss protocol (docs/losses.md): per sequence of the forward's
  /// ForwardContext::sequence_length tokens.
  template <class S>
  [[nodiscard]] S value(const LossInput<S>& in) const {
    return (*this)(in.routing, in.context.forward.sequence_length);
  }
  template <class Arch = xsimd::default_arch, class S>
  void backward(const LossInput<S>& in, std::type_identity_t<S> weight, const LossGradient<S>& out) const {
    backward(in.routing, in.context.forward.sequence_length, weight, out.dlogits);
  }

 private:
  template <class S>
  static void check(const RoutingResult<S>& routing, Index sequence_length, const char* where) {
    const Index T = routing.num_tokens;
    const Index E = routing.num_experts;
    const Index k = routing.k;
    // Runs in every backward: messages are built only on failure, so a passing check allocates nothing.
    if (k < 1 || routing.size() != T * k)
      detail::throw_invalid(where, "a token-choice routing (k >= 1, T * k assignments)",
                            detail::concat("T * k = ", T, " * ", k), routing.size());
    detail::require_shape(routing.scores, T, E, where, "routing scores");
    if (sequence_length < 0 || (sequence_length != 0 && T % sequence_length != 0))
      detail::throw_invalid(where, "sequence_length", detail::concat("0 or a divisor of the number of tokens ", T),
                            sequence_length);
  }

  // Choices of expert e by the tokens of sequence b, at [b * E + e]; counted from the
  // triples' token field, so any assignment order works.
  template <class S>
  static std::vector<Index> counts(const RoutingResult<S>& routing, Index n) {
    std::vector<Index> count(static_cast<std::size_t>(routing.num_tokens / n * routing.num_experts), 0);
    count_into(routing, n, count.data());
    return count;
  }
  /// The same counts in a lease's buffer.
  template <class S, class Tag>
  static const Index* counts(const RoutingResult<S>& routing, Index n, detail::ScratchLease<Index, Tag>& lease) {
    Index* count = lease.filled(static_cast<std::size_t>(routing.num_tokens / n * routing.num_experts), 0);
    count_into(routing, n, count);
    return count;
  }
  template <class S>
  static void count_into(const RoutingResult<S>& routing, Index n, Index* count) {
    const Index E = routing.num_experts;
    for (Index i = 0; i < routing.size(); ++i) {
      const auto iu = static_cast<std::size_t>(i);
      ++count[routing.token[iu] / n * E + routing.expert[iu]];
    }
  }
};

}  // namespace moe

#endif  // MOE_LOSS_BIAS_BALANCING_HPP
