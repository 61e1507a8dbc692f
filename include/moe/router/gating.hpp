// Gating rules of token-choice top-k routers: from logits [T, E] to k (expert, gate) pairs
// per token. Each rule is a small policy; TopKRouter owns the projection and calls one.
//
// Adaptive rules (TopP, ThresholdSkip) give each token between 1 and k experts: they write a
// variable number of pairs per token, still token-major (token t's pairs consecutive, best
// first), and set RoutingResult::k to 0. Their backward walks the pairs token by token.
//
// Ties: when two experts have equal scores, the lower expert index is selected first
// (moe::kernels::top_k), in every rule below.
#ifndef MOE_ROUTER_GATING_HPP
#define MOE_ROUTER_GATING_HPP

#include <moe/core/error.hpp>
#include <moe/core/scratch.hpp>
#include <moe/core/types.hpp>
#include <moe/kernels/activations.hpp>
#include <moe/kernels/softmax.hpp>
#include <moe/kernels/top_k.hpp>
#include <moe/contracts/routing_result.hpp>

#include <algorithm>
#include <cmath>
#include <limits>

namespace moe {

namespace detail {

/// Gates of token t's pairs [begin, end) recomputed from its softmax probabilities r.scores
/// for the experts they hold: raw p, or p over their sum (renormalize), summed in pair order
/// as the rules' select() does, so an unchanged run gets the same bits.
template <class S>
void softmax_subset_regate(RoutingResult<S>& r, Index t, Index begin, Index end, bool renormalize) {
  const S* p = r.scores.data() + t * r.num_experts;
  S sum = 0;
  for (Index i = begin; i < end; ++i) {
    const S v = p[r.expert[static_cast<std::size_t>(i)]];
    r.gate[static_cast<std::size_t>(i)] = v;
    sum += v;
  }
  if (renormalize)
    for (Index i = begin; i < end; ++i) r.gate[static_cast<std::size_t>(i)] /= sum;
}

}  // namespace detail

/// softmax over all experts, then the k largest probabilities; optionally renormalised so
/// the k weights sum to 1. Mixtral (renormalize = true), Qwen2-MoE and OLMoE
/// (renormalize = norm_topk_prob), Switch (k = 1, renormalize = false).
template <class S>
struct SoftmaxTopK {
  using scalar_type = S;
  bool renormalize = true;

  void validate(Index /*num_experts*/, Index /*k*/) const {}

  template <class Arch>
  void select(RoutingResult<S>& out, Index k) const {
    const Index T = out.num_tokens;
    const Index E = out.num_experts;
    out.scores = out.logits;
    kernels::SoftmaxRows<Arch>{}(out.scores.data(), T, E, E);
    for (Index t = 0; t < T; ++t) {
      const S* row = out.scores.data() + t * E;
      Index* idx = out.expert.data() + t * k;
      kernels::top_k(row, E, k, idx);
      S sum = 0;
      for (Index j = 0; j < k; ++j) {
        out.token[static_cast<std::size_t>(t * k + j)] = t;
        out.gate[static_cast<std::size_t>(t * k + j)] = row[idx[j]];
        sum += row[idx[j]];
      }
      if (renormalize)
        for (Index j = 0; j < k; ++j) out.gate[static_cast<std::size_t>(t * k + j)] /= sum;
    }
  }

  /// Recomputes the gates of token t's pairs [begin, end) by this rule for the experts they
  /// now hold (overflow rerouting, routing replay); an unchanged run gets select()'s bits.
  template <class Arch>
  void regate(RoutingResult<S>& r, Index t, Index begin, Index end) const {
    detail::softmax_subset_regate(r, t, begin, end, renormalize);
  }

