// Expert pruning (include/moe/deploy/prune.hpp): usage statistics against a reference computed
// here from the routing rule, the selection rules, the bit-identity of pruning experts no token
// selects, the errors, and the save/load round trip of a pruned layer. Expected values come
// from hand computation or from layers built here by hand, never from the code under test.
#include <moe/deploy/prune.hpp>
#include <moe/io/save_layer.hpp>

#include "support/errors.hpp"
#include "support/random.hpp"

#include <catch2/catch.hpp>
#include <support/bits.hpp>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>
#include <utility>
#include <vector>

namespace {

using moe::Index;
using moe::RowMatrix;
using moe::test::require_invalid;

template <class S>
RowMatrix<S> random(Index rows, Index cols, unsigned seed, double scale = 1.0) {
  RowMatrix<S> m(rows, cols);
  moe::test::fill(m, seed, scale);
  return m;
}

template <class S>
moe::Vector<S> random_vector(Index n, unsigned seed, double scale) {
  moe::Vector<S> v(n);
  moe::test::fill(v, seed, scale);
  return v;
}

bool contains(const std::vector<Index>& v, Index e) { return std::find(v.begin(), v.end(), e) != v.end(); }

/// [0, E) without the experts in `pruned`.
std::vector<Index> complement(Index E, const std::vector<Index>& pruned) {
  std::vector<Index> kept;
  for (Index e = 0; e < E; ++e)
    if (!contains(pruned, e)) kept.push_back(e);
  return kept;
}

/// GPT-OSS layer whose router bias makes the experts in `never` unreachable (bias -40 against
/// logits of order 1): top-k of the logits never picks them.
template <class S>
moe::GptOssMoE<S> gpt_oss_layer(Index E, Index d, Index ff, Index k, const std::vector<Index>& never, unsigned seed) {
  moe::GptOssExperts<S> experts(E, d, ff);
  moe::test::fill(experts.gate_up(), seed, 0.3);
  moe::test::fill(experts.gate_up_bias(), seed + 1, 0.1);
  moe::test::fill(experts.down(), seed + 2, 0.3);
  moe::test::fill(experts.down_bias(), seed + 3, 0.1);
  moe::Vector<S> bias = random_vector<S>(E, seed + 4, 0.3);
  for (const Index e : never) bias[e] = S(-40);
  moe::TopKSoftmaxRouter<S> router(random<S>(E, d, seed + 5, 0.5), k, {}, std::move(bias));
  router.names() = {"router.weight", "router.bias"};
  return moe::GptOssMoE<S>(std::move(experts), std::move(router));
}

/// Mixtral layer for inputs whose column 0 is a constant 3: the router rows of the experts in
/// `never` get -10 in that column, so their logits sit near -30, below every other expert's.
template <class S>
moe::MixtralMoE<S> mixtral_layer(Index E, Index d, Index ff, Index k, const std::vector<Index>& never, unsigned seed,
                                 bool renormalize = true) {
  RowMatrix<S> w = random<S>(E, d, seed + 2, 0.5);
  for (const Index e : never) w(e, 0) = S(-10);
  return moe::MixtralMoE<S>(moe::test::swiglu<S>(E, d, ff, seed),
                            moe::SoftmaxTopKRouter<S>(std::move(w), k, moe::SoftmaxTopK<S>{renormalize}));
}

/// T tokens of N(0, 1) with column 0 set to 3 (the constant feature mixtral_layer keys on).
template <class S>
RowMatrix<S> tokens_with_constant(Index T, Index d, unsigned seed) {
  RowMatrix<S> x = random<S>(T, d, seed);
  x.col(0).setConstant(S(3));
  return x;
}

/// The pruned layer's routing is the original's with experts renumbered by `kept`.
template <class S>
void require_same_selection(const moe::RoutingResult<S>& original, const moe::RoutingResult<S>& pruned,
                            const std::vector<Index>& kept) {
  REQUIRE(pruned.size() == original.size());
  for (Index i = 0; i < original.size(); ++i) {
    const auto u = static_cast<std::size_t>(i);
    REQUIRE(pruned.token[u] == original.token[u]);
    REQUIRE(kept[static_cast<std::size_t>(pruned.expert[u])] == original.expert[u]);
  }
}

}  // namespace

// ------------------------------------------------------------------------------------------
// 1. Pruning experts no token selects.

