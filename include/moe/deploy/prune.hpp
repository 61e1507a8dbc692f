// Expert pruning (docs/pruning.md): measure how a layer uses its experts on calibration
// batches, choose the experts to keep, and build the smaller layer.
//
//   ExpertUsage usage;
//   for (const auto& batch : calibration) calibrate(layer, batch, usage, ws);
//   auto pruned = prune_experts(layer, select_by_usage(usage, E / 2, PruneCriterion::saliency));
//
// The pruned layer has the same C++ type with E' = kept.size() experts, renumbered 0..E'-1 in
// the order kept (ascending), so it saves under its family's names like any other layer.
#ifndef MOE_DEPLOY_PRUNE_HPP
#define MOE_DEPLOY_PRUNE_HPP

#include <moe/core/context.hpp>
#include <moe/core/error.hpp>
#include <moe/core/traits.hpp>
#include <moe/core/types.hpp>
#include <moe/expert/ffn_experts.hpp>
#include <moe/expert/gpt_oss_experts.hpp>
#include <moe/expert/swiglu_experts.hpp>
#include <moe/layer/moe_layer.hpp>
#include <moe/layer/workspace.hpp>
#include <moe/router/gating.hpp>
#include <moe/router/top_k_router.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <numeric>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace moe {

/// How a layer used each of its experts on the calibration batches passed to calibrate(),
/// accumulated over calls. Sums are kept in double whatever the layer's scalar type.
struct ExpertUsage {
  /// Assignments routed to expert e and kept by capacity: the expert's token count.
  std::vector<Index> frequency;
  /// Sum of the gates of those assignments.
  std::vector<double> gate_mass;
  /// Sum over those assignments of gate * ||expert output row||_2 (REAP's numerator).
  std::vector<double> output_mass;
  /// Tokens (rows of x) seen and calibrate() calls.
  Index tokens_seen = 0;
  Index batches = 0;

  ExpertUsage() = default;
  explicit ExpertUsage(Index num_experts) { reset(num_experts); }

  /// Zero statistics for num_experts experts.
  void reset(Index num_experts) {
    detail::require(num_experts >= 0, "ExpertUsage::reset()", "num_experts", ">= 0", num_experts);
    const auto n = static_cast<std::size_t>(num_experts);
    frequency.assign(n, 0);
    gate_mass.assign(n, 0.0);
    output_mass.assign(n, 0.0);
    tokens_seen = 0;
    batches = 0;
  }

  [[nodiscard]] Index num_experts() const noexcept { return static_cast<Index>(frequency.size()); }

  /// REAP saliency (Lasby et al. 2025): the mean over the expert's kept assignments of
  /// gate * ||expert output||_2; 0 for an expert no token reached.
  [[nodiscard]] double saliency(Index e) const {
    check(e, "ExpertUsage::saliency()");
    const Index n = frequency[static_cast<std::size_t>(e)];
    return n == 0 ? 0.0 : output_mass[static_cast<std::size_t>(e)] / static_cast<double>(n);
  }

 private:
  void check(Index e, const char* where) const {
    if (e < 0 || e >= num_experts())
      detail::throw_invalid(where, "expert index", detail::concat("in [0, ", num_experts(), ")"), e);
  }
};

/// Which usage measure select_by_usage ranks experts by.
enum class PruneCriterion : std::uint8_t {
  frequency,  ///< tokens routed and kept (ExpertUsage::frequency)
  gate_mass,  ///< sum of their gates (ExpertUsage::gate_mass)
  saliency,   ///< REAP: mean of gate * ||expert output||_2 (ExpertUsage::saliency)
};