  /// Adds dL/dlogits to dlogits [T, E] given dL/dgate per assignment. The gradient reaches
  /// every logit through the softmax, not only the selected ones.
  void backward(const RoutingResult<S>& r, Index k, const S* dgate, MatrixRef<S> dlogits) const {
    const Index E = r.num_experts;
    for (Index t = 0; t < r.num_tokens; ++t) {
      const S* p = r.scores.data() + t * E;
      const Index* idx = r.expert.data() + t * k;
      const S* dg = dgate + t * k;
      const S* g = r.gate.data() + t * k;
      // dp for the selected probabilities; through the renormalisation g_j = p_j / sum p.
      S sum_p = 0, dot = 0;
      for (Index j = 0; j < k; ++j) {
        sum_p += p[idx[j]];
        dot += dg[j] * g[j];
      }
      S c = 0;  // sum_m p_m dp_m
      for (Index j = 0; j < k; ++j) {
        const S dp = renormalize ? (dg[j] - dot) / sum_p : dg[j];
        c += p[idx[j]] * dp;
      }
      for (Index e = 0; e < E; ++e) dlogits(t, e) -= p[e] * c;
      for (Index j = 0; j < k; ++j) {
        const S dp = renormalize ? (dg[j] - dot) / sum_p : dg[j];
        dlogits(t, idx[j]) += p[idx[j]] * dp;
      }
    }
  }
};

/// The k largest logits, then softmax over those k (GPT-OSS; its router has a learned bias,
/// which TopKRouter adds to the logits). `scores` holds the logits.
template <class S>
struct TopKSoftmax {
  using scalar_type = S;
  /// The k gates of a token are one softmax: each depends on every selected logit.
  static constexpr bool couples_gates = true;

  void validate(Index /*num_experts*/, Index /*k*/) const {}

  template <class Arch>
  void select(RoutingResult<S>& out, Index k) const {
    const Index T = out.num_tokens;
    const Index E = out.num_experts;
    out.scores = out.logits;
    for (Index t = 0; t < T; ++t) {
      const S* row = out.logits.data() + t * E;
      Index* idx = out.expert.data() + t * k;
      kernels::top_k(row, E, k, idx);
      S* g = out.gate.data() + t * k;
      for (Index j = 0; j < k; ++j) {
        out.token[static_cast<std::size_t>(t * k + j)] = t;
        g[j] = row[idx[j]];
      }
      kernels::SoftmaxRows<Arch>{}(g, 1, k, k);
    }
  }

  /// Recomputes the gates of token t's pairs [begin, end) by this rule for the experts they
  /// now hold (overflow rerouting, routing replay); an unchanged run gets select()'s bits.
  template <class Arch>
  void regate(RoutingResult<S>& r, Index t, Index begin, Index end) const {
    const S* row = r.scores.data() + t * r.num_experts;
    S* g = r.gate.data() + begin;
    for (Index i = begin; i < end; ++i) g[i - begin] = row[r.expert[static_cast<std::size_t>(i)]];
    kernels::SoftmaxRows<Arch>{}(g, 1, end - begin, end - begin);
  }

  /// Only the k selected logits get a gradient: that of a softmax over them.
  void backward(const RoutingResult<S>& r, Index k, const S* dgate, MatrixRef<S> dlogits) const {
    for (Index t = 0; t < r.num_tokens; ++t) {
      const Index* idx = r.expert.data() + t * k;
      const S* dg = dgate + t * k;
      const S* g = r.gate.data() + t * k;
      S dot = 0;
      for (Index j = 0; j < k; ++j) dot += g[j] * dg[j];
      for (Index j = 0; j < k; ++j) dlogits(t, idx[j]) += g[j] * (dg[j] - dot);
    }
  }
};

/// DeepSeek-V3: sigmoid scores; a correction bias that only steers selection; experts in
/// n_group groups, a group scored by the sum of its top-2 biased scores, the best
/// topk_group groups kept and every other expert masked to -inf; the top k of the biased
/// scores among the kept groups; weights from the unbiased scores, renormalised (optional)
/// and multiplied by routed_scaling_factor.
///
/// transformers masks with 0.0 instead of -inf; the two agree whenever the biased scores
/// of kept experts are positive. -inf is the rule as written in the paper, and never
/// selects a masked expert.
template <class S>
struct SigmoidGroupLimited {
  using scalar_type = S;
  Index n_group = 1;
  Index topk_group = 1;
  S routed_scaling_factor = S(1);
  bool renormalize = true;
  /// Selection-only bias [E] (e_score_correction_bias); empty means zero.
  Vector<S> correction_bias;