TEMPLATE_TEST_CASE("pruning experts no token selects leaves a GPT-OSS layer's output bit-identical",
                   "[deploy][prune]", float, double) {
  using S = TestType;
  constexpr Index d = 12, ff = 10, k = 2;
  SECTION("a small batch: the row-wise kernel computes the router's product") {
    // At most 32 tokens the router's product is the row-wise kernel, whose element (t, e)
    // does not depend on how many experts (columns) there are.
    constexpr Index E = 8, T = 24;
    const std::vector<Index> never{1, 4, 6};
    const auto layer = gpt_oss_layer<S>(E, d, ff, k, never, 11);
    const RowMatrix<S> x = random<S>(T, d, 21);
    moe::Workspace<S> ws;
    moe::ExpertUsage usage;
    const RowMatrix<S> y = moe::calibrate(layer, x, usage, ws);
    for (Index e = 0; e < E; ++e) {
      INFO("expert " << e);
      CHECK((usage.frequency[static_cast<std::size_t>(e)] == 0) == contains(never, e));
    }
    const std::vector<Index> kept = moe::used_experts(usage);
    REQUIRE(kept == std::vector<Index>{0, 2, 3, 5, 7});

    const auto pruned = moe::prune_experts(layer, kept);
    REQUIRE(pruned.num_experts() == 5);
    moe::Workspace<S> ws2;
    const RowMatrix<S> y2 = pruned.forward(x, ws2);
    require_same_selection(ws.routing, ws2.routing, kept);
    REQUIRE(moe::test::same_bits(y, y2));
  }
  SECTION("a large batch under GemmKernel::batch_invariant") {
    // Past 32 tokens Eigen's blocked GEMM computes the logits, and with 64 experts pruned to
    // 32 it rounds some logits differently (its column blocking follows E); the row-wise
    // kernel of GemmKernel::batch_invariant does not.
    constexpr Index E = 64, T = 80;
    std::vector<Index> never;
    for (Index e = 0; e < E; ++e)
      if (e % 4 == 1 || e % 4 == 2) never.push_back(e);
    const auto layer = gpt_oss_layer<S>(E, d, ff, k, never, 13);
    const RowMatrix<S> x = random<S>(T, d, 23);
    moe::ForwardContext ctx;
    ctx.gemm = moe::GemmKernel::batch_invariant;
    moe::Workspace<S> ws;
    moe::ExpertUsage usage;
    const RowMatrix<S> y = moe::calibrate(layer, x, usage, ws, ctx);
    for (const Index e : never) CHECK(usage.frequency[static_cast<std::size_t>(e)] == 0);
    const std::vector<Index> kept = complement(E, never);
    const auto pruned = moe::prune_experts(layer, kept);
    moe::Workspace<S> ws2;
    const RowMatrix<S> y2 = pruned.forward(x, ws2, ctx);
    require_same_selection(ws.routing, ws2.routing, kept);
    REQUIRE(moe::test::same_bits(y, y2));
  }
}

TEST_CASE("pruning experts no token selects leaves a DeepSeek-V3 layer's output bit-identical", "[deploy][prune]") {
  // 32 experts in 4 groups of 8; 4 of each group have a correction bias of -10, so they are
  // never selected nor among their group's top 2 (the group score): the groups' scores, the
  // selection and the gates (from the selected experts' scores) are unchanged. E = 32 and
  // E' = 16 are multiples of every SIMD width, so each sigmoid score runs in the vector body
  // before and after (a column moving to the scalar tail could change its last bit).
  using S = float;
  constexpr Index E = 32, d = 12, ff = 6, k = 4, T = 24;
  std::vector<Index> never;
  for (Index g = 0; g < 4; ++g)
    for (const Index j : {1, 3, 4, 6}) never.push_back(g * 8 + j);
  moe::SigmoidGroupLimited<S> gating;
  gating.n_group = 4;
  gating.topk_group = 2;
  gating.routed_scaling_factor = S(2.5);
  gating.correction_bias = random_vector<S>(E, 31, 0.05);
  for (const Index e : never) gating.correction_bias[e] = S(-10);
  moe::SharedExpertCombiner<moe::SwiGLUExperts<S>, moe::SharedGate::none> shared(moe::test::swiglu<S>(1, d, 7, 33));
  const moe::DeepSeekV3MoE<S> layer(moe::test::swiglu<S>(E, d, ff, 35),
                                    moe::GroupLimitedRouter<S>(random<S>(E, d, 37, 0.5), k, gating), shared);

  const RowMatrix<S> x = random<S>(T, d, 39);
  moe::Workspace<S> ws;
  moe::ExpertUsage usage;
  const RowMatrix<S> y = moe::calibrate(layer, x, usage, ws);
  for (const Index e : never) CHECK(usage.frequency[static_cast<std::size_t>(e)] == 0);

  const std::vector<Index> kept = complement(E, never);
  const auto pruned = moe::prune_experts(layer, kept);
  REQUIRE(pruned.num_experts() == 16);
  REQUIRE(pruned.router().gating().n_group == 4);
  for (std::size_t i = 0; i < kept.size(); ++i)
    REQUIRE(pruned.router().gating().correction_bias[static_cast<Index>(i)] == gating.correction_bias[kept[i]]);
  // Shared experts untouched.
  REQUIRE(moe::test::same_bits(pruned.combiner().shared_expert().gate_up(), layer.combiner().shared_expert().gate_up()));
  moe::Workspace<S> ws2;
  const RowMatrix<S> y2 = pruned.forward(x, ws2);
  require_same_selection(ws.routing, ws2.routing, kept);
  REQUIRE(moe::test::same_bits(y, y2));
}