namespace detail {

/// Expert banks prune_experts can cut: those whose per-expert tensors it knows.
template <class Bank>
inline constexpr bool prunable_bank = false;
template <class S>
inline constexpr bool prunable_bank<SwiGLUExperts<S>> = true;
template <class S, Activation Act>
inline constexpr bool prunable_bank<FFNExperts<S, Act>> = true;
template <class S>
inline constexpr bool prunable_bank<GptOssExperts<S>> = true;

/// Gating rules whose per-expert state (if any) prune_experts remaps.
template <class Gating>
inline constexpr bool prunable_gating = false;
template <class S>
inline constexpr bool prunable_gating<SoftmaxTopK<S>> = true;
template <class S>
inline constexpr bool prunable_gating<TopKSoftmax<S>> = true;
template <class S>
inline constexpr bool prunable_gating<TopP<S>> = true;
template <class S>
inline constexpr bool prunable_gating<ThresholdSkip<S>> = true;
template <class S>
inline constexpr bool prunable_gating<SigmoidGroupLimited<S>> = true;

template <class Router>
inline constexpr bool prunable_router = false;
template <class Gating>
inline constexpr bool prunable_router<TopKRouter<Gating>> = prunable_gating<Gating>;

template <class Gating>
inline constexpr bool is_group_limited = false;
template <class S>
inline constexpr bool is_group_limited<SigmoidGroupLimited<S>> = true;

template <class Layer>
inline constexpr bool prunable_layer = !router_traits<typename Layer::router_type>::is_dense &&
                                       prunable_router<typename Layer::router_type> &&
                                       prunable_bank<typename Layer::expert_type>;

template <class Layer>
constexpr void check_prunable() {
  static_assert(!router_traits<typename Layer::router_type>::is_dense,
                "moe pruning: a dense router (Soft MoE) mixes tokens into slots; expert usage and pruning are "
                "defined for token-choice routing (docs/pruning.md)");
  static_assert(prunable_router<typename Layer::router_type>,
                "moe::prune_experts: RouterType has per-expert state this function cannot remap; supported: "
                "TopKRouter with SoftmaxTopK, TopKSoftmax, SigmoidGroupLimited, TopP or ThresholdSkip "
                "(docs/pruning.md)");
  static_assert(prunable_bank<typename Layer::expert_type>,
                "moe::prune_experts: ExpertType is a bank whose per-expert tensors this function does not know; "
                "supported: SwiGLUExperts, FFNExperts, GptOssExperts (docs/pruning.md)");
}

/// Checks a keep list against E experts: non-empty, strictly increasing, in [0, E).
inline void check_kept(const std::vector<Index>& kept, Index E, const char* where) {
  if (kept.empty()) throw_invalid(where, "kept experts", "at least one", "none");
  for (std::size_t i = 0; i < kept.size(); ++i) {
    const Index e = kept[i];
    if (e < 0 || e >= E) throw_invalid(where, concat("kept[", i, "]"), concat("an expert index in [0, ", E, ")"), e);
    if (i > 0 && e <= kept[i - 1])
      throw_invalid(where, concat("kept[", i, "]"),
                    concat("> kept[", i - 1, "] = ", kept[i - 1], " (strictly increasing, no duplicates)"), e);
  }
}

/// The router's constraints that depend only on E' = kept count (k, group divisibility).
template <class Gating>
void check_kept_count(const TopKRouter<Gating>& router, Index kept_count, const char* where) {
  if (router.k() > kept_count)
    throw_invalid(where, "number of kept experts", concat(">= the router's k = ", router.k()), kept_count);
  if constexpr (is_group_limited<Gating>) {
    const auto& g = router.gating();
    if (g.n_group < 1 || kept_count % g.n_group != 0)
      throw_invalid(where, "number of kept experts",
                    concat("a multiple of the router's n_group = ", g.n_group, " (every group keeps as many)"),
                    kept_count);
    if (const Index reachable = g.topk_group * (kept_count / g.n_group); reachable < router.k())
      throw_invalid(where, "experts reachable after pruning (topk_group * kept per group)",
                    concat(">= the router's k = ", router.k()), reachable);
  }
}

/// For a group-limited router, whether every group of the original layer keeps the same number
/// of experts (so each kept expert stays in its group); throws when `where` is given.
template <class Gating>
bool check_groups(const TopKRouter<Gating>& router, const std::vector<Index>& kept, const char* where) {
  if constexpr (is_group_limited<Gating>) {
    const Index E = router.num_experts(), n_group = router.gating().n_group;
    const Index group_size = E / n_group, per_group = static_cast<Index>(kept.size()) / n_group;
    std::vector<Index> count(static_cast<std::size_t>(n_group), 0);
    for (const Index e : kept) ++count[static_cast<std::size_t>(e / group_size)];
    for (Index g = 0; g < n_group; ++g) {
      if (count[static_cast<std::size_t>(g)] == per_group) continue;
      if (where != nullptr)
        throw_invalid(where, concat("kept experts of group ", g, " (experts [", g * group_size, ", ", (g + 1) * group_size, "))"),
                      concat(per_group, " (kept count / n_group: groups keep their members)"),
                      count[static_cast<std::size_t>(g)]);
      return false;
    }
  } else {
    (void)router, (void)kept, (void)where;
  }
  return true;
}

/// Rows kept[i] * block .. + block of `from` into rows i * block of the result.
template <class S>
RowMatrix<S> keep_row_blocks(const RowMatrix<S>& from, const std::vector<Index>& kept, Index block) {
  RowMatrix<S> out(static_cast<Index>(kept.size()) * block, from.cols());
  for (std::size_t i = 0; i < kept.size(); ++i)
    out.middleRows(static_cast<Index>(i) * block, block) = from.middleRows(kept[i] * block, block);
  return out;
}

template <class S>
SwiGLUExperts<S> prune_bank(const SwiGLUExperts<S>& bank, const std::vector<Index>& kept) {
  SwiGLUExperts<S> out(static_cast<Index>(kept.size()), bank.input_dim(), bank.d_ff());
  out.gate_up() = keep_row_blocks(bank.gate_up(), kept, 2 * bank.d_ff());
  out.down() = keep_row_blocks(bank.down(), kept, bank.input_dim());
  out.names() = bank.names();
  return out;
}

template <class S, Activation Act>
FFNExperts<S, Act> prune_bank(const FFNExperts<S, Act>& bank, const std::vector<Index>& kept) {
  FFNExperts<S, Act> out(static_cast<Index>(kept.size()), bank.input_dim(), bank.d_ff());
  out.wi() = keep_row_blocks(bank.wi(), kept, bank.d_ff());
  out.wo() = keep_row_blocks(bank.wo(), kept, bank.input_dim());
  if (bank.has_biases()) {
    out.enable_biases();
    out.bi() = keep_row_blocks(bank.bi(), kept, 1);
    out.bo() = keep_row_blocks(bank.bo(), kept, 1);
  }
  out.names() = bank.names();
  return out;
}

template <class S>
GptOssExperts<S> prune_bank(const GptOssExperts<S>& bank, const std::vector<Index>& kept) {
  GptOssExperts<S> out(static_cast<Index>(kept.size()), bank.input_dim(), bank.d_ff(), bank.alpha(), bank.limit());
  out.gate_up() = keep_row_blocks(bank.gate_up(), kept, bank.input_dim());
  out.gate_up_bias() = keep_row_blocks(bank.gate_up_bias(), kept, 1);
  out.down() = keep_row_blocks(bank.down(), kept, bank.d_ff());
  out.down_bias() = keep_row_blocks(bank.down_bias(), kept, 1);
  out.names() = bank.names();
  return out;
}

template <class S>
Vector<S> keep_entries(const Vector<S>& v, const std::vector<Index>& kept) {
  if (v.size() == 0) return {};
  Vector<S> out(static_cast<Index>(kept.size()));
  for (std::size_t i = 0; i < kept.size(); ++i) out[static_cast<Index>(i)] = v[kept[i]];
  return out;
}

template <class Gating>
TopKRouter<Gating> prune_router(const TopKRouter<Gating>& router, const std::vector<Index>& kept) {
  Gating gating = router.gating();
  if constexpr (is_group_limited<Gating>) gating.correction_bias = keep_entries(gating.correction_bias, kept);
  TopKRouter<Gating> out(keep_row_blocks(router.weight(), kept, 1), router.k(), std::move(gating),
                         keep_entries(router.bias(), kept));
  out.names() = router.names();
  return out;
}

/// C(n, r), or max + 1 as soon as it is known to exceed max (no overflow for max < 2^63).
inline std::uint64_t binomial_capped(Index n, Index r, std::uint64_t max) {
  r = std::min(r, n - r);
  std::uint64_t c = 1;
  // C(n, i + 1) = C(n, i) (n - i) / (i + 1), exactly: with c = q (i + 1) + m, it is
  // q (n - i) + m (n - i) / (i + 1), the last division exact. C(n, i) grows with i up to
  // n / 2, so a value past max stays past it.
  for (Index i = 0; i < r; ++i) {
    const auto f = static_cast<std::uint64_t>(n - i), d = static_cast<std::uint64_t>(i + 1);
    const std::uint64_t q = c / d, extra = (c % d) * f / d;
    if (q > (max - extra) / f) return max + 1;
    c = q * f + extra;
    if (c > max) return max + 1;
  }
  return c;
}

/// The next r-subset of [0, n) in lexicographic order; false after the last.
inline bool next_subset(std::vector<Index>& s, Index n) {
  const auto r = static_cast<Index>(s.size());
  Index i = r - 1;
  while (i >= 0 && s[static_cast<std::size_t>(i)] == n - r + i) --i;
  if (i < 0) return false;
  ++s[static_cast<std::size_t>(i)];
  for (Index j = i + 1; j < r; ++j) s[static_cast<std::size_t>(j)] = s[static_cast<std::size_t>(j - 1)] + 1;
  return true;
}

template <class S>
double squared_distance(const RowMatrix<S>& a, const RowMatrix<S>& b) {
  double sum = 0;
  for (Index i = 0; i < a.size(); ++i) {
    const double d = static_cast<double>(a.data()[i]) - static_cast<double>(b.data()[i]);
    sum += d * d;
  }
  return sum;
}

}  // namespace detail