  /// Runs on every forward (MoELayer checks the policies' settings), so the messages are
  /// built only on failure: a passing check allocates nothing.
  void validate(Index num_experts, Index k) const {
    constexpr const char* where = "SigmoidGroupLimited::validate()";
    detail::require(n_group >= 1, where, "n_group", ">= 1", n_group);
    if (num_experts % n_group != 0)
      detail::throw_invalid(where, "n_group dividing num_experts", detail::concat("a divisor of ", num_experts), n_group);
    if (topk_group < 1 || topk_group > n_group)
      detail::throw_invalid(where, "topk_group", detail::concat("in [1, n_group = ", n_group, "]"), topk_group);
    const Index reachable = topk_group * (num_experts / n_group);
    if (k > reachable)
      detail::throw_invalid(where, "top_k", detail::concat("<= topk_group * experts per group = ", reachable), k);
    if (correction_bias.size() != 0 && correction_bias.size() != num_experts)
      detail::throw_invalid(where, "correction_bias length", detail::concat("0 or num_experts = ", num_experts),
                            correction_bias.size());
  }

  template <class Arch>
  void select(RoutingResult<S>& out, Index k) const {
    const Index T = out.num_tokens;
    const Index E = out.num_experts;
    const Index group_size = E / n_group;
    const Index per_group = std::min<Index>(2, group_size);
    out.scores = out.logits;
    // Row by row, not over all T * E values: where an element falls between the SIMD body
    // and the scalar tail must depend on its column only, or a token's scores would change
    // with its position in the batch (GemmKernel::batch_invariant).
    for (Index t = 0; t < T; ++t) kernels::Sigmoid<Arch>{}(out.scores.data() + t * E, E);

    // Scratch, O(E) and independent of T: the calling thread's, grown once (no allocation
    // in steady state).
    struct Tag;
    detail::ScratchLease<S, Tag> biased_lease, group_lease;
    detail::ScratchLease<Index, Tag> order_lease;
    S* const biased = biased_lease.data(static_cast<std::size_t>(E));
    S* const group_scores = group_lease.data(static_cast<std::size_t>(n_group));
    Index* const order = order_lease.data(static_cast<std::size_t>(std::max(E, n_group)));
    constexpr S neg_inf = -std::numeric_limits<S>::infinity();
    for (Index t = 0; t < T; ++t) {
      const S* score = out.scores.data() + t * E;
      for (Index e = 0; e < E; ++e)
        biased[e] = score[e] + (correction_bias.size() ? correction_bias[e] : S(0));
      for (Index g = 0; g < n_group; ++g) {
        kernels::top_k(biased + g * group_size, group_size, per_group, order);
        S s = 0;
        for (Index j = 0; j < per_group; ++j) s += biased[g * group_size + order[j]];
        group_scores[g] = s;
      }
      kernels::top_k(group_scores, n_group, topk_group, order);
      // Mask the groups not kept.
      for (Index g = 0; g < n_group; ++g) {
        bool kept = false;
        for (Index j = 0; j < topk_group; ++j) kept = kept || order[j] == g;
        if (!kept)
          for (Index e = g * group_size; e < (g + 1) * group_size; ++e) biased[e] = neg_inf;
      }
      Index* idx = out.expert.data() + t * k;
      kernels::top_k(biased, E, k, idx);
      S* gate = out.gate.data() + t * k;
      S sum = 0;
      for (Index j = 0; j < k; ++j) {
        out.token[static_cast<std::size_t>(t * k + j)] = t;
        gate[j] = score[idx[j]];
        sum += gate[j];
      }
      // Same operation order as transformers: divide by (sum + 1e-20), then scale.
      for (Index j = 0; j < k; ++j) {
        if (renormalize) gate[j] /= sum + S(1e-20);
        gate[j] *= routed_scaling_factor;
      }
    }
  }