TEMPLATE_TEST_CASE("pruning experts no token selects keeps a Mixtral layer's selection, outputs within rounding",
                   "[deploy][prune]", float, double) {
  // Softmax over all experts, then top-k: the pruned experts' exp terms leave the softmax's
  // denominator, and its sum runs over E' columns in another grouping, so the probabilities
  // round differently; bit-identity cannot be promised. Renormalised, a gate p_a / (p_a + p_b)
  // is the same number in exact arithmetic, and in floating point it differs by a few roundings
  // of the softmax and the division: |dg| <= c eps g. The output sum_j g_j y_j then moves by at
  // most c eps sum_j g_j |y_j| per element; c = 32 bounds the handful of roundings with room.
  using S = TestType;
  constexpr Index E = 6, d = 8, ff = 6, k = 2, T = 40;
  const std::vector<Index> never{2, 5};
  const RowMatrix<S> x = tokens_with_constant<S>(T, d, 41);
  for (const bool renormalize : {true, false}) {
    INFO("renormalize = " << renormalize);
    const auto layer = mixtral_layer<S>(E, d, ff, k, never, 43, renormalize);
    moe::Workspace<S> ws;
    moe::ExpertUsage usage;
    const RowMatrix<S> y = moe::calibrate(layer, x, usage, ws);
    const std::vector<Index> kept = moe::used_experts(usage);
    REQUIRE(kept == complement(E, never));

    // sum_j g_j |y_j| per output element, from the unpruned forward's slots.
    RowMatrix<S> magnitude = RowMatrix<S>::Zero(T, d);
    for (Index p = 0; p < ws.plan.rows(); ++p)
      magnitude.row(ws.plan.token[static_cast<std::size_t>(p)]) +=
          ws.plan.gate[static_cast<std::size_t>(p)] * ws.y_perm.row(p).cwiseAbs();
    const moe::RoutingResult<S> original = ws.routing;

    const auto pruned = moe::prune_experts(layer, kept);
    const RowMatrix<S> y2 = pruned.forward(x, ws);
    require_same_selection(original, ws.routing, kept);
    if (renormalize) {
      const S eps = std::numeric_limits<S>::epsilon();
      for (Index t = 0; t < T; ++t)
        for (Index c = 0; c < d; ++c) {
          INFO("token " << t << ", column " << c);
          REQUIRE(std::abs(y2(t, c) - y(t, c)) <= S(32) * eps * magnitude(t, c) + std::numeric_limits<S>::min());
        }
    }
  }
}

// ------------------------------------------------------------------------------------------
// 2. Usage statistics.