/// Runs layer.forward on one calibration batch x [T, d] and adds what it routed to `usage`
/// (sized for the layer on first use; call once per batch). For each expert e, each kept
/// assignment (slot p of ws.plan) adds 1 to frequency[e], its gate to gate_mass[e] and
/// gate * ||y_perm row p||_2 to output_mass[e], y_perm being the expert's output before the
/// gate. Assignments dropped by capacity count nowhere. Returns the layer's output.
template <class Layer>
RowMatrix<typename Layer::scalar_type> calibrate(const Layer& layer, const ConstMatrixRef<typename Layer::scalar_type>& x,
                                                 ExpertUsage& usage, typename Layer::workspace_type& ws,
                                                 const ForwardContext& ctx = {}) {
  static_assert(!router_traits<typename Layer::router_type>::is_dense,
                "moe::calibrate: a dense router (Soft MoE) mixes tokens into slots; expert usage is defined for "
                "token-choice and expert-choice routing (docs/pruning.md)");
  constexpr const char* where = "moe::calibrate()";
  const Index E = layer.num_experts();
  if (usage.num_experts() == 0 && usage.tokens_seen == 0) usage.reset(E);
  detail::require(usage.num_experts() == E, where, "usage num_experts (= the layer's)", E, usage.num_experts());
  RowMatrix<typename Layer::scalar_type> y(x.rows(), layer.output_dim());
  layer.forward(x, y, ws, ctx);
  const auto& plan = ws.plan;
  if (!plan.offsets.empty()) {
    detail::require(static_cast<Index>(plan.offsets.size()) == E + 1, where, "plan offsets length (num_experts + 1)", E + 1,
            plan.offsets.size());
    for (Index e = 0; e < E; ++e) {
      const auto u = static_cast<std::size_t>(e);
      for (Index p = plan.begin(e); p < plan.begin(e) + plan.count(e); ++p) {
        const double gate = static_cast<double>(plan.gate[static_cast<std::size_t>(p)]);
        double norm2 = 0;
        for (Index c = 0; c < ws.y_perm.cols(); ++c) {
          const double v = static_cast<double>(ws.y_perm(p, c));
          norm2 += v * v;
        }
        usage.frequency[u] += 1;
        usage.gate_mass[u] += gate;
        usage.output_mass[u] += gate * std::sqrt(norm2);
      }
    }
  }
  usage.tokens_seen += x.rows();
  usage.batches += 1;
  return y;
}