  /// Through the scaling, the renormalisation and the sigmoid of the selected experts; the
  /// correction bias only steered selection and gets no gradient.
  void backward(const RoutingResult<S>& r, Index k, const S* dgate, MatrixRef<S> dlogits) const {
    const Index E = r.num_experts;
    for (Index t = 0; t < r.num_tokens; ++t) {
      const S* s = r.scores.data() + t * E;
      const Index* idx = r.expert.data() + t * k;
      const S* dg = dgate + t * k;
      S sum = 0, dot = 0;
      for (Index j = 0; j < k; ++j) {
        sum += s[idx[j]];
        dot += dg[j] * s[idx[j]];
      }
      const S denom = sum + S(1e-20);
      for (Index j = 0; j < k; ++j) {
        const S sj = s[idx[j]];
        const S ds = renormalize ? routed_scaling_factor * (dg[j] / denom - dot / (denom * denom))
                                 : routed_scaling_factor * dg[j];
        dlogits(t, idx[j]) += ds * sj * (S(1) - sj);
      }
    }
  }
};

namespace detail {

/// Backward of gates that are softmax probabilities of a subset of a token's experts, raw
/// (g_j = p_j) or renormalised over the subset (g_j = p_j / sum_subset p): adds dL/dlogits to
/// dlogits [T, E] for token-major pairs [begin, end) of one token t. p = r.scores (softmax).
template <class S>
void softmax_subset_backward(const RoutingResult<S>& r, Index t, Index begin, Index end, const S* dgate,
                             bool renormalize, MatrixRef<S> dlogits) {
  const Index E = r.num_experts;
  const S* p = r.scores.data() + t * E;
  S sum_p = 0, dot = 0;
  for (Index i = begin; i < end; ++i) {
    sum_p += p[r.expert[static_cast<std::size_t>(i)]];
    dot += dgate[i] * r.gate[static_cast<std::size_t>(i)];
  }
  // dp_j for the kept probabilities; c = sum_j p_j dp_j; dz_e = p_e (dp_e - c).
  S c = 0;
  for (Index i = begin; i < end; ++i) {
    const S dp = renormalize ? (dgate[i] - dot) / sum_p : dgate[i];
    c += p[r.expert[static_cast<std::size_t>(i)]] * dp;
  }
  for (Index e = 0; e < E; ++e) dlogits(t, e) -= p[e] * c;
  for (Index i = begin; i < end; ++i) {
    const Index e = r.expert[static_cast<std::size_t>(i)];
    const S dp = renormalize ? (dgate[i] - dot) / sum_p : dgate[i];
    dlogits(t, e) += p[e] * dp;
  }
}

/// Calls f(t, begin, end) for each token's run of pairs in a token-major result with any
/// number of pairs per token (tokens with none are skipped).
template <class S, class F>
void for_each_token_run(const RoutingResult<S>& r, F&& f) {
  const Index n = r.size();
  Index begin = 0;
  while (begin < n) {
    const Index t = r.token[static_cast<std::size_t>(begin)];
    Index end = begin + 1;
    while (end < n && r.token[static_cast<std::size_t>(end)] == t) ++end;
    f(t, begin, end);
    begin = end;
  }
}

/// The adaptive rules' selection: p = softmax(logits) into out.scores; for each token its top k
/// (best first, ties to the lower index), of which the first length(row, idx) are kept, their
/// gates the raw p or, with renormalize, p over the kept sum. Writes the pairs compacted,
/// token-major, and sets k = 0. Never ahead of the T * k slots TopKRouter::project() sized.
template <class Arch, class S, class Length>
void select_prefix(RoutingResult<S>& out, Index k, bool renormalize, Length&& length) {
  const Index T = out.num_tokens;
  const Index E = out.num_experts;
  out.scores = out.logits;
  kernels::SoftmaxRows<Arch>{}(out.scores.data(), T, E, E);
  struct Tag;
  ScratchLease<Index, Tag> idx_lease;
  Index* const idx = idx_lease.data(static_cast<std::size_t>(k));
  std::size_t n = 0;
  for (Index t = 0; t < T; ++t) {
    const S* row = out.scores.data() + t * E;
    kernels::top_k(row, E, k, idx);
    const Index m = length(row, idx);
    const std::size_t first = n;
    S sum = 0;
    for (Index j = 0; j < m; ++j, ++n) {
      out.token[n] = t;
      out.expert[n] = idx[j];
      out.gate[n] = row[idx[j]];
      sum += row[idx[j]];
    }
    if (renormalize)
      for (std::size_t i = first; i < n; ++i) out.gate[i] /= sum;
  }
  out.reset(T, E, static_cast<Index>(n), 0);
}

}  // namespace detail

/// Top-p routing (Huang et al. 2024, "Harder Tasks Need More Experts: Dynamic Routing in MoE
/// Models"): p = softmax over all experts; sorted in decreasing order, keep the smallest
/// prefix whose sum reaches `threshold` (the expert that crosses it included), at most k
/// experts (the router's k is the cap, max_k). Gates are the kept probabilities as they are,
/// not renormalised. A token keeps 1..k experts; the result has k = 0 (variable count).
template <class S>
struct TopP {
  using scalar_type = S;
  /// Each token keeps experts until their probabilities sum to at least this; in (0, 1].
  S threshold = S(0.5);