namespace {

/// The routed experts' statistics of a double Mixtral layer computed here from the rule:
/// logits = x W^T, softmax, top-2 (ties to the lower index), renormalised; capacity c per
/// expert served by (rank, token); expert e's output SwiGLU(x) = (silu(x Wg^T) * (x Wu^T)) Wd^T.
void reference_usage(const moe::MixtralMoE<double>& layer, const RowMatrix<double>& x, Index capacity,
                     std::vector<Index>& frequency, std::vector<double>& gate_mass, std::vector<double>& output_mass) {
  const Index E = layer.num_experts(), T = x.rows(), d = x.cols();
  const auto& W = layer.router().weight();
  const auto& bank = layer.experts();
  std::vector<std::array<Index, 2>> chosen(static_cast<std::size_t>(T));
  std::vector<std::array<double, 2>> gates(static_cast<std::size_t>(T));
  for (Index t = 0; t < T; ++t) {
    std::vector<double> p(static_cast<std::size_t>(E));
    double mx = -1e300, sum = 0;
    for (Index e = 0; e < E; ++e) {
      double l = 0;
      for (Index c = 0; c < d; ++c) l += x(t, c) * W(e, c);
      p[static_cast<std::size_t>(e)] = l;
      mx = std::max(mx, l);
    }
    for (auto& v : p) sum += (v = std::exp(v - mx));
    for (auto& v : p) v /= sum;
    Index a = 0;
    for (Index e = 1; e < E; ++e)
      if (p[static_cast<std::size_t>(e)] > p[static_cast<std::size_t>(a)]) a = e;
    Index b = a == 0 ? 1 : 0;
    for (Index e = 0; e < E; ++e)
      if (e != a && p[static_cast<std::size_t>(e)] > p[static_cast<std::size_t>(b)]) b = e;
    const double pa = p[static_cast<std::size_t>(a)], pb = p[static_cast<std::size_t>(b)];
    chosen[static_cast<std::size_t>(t)] = {a, b};
    gates[static_cast<std::size_t>(t)] = {pa / (pa + pb), pb / (pa + pb)};
  }
  std::vector<Index> taken(static_cast<std::size_t>(E), 0);
  for (Index rank = 0; rank < 2; ++rank)
    for (Index t = 0; t < T; ++t) {
      const Index e = chosen[static_cast<std::size_t>(t)][static_cast<std::size_t>(rank)];
      if (taken[static_cast<std::size_t>(e)] == capacity) continue;  // dropped
      ++taken[static_cast<std::size_t>(e)];
      const double g = gates[static_cast<std::size_t>(t)][static_cast<std::size_t>(rank)];
      const Index ff = bank.d_ff();
      std::vector<double> h(static_cast<std::size_t>(ff));
      for (Index j = 0; j < ff; ++j) {
        double gate = 0, up = 0;
        for (Index c = 0; c < d; ++c) {
          gate += x(t, c) * bank.gate_proj(e)(j, c);
          up += x(t, c) * bank.up_proj(e)(j, c);
        }
        h[static_cast<std::size_t>(j)] = gate / (1 + std::exp(-gate)) * up;
      }
      double norm2 = 0;
      for (Index c = 0; c < d; ++c) {
        double out = 0;
        for (Index j = 0; j < ff; ++j) out += h[static_cast<std::size_t>(j)] * bank.down_proj(e)(c, j);
        norm2 += out * out;
      }
      frequency[static_cast<std::size_t>(e)] += 1;
      gate_mass[static_cast<std::size_t>(e)] += g;
      output_mass[static_cast<std::size_t>(e)] += g * std::sqrt(norm2);
    }
}

}  // namespace

TEST_CASE("calibrate accumulates frequency, gate mass and REAP saliency as the routing rule gives them",
          "[deploy][prune]") {
  constexpr Index E = 5, d = 6, ff = 4, capacity = 5;
  moe::MixtralMoE<double> layer(moe::test::swiglu<double>(E, d, ff, 51),
                                moe::SoftmaxTopKRouter<double>(random<double>(E, d, 53), 2, moe::SoftmaxTopK<double>{true}),
                                moe::WeightedSumCombiner<double>{}, moe::Capacity::fixed(capacity));
  const RowMatrix<double> x1 = random<double>(17, d, 55), x2 = random<double>(9, d, 57);

  std::vector<Index> frequency(E, 0);
  std::vector<double> gate_mass(E, 0.0), output_mass(E, 0.0);
  reference_usage(layer, x1, capacity, frequency, gate_mass, output_mass);
  reference_usage(layer, x2, capacity, frequency, gate_mass, output_mass);
  Index kept_total = 0;
  for (const Index f : frequency) kept_total += f;
  REQUIRE(kept_total < 2 * (17 + 9));  // the capacity dropped some: the test covers drops

  moe::ExpertUsage usage;
  moe::Workspace<double> ws;
  (void)moe::calibrate(layer, x1, usage, ws);
  (void)moe::calibrate(layer, x2, usage, ws);
  REQUIRE(usage.num_experts() == E);
  REQUIRE(usage.tokens_seen == 26);
  REQUIRE(usage.batches == 2);
  for (Index e = 0; e < E; ++e) {
    INFO("expert " << e);
    const auto u = static_cast<std::size_t>(e);
    REQUIRE(usage.frequency[u] == frequency[u]);
    REQUIRE(usage.gate_mass[u] == Approx(gate_mass[u]).epsilon(1e-12));
    REQUIRE(usage.output_mass[u] == Approx(output_mass[u]).epsilon(1e-12));
    REQUIRE(usage.saliency(e) == Approx(output_mass[u] / static_cast<double>(frequency[u])).epsilon(1e-12));
  }

  // A usage sized for another layer is refused; an unused expert has saliency 0.
  moe::ExpertUsage other(3);
  require_invalid([&] { (void)moe::calibrate(layer, x1, other, ws); },
                  {"moe::calibrate(): usage num_experts (= the layer's) expected 5, got 3"});
  REQUIRE(other.saliency(2) == 0.0);
  require_invalid([&] { (void)other.saliency(3); }, {"ExpertUsage::saliency(): expert index expected in [0, 3), got 3"});
}