/// The num_keep experts with the largest usage by `criterion`, in ascending index order.
/// Ties (equal scores, e.g. experts no token reached) keep the lower expert index.
inline std::vector<Index> select_by_usage(const ExpertUsage& usage, Index num_keep, PruneCriterion criterion) {
  constexpr const char* where = "moe::select_by_usage()";
  const Index E = usage.num_experts();
  detail::require(num_keep >= 1 && num_keep <= E, where, "num_keep", detail::concat("in [1, num_experts = ", E, "]"),
                  num_keep);
  std::vector<double> score(static_cast<std::size_t>(E));
  for (Index e = 0; e < E; ++e) {
    const auto u = static_cast<std::size_t>(e);
    score[u] = criterion == PruneCriterion::frequency  ? static_cast<double>(usage.frequency[u])
               : criterion == PruneCriterion::gate_mass ? usage.gate_mass[u]
                                                        : usage.saliency(e);
  }
  std::vector<Index> order(static_cast<std::size_t>(E));
  std::iota(order.begin(), order.end(), Index{0});
  std::stable_sort(order.begin(), order.end(), [&](Index a, Index b) {
    return score[static_cast<std::size_t>(a)] > score[static_cast<std::size_t>(b)];
  });
  order.resize(static_cast<std::size_t>(num_keep));
  std::sort(order.begin(), order.end());
  return order;
}

/// The experts that at least one calibration assignment reached, ascending: pruning the others
/// removes only experts no token selected (docs/pruning.md#bit-identity).
inline std::vector<Index> used_experts(const ExpertUsage& usage) {
  std::vector<Index> kept;
  for (Index e = 0; e < usage.num_experts(); ++e)
    if (usage.frequency[static_cast<std::size_t>(e)] > 0) kept.push_back(e);
  return kept;
}