  /// Runs on every forward: the message is built only on failure.
  void validate(Index /*num_experts*/, Index /*k*/) const {
    if (!(threshold > S(0) && threshold <= S(1)))
      detail::throw_invalid("TopP::validate()", "threshold", "in (0, 1]", threshold);
  }

  template <class Arch>
  void select(RoutingResult<S>& out, Index max_k) const {
    // The fewest of the sorted top max_k whose sum reaches the threshold, the crossing one included.
    detail::select_prefix<Arch>(out, max_k, false, [&](const S* row, const Index* idx) {
      S cumulative = 0;
      Index m = 0;
      while (m < max_k) {
        cumulative += row[idx[m++]];
        if (cumulative >= threshold) break;
      }
      return m;
    });
  }

  /// Recomputes the gates of token t's pairs [begin, end) by this rule for the experts they
  /// now hold (overflow rerouting, routing replay); an unchanged run gets select()'s bits.
  template <class Arch>
  void regate(RoutingResult<S>& r, Index t, Index begin, Index end) const {
    detail::softmax_subset_regate(r, t, begin, end, false);
  }

  /// The gradient of the raw probabilities of the kept experts reaches every logit through
  /// the softmax. Which experts are kept is piecewise constant and has no gradient.
  void backward(const RoutingResult<S>& r, Index /*k*/, const S* dgate, MatrixRef<S> dlogits) const {
    detail::for_each_token_run(r, [&](Index t, Index begin, Index end) {
      detail::softmax_subset_backward(r, t, begin, end, dgate, false, dlogits);
    });
  }
};

/// Dynamic expert skipping (NAEE, Lu et al. 2024, "Not All Experts are Equal"): p = softmax
/// over all experts; take the top k; drop every selected expert j after the first whose
/// p_j < beta * p_first; gates are the kept probabilities renormalised to sum to 1 (a token
/// that keeps only its first expert has gate 1). A token keeps 1..k experts; the result has
/// k = 0 (variable count). beta = 0 is softmax top-k, renormalised.
template <class S>
struct ThresholdSkip {
  using scalar_type = S;
  /// Relative threshold against the token's largest probability; in [0, 1].
  S beta = S(0.5);

  /// Runs on every forward: the message is built only on failure.
  void validate(Index /*num_experts*/, Index /*k*/) const {
    if (!(beta >= S(0) && beta <= S(1))) detail::throw_invalid("ThresholdSkip::validate()", "beta", "in [0, 1]", beta);
  }

  template <class Arch>
  void select(RoutingResult<S>& out, Index k) const {
    // The top k are sorted, so the experts at or above beta * p_first are a prefix.
    detail::select_prefix<Arch>(out, k, true, [&](const S* row, const Index* idx) {
      const S bar = beta * row[idx[0]];
      Index m = 1;
      while (m < k && !(row[idx[m]] < bar)) ++m;
      return m;
    });
  }

  /// Recomputes the gates of token t's pairs [begin, end) by this rule for the experts they
  /// now hold (overflow rerouting, routing replay); an unchanged run gets select()'s bits.
  template <class Arch>
  void regate(RoutingResult<S>& r, Index t, Index begin, Index end) const {
    detail::softmax_subset_regate(r, t, begin, end, true);
  }

  /// Through the renormalisation over the kept experts and the softmax, to every logit.
  void backward(const RoutingResult<S>& r, Index /*k*/, const S* dgate, MatrixRef<S> dlogits) const {
    detail::for_each_token_run(r, [&](Index t, Index begin, Index end) {
      detail::softmax_subset_backward(r, t, begin, end, dgate, true, dlogits);
    });
  }
};

}  // namespace moe

#endif  // MOE_ROUTER_GATING_HPP