// ------------------------------------------------------------------------------------------
// 3. Selection.

TEST_CASE("select_by_usage ranks by the criterion and keeps the lower index on ties", "[deploy][prune]") {
  moe::ExpertUsage usage(6);
  usage.frequency = {5, 0, 9, 5, 0, 2};
  usage.gate_mass = {1.0, 0.0, 3.0, 2.0, 0.0, 2.0};
  usage.output_mass = {5.0, 0.0, 4.5, 10.0, 0.0, 4.0};  // saliency 1, 0, 0.5, 2, 0, 2
  using C = moe::PruneCriterion;
  using V = std::vector<Index>;
  CHECK(moe::select_by_usage(usage, 3, C::frequency) == V{0, 2, 3});
  CHECK(moe::select_by_usage(usage, 2, C::frequency) == V{0, 2});  // 0 and 3 tie at 5
  CHECK(moe::select_by_usage(usage, 5, C::frequency) == V{0, 1, 2, 3, 5});  // 1 and 4 tie at 0
  CHECK(moe::select_by_usage(usage, 2, C::gate_mass) == V{2, 3});  // 3 and 5 tie at 2.0
  CHECK(moe::select_by_usage(usage, 3, C::gate_mass) == V{2, 3, 5});
  CHECK(moe::select_by_usage(usage, 1, C::saliency) == V{3});  // 3 and 5 tie at 2.0
  CHECK(moe::select_by_usage(usage, 3, C::saliency) == V{0, 3, 5});
  CHECK(moe::select_by_usage(usage, 4, C::saliency) == V{0, 2, 3, 5});
  CHECK(moe::select_by_usage(usage, 6, C::saliency) == V{0, 1, 2, 3, 4, 5});
  require_invalid([&] { (void)moe::select_by_usage(usage, 0, C::saliency); },
                  {"moe::select_by_usage(): num_keep expected in [1, num_experts = 6], got 0"});
  require_invalid([&] { (void)moe::select_by_usage(usage, 7, C::frequency); }, {"got 7"});
}

namespace {

/// The Mixtral layer of `layer`'s experts `kept`, assembled here from the accessors.
moe::MixtralMoE<double> by_hand(const moe::MixtralMoE<double>& layer, const std::vector<Index>& kept) {
  const auto& bank = layer.experts();
  moe::SwiGLUExperts<double> experts(static_cast<Index>(kept.size()), bank.input_dim(), bank.d_ff());
  RowMatrix<double> w(static_cast<Index>(kept.size()), bank.input_dim());
  for (std::size_t i = 0; i < kept.size(); ++i) {
    const auto j = static_cast<Index>(i);
    experts.gate_proj(j) = bank.gate_proj(kept[i]);
    experts.up_proj(j) = bank.up_proj(kept[i]);
    experts.down_proj(j) = bank.down_proj(kept[i]);
    w.row(j) = layer.router().weight().row(kept[i]);
  }
  return moe::MixtralMoE<double>(std::move(experts),
                                 moe::SoftmaxTopKRouter<double>(std::move(w), layer.router().k(), layer.router().gating()));
}

}  // namespace