/// A copy of `layer` with only the experts `kept` (strictly increasing, in [0, E)), renumbered
/// 0..E'-1 in that order: the router's weight rows, bias entries and per-expert gating state
/// (SigmoidGroupLimited's correction bias) and the bank's per-expert tensors are cut; the
/// combiner (shared experts), capacity, executor, settings and checkpoint names are copied.
///
/// Throws std::invalid_argument when kept is empty, unsorted, has duplicates or an index out
/// of range, when E' is below the router's k, and for a group-limited router when E' is not a
/// multiple of n_group or the groups do not keep the same number of experts each.
template <class Layer>
[[nodiscard]] Layer prune_experts(const Layer& layer, const std::vector<Index>& kept) {
  detail::check_prunable<Layer>();
  if constexpr (detail::prunable_layer<Layer>) {  // else only the static_assert speaks
    constexpr const char* where = "moe::prune_experts()";
    detail::check_kept(kept, layer.num_experts(), where);
    detail::check_kept_count(layer.router(), static_cast<Index>(kept.size()), where);
    detail::check_groups(layer.router(), kept, where);
    return Layer(detail::prune_bank(layer.experts(), kept), detail::prune_router(layer.router(), kept),
                 layer.combiner(), layer.capacity(), layer.executor());
  } else {
    return layer;
  }
}

/// What select_by_reconstruction chose.
struct ReconstructionChoice {
  /// The kept experts, ascending.
  std::vector<Index> kept;
  /// Sum over the calibration batch of squared differences between the pruned and the
  /// unpruned layer's outputs, for `kept`.
  double loss = 0;
  /// Candidate subsets run (those the router accepts).
  Index subsets_tried = 0;
};

/// NAEE's expert pruning (Lu et al. 2024, "Not All Experts are Equal"): tries every subset of
/// num_keep experts in lexicographic order, runs the pruned layer on the calibration batch x
/// and keeps the subset whose output has the smallest sum of squared differences to the
/// unpruned layer's (ties: the first subset in lexicographic order). The work is bounded: when
/// C(E, num_keep) exceeds max_subsets it throws std::invalid_argument before running anything.
/// For a group-limited router, only subsets that keep the same number of experts in every
/// group are candidates.
template <class Layer>
[[nodiscard]] ReconstructionChoice select_by_reconstruction(const Layer& layer,
                                                            const ConstMatrixRef<typename Layer::scalar_type>& x,
                                                            Index num_keep, Index max_subsets,
                                                            const ForwardContext& ctx = {}) {
  detail::check_prunable<Layer>();
  constexpr const char* where = "moe::select_by_reconstruction()";
  const Index E = layer.num_experts();
  detail::require(num_keep >= 1 && num_keep <= E, where, "num_keep", detail::concat("in [1, num_experts = ", E, "]"),
                  num_keep);
  detail::require(max_subsets >= 1, where, "max_subsets", ">= 1", max_subsets);
  detail::check_kept_count(layer.router(), num_keep, where);
  // Counted exactly up to 2^62, so the message can say how many.
  constexpr std::uint64_t count_limit = std::uint64_t{1} << 62;
  if (const std::uint64_t n = detail::binomial_capped(E, num_keep, count_limit);
      n > static_cast<std::uint64_t>(max_subsets))
    detail::throw_invalid(where, detail::concat("number of candidate subsets C(", E, ", ", num_keep, ")"),
                          detail::concat("<= max_subsets = ", max_subsets),
                          n > count_limit ? std::string("more than 2^62") : detail::concat(n));
  using S = typename Layer::scalar_type;
  typename Layer::workspace_type ws;
  RowMatrix<S> reference(x.rows(), layer.output_dim()), y(x.rows(), layer.output_dim());
  layer.forward(x, reference, ws, ctx);
  ReconstructionChoice best;
  std::vector<Index> subset(static_cast<std::size_t>(num_keep));
  std::iota(subset.begin(), subset.end(), Index{0});
  do {
    if (!detail::check_groups(layer.router(), subset, nullptr)) continue;
    const Layer pruned = prune_experts(layer, subset);
    pruned.forward(x, y, ws, ctx);
    const double loss = detail::squared_distance(y, reference);
    if (best.subsets_tried == 0 || loss < best.loss) {
      best.kept = subset;
      best.loss = loss;
    }
    ++best.subsets_tried;
  } while (detail::next_subset(subset, E));
  if (best.subsets_tried == 0)
    detail::throw_invalid(where, "candidate subsets", "one that keeps as many experts in every group", "none");
  return best;
}

/// Number of trainable scalars of a layer (router, experts, combiner: for_each_parameter).
template <class Layer>
[[nodiscard]] Index parameter_count(const Layer& layer) {
  Index n = 0;
  layer.for_each_parameter([&](const std::string&, const auto& block) { n += block.size(); });
  return n;
}

}  // namespace moe

#endif  // MOE_DEPLOY_PRUNE_HPP