TEST_CASE("select_by_reconstruction finds the subset with the smallest output error", "[deploy][prune]") {
  constexpr Index E = 5, d = 6, ff = 5, T = 30, keep = 3;
  // Expert 0 rarely wins (its router row is low on the constant feature): the best subset is
  // not the first in lexicographic order.
  const auto layer = mixtral_layer<double>(E, d, ff, 2, {}, 61);
  auto tweaked = layer;
  tweaked.router().weight()(0, 0) = -0.6;
  const RowMatrix<double> x = tokens_with_constant<double>(T, d, 63);

  moe::Workspace<double> ws;
  const RowMatrix<double> y = tweaked.forward(x, ws);
  std::vector<Index> best;
  double best_loss = 0;
  int subsets = 0;
  for (unsigned mask = 0; mask < (1u << E); ++mask) {  // every subset; ties go to the lexicographically first
    if (std::popcount(mask) != keep) continue;
    std::vector<Index> kept;
    for (Index e = 0; e < E; ++e)
      if (mask & (1u << e)) kept.push_back(e);
    ++subsets;
    const RowMatrix<double> y2 = by_hand(tweaked, kept).forward(x, ws);
    const double loss = (y2 - y).squaredNorm();
    if (best.empty() || loss < best_loss || (loss == best_loss && kept < best)) {
      best = kept;
      best_loss = loss;
    }
  }
  REQUIRE(subsets == 10);
  REQUIRE(best != std::vector<Index>{0, 1, 2});

  const moe::ReconstructionChoice choice = moe::select_by_reconstruction(tweaked, x, keep, 10);
  REQUIRE(choice.kept == best);
  REQUIRE(choice.loss == Approx(best_loss).epsilon(1e-12));
  REQUIRE(choice.subsets_tried == 10);
}

TEST_CASE("select_by_reconstruction breaks ties by the first subset in lexicographic order", "[deploy][prune]") {
  // Experts 1 and 2 are never selected and the router's gates depend only on the selected
  // logits, so dropping either gives error exactly 0: of {0,1,3} and {0,2,3} the first wins.
  const auto layer = gpt_oss_layer<double>(4, 6, 5, 2, {1, 2}, 71);
  const RowMatrix<double> x = random<double>(20, 6, 73);
  const auto choice = moe::select_by_reconstruction(layer, x, 3, 4);
  REQUIRE(choice.kept == std::vector<Index>{0, 1, 3});
  REQUIRE(choice.loss == 0.0);
  REQUIRE(choice.subsets_tried == 4);
}

TEST_CASE("select_by_reconstruction refuses more subsets than max_subsets", "[deploy][prune]") {
  const auto layer = mixtral_layer<double>(5, 6, 4, 2, {}, 81);
  const RowMatrix<double> x = random<double>(8, 6, 83);
  require_invalid([&] { (void)moe::select_by_reconstruction(layer, x, 2, 9); },
                  {"moe::select_by_reconstruction(): number of candidate subsets C(5, 2) expected <= max_subsets = 9, "
                   "got 10"});
  REQUIRE(moe::select_by_reconstruction(layer, x, 2, 10).subsets_tried == 10);
  require_invalid([&] { (void)moe::select_by_reconstruction(layer, x, 1, 100); },
                  {"moe::select_by_reconstruction(): number of kept experts expected >= the router's k = 2, got 1"});
  require_invalid([&] { (void)moe::select_by_reconstruction(layer, x, 6, 100); }, {"num_keep expected in [1, num_experts = 5]"});

  // Counted exactly far past any bound: C(60, 30) = 118264581564861424.
  const auto wide = mixtral_layer<double>(60, 2, 1, 2, {}, 85);
  require_invalid([&] { (void)moe::select_by_reconstruction(wide, RowMatrix<double>::Zero(1, 2), 30, 1000); },
                  {"C(60, 30) expected <= max_subsets = 1000, got 118264581564861424"});
}

// ------------------------------------------------------------------------------------------
// 4. Errors.

TEST_CASE("prune_experts refuses bad keep lists and sizes the router cannot take", "[deploy][prune]") {
  const auto layer = mixtral_layer<float>(6, 4, 3, 2, {}, 91);
  const std::string where = "moe::prune_experts(): ";
  require_invalid([&] { (void)moe::prune_experts(layer, {}); }, {where + "kept experts expected at least one, got none"});
  require_invalid([&] { (void)moe::prune_experts(layer, {0, 2, 2}); },
                  {where + "kept[2] expected > kept[1] = 2 (strictly increasing, no duplicates), got 2"});
  require_invalid([&] { (void)moe::prune_experts(layer, {3, 1}); }, {where + "kept[1] expected > kept[0] = 3"});
  require_invalid([&] { (void)moe::prune_experts(layer, {0, 6}); },
                  {where + "kept[1] expected an expert index in [0, 6), got 6"});
  require_invalid([&] { (void)moe::prune_experts(layer, {-1, 2}); }, {where + "kept[0] expected an expert index"});
  require_invalid([&] { (void)moe::prune_experts(layer, {4}); },
                  {where + "number of kept experts expected >= the router's k = 2, got 1"});
  REQUIRE(moe::prune_experts(layer, {0, 5}).num_experts() == 2);

  // Group-limited: E' a multiple of n_group, every group keeping as many.
  moe::SigmoidGroupLimited<float> gating;
  gating.n_group = 2;
  gating.topk_group = 1;
  const moe::DeepSeekV3MoE<float> deepseek(
      moe::test::swiglu<float>(8, 4, 3, 93), moe::GroupLimitedRouter<float>(random<float>(8, 4, 95), 2, gating),
      moe::SharedExpertCombiner<moe::SwiGLUExperts<float>, moe::SharedGate::none>(moe::test::swiglu<float>(1, 4, 3, 97)));
  require_invalid([&] { (void)moe::prune_experts(deepseek, {0, 1, 2, 4, 5}); },
                  {where + "number of kept experts expected a multiple of the router's n_group = 2"});
  require_invalid([&] { (void)moe::prune_experts(deepseek, {0, 1, 2, 4}); },
                  {where + "kept experts of group 0 (experts [0, 4)) expected 2", "got 3"});
  require_invalid([&] { (void)moe::prune_experts(deepseek, {0, 4}); },
                  {where + "experts reachable after pruning (topk_group * kept per group) expected >= the router's k = 2, "
                           "got 1"});
  const auto pruned = moe::prune_experts(deepseek, {0, 3, 5, 6});
  REQUIRE(pruned.num_experts() == 4);
  REQUIRE(pruned.router().gating().n_group == 2);
}

TEST_CASE("prune_experts copies each kept expert's tensors and keeps the capacity", "[deploy][prune]") {
  // Switch FFN experts with biases; the expected blocks are the original's accessors.
  constexpr Index E = 5, d = 4, ff = 3;
  moe::FFNExperts<double, moe::Activation::relu> bank(E, d, ff);
  bank.enable_biases();
  moe::test::fill(bank.wi(), 101);
  moe::test::fill(bank.wo(), 102);
  moe::test::fill(bank.bi(), 103);
  moe::test::fill(bank.bo(), 104);
  bank.names().wi = "mlp.experts.expert_{e}.wi.weight";
  const moe::SwitchMoE<double> layer(bank, moe::SoftmaxTopKRouter<double>(random<double>(E, d, 105), 1, moe::SoftmaxTopK<double>{false}),
                                     moe::WeightedSumCombiner<double>{}, moe::Capacity::from_factor(1.25));
  const std::vector<Index> kept{1, 4};
  const auto pruned = moe::prune_experts(layer, kept);
  REQUIRE(pruned.capacity().kind == moe::Capacity::Kind::factor);
  REQUIRE(pruned.capacity().factor == 1.25);
  REQUIRE(pruned.router().k() == 1);
  REQUIRE_FALSE(pruned.router().gating().renormalize);
  REQUIRE(pruned.experts().names().wi == "mlp.experts.expert_{e}.wi.weight");
  for (std::size_t i = 0; i < kept.size(); ++i) {
    const auto j = static_cast<Index>(i);
    REQUIRE(pruned.experts().wi(j) == layer.experts().wi(kept[i]));
    REQUIRE(pruned.experts().wo(j) == layer.experts().wo(kept[i]));
    REQUIRE(pruned.experts().bi().row(j) == layer.experts().bi().row(kept[i]));
    REQUIRE(pruned.experts().bo().row(j) == layer.experts().bo().row(kept[i]));
    REQUIRE(pruned.router().weight().row(j) == layer.router().weight().row(kept[i]));
  }
  REQUIRE(moe::parameter_count(layer) == E * d + E * (2 * ff * d + ff + d));
  REQUIRE(moe::parameter_count(pruned) == 2 * d + 2 * (2 * ff * d + ff + d));
}

// ------------------------------------------------------------------------------------------
// 5. Save and load.

namespace {

std::filesystem::path temp_file(const char* name) { return std::filesystem::temp_directory_path() / name; }

moe::io::SafetensorsFile save_and_open(const moe::io::SafetensorsWriter& w, const char* name) {
  const auto path = temp_file(name);
  w.save(path);
  auto f = moe::io::SafetensorsFile::open(path);
  std::filesystem::remove(path);
  return f;
}

template <class Layer>
void require_same_parameters_and_output(const Layer& a, const Layer& b, const RowMatrix<typename Layer::scalar_type>& x) {
  using S = typename Layer::scalar_type;
  std::vector<RowMatrix<S>> pa, pb;
  a.for_each_parameter([&](const std::string&, const auto& block) { pa.emplace_back(block); });
  b.for_each_parameter([&](const std::string&, const auto& block) { pb.emplace_back(block); });
  REQUIRE(pa.size() == pb.size());
  for (std::size_t i = 0; i < pa.size(); ++i) REQUIRE(moe::test::same_bits(pa[i], pb[i]));
  moe::Workspace<S> ws;
  const RowMatrix<S> ya = a.forward(x, ws);
  const RowMatrix<S> yb = b.forward(x, ws);
  REQUIRE(moe::test::same_bits(ya, yb));
}

}  // namespace

TEST_CASE("a pruned Mixtral layer saves under the family's names, renumbered, and loads back bit for bit",
          "[deploy][prune][io]") {
  using S = float;
  const auto layer = mixtral_layer<S>(6, 8, 5, 2, {}, 111);
  const std::vector<Index> kept{0, 2, 3, 5};
  const auto pruned = moe::prune_experts(layer, kept);
  const std::string prefix = "model.layers.1.block_sparse_moe.";
  moe::io::SafetensorsWriter w;
  moe::io::save_layer(w, pruned, prefix, moe::io::Family::mixtral);
  const auto f = save_and_open(w, "moe_prune_test_mixtral.safetensors");

  REQUIRE(f.info(prefix + "gate.weight").shape == std::vector<std::int64_t>{4, 8});
  for (const char* name : {"w1.weight", "w2.weight", "w3.weight"}) {
    REQUIRE(f.contains(prefix + "experts.3." + name));
    REQUIRE_FALSE(f.contains(prefix + "experts.4." + name));
  }
  const auto loaded = moe::io::load_mixtral<S>(f, prefix, {2});
  REQUIRE(loaded.num_experts() == 4);
  // Loaded expert i is the original's kept[i].
  for (std::size_t i = 0; i < kept.size(); ++i) {
    const auto j = static_cast<Index>(i);
    REQUIRE(loaded.experts().gate_proj(j) == layer.experts().gate_proj(kept[i]));
    REQUIRE(loaded.experts().down_proj(j) == layer.experts().down_proj(kept[i]));
    REQUIRE(loaded.router().weight().row(j) == layer.router().weight().row(kept[i]));
  }
  require_same_parameters_and_output(pruned, loaded, tokens_with_constant<S>(20, 8, 113));
}

TEST_CASE("a pruned GPT-OSS layer saves under the family's names and loads back bit for bit", "[deploy][prune][io]") {
  using S = float;
  auto layer = gpt_oss_layer<S>(5, 6, 4, 2, {}, 121);
  const std::vector<Index> kept{1, 2, 4};
  const auto pruned = moe::prune_experts(layer, kept);
  const std::string prefix = "model.layers.0.mlp.";
  moe::io::SafetensorsWriter w;
  moe::io::save_layer(w, pruned, prefix);
  const auto f = save_and_open(w, "moe_prune_test_gpt_oss.safetensors");
  REQUIRE(f.info(prefix + "experts.gate_up_proj").shape == std::vector<std::int64_t>{3, 6, 8});
  REQUIRE(f.info(prefix + "router.bias").shape == std::vector<std::int64_t>{3});

  const auto loaded = moe::io::load_gpt_oss<S>(f, prefix, {2, 1.702, 7.0});
  REQUIRE(loaded.num_experts() == 3);
  for (std::size_t i = 0; i < kept.size(); ++i) {
    const auto j = static_cast<Index>(i);
    REQUIRE(loaded.experts().gate_up(j) == layer.experts().gate_up(kept[i]));
    REQUIRE(loaded.experts().down(j) == layer.experts().down(kept[i]));
    REQUIRE(loaded.experts().gate_up_bias().row(j) == layer.experts().gate_up_bias().row(kept[i]));
    REQUIRE(loaded.experts().down_bias().row(j) == layer.experts().down_bias().row(kept[i]));
    REQUIRE(loaded.router().bias()[j] == layer.router().bias()[kept[i]]);
  }
  require_same_parameters_and_output(pruned, loaded, random<S>(20, 6, 123));
}
