// Properties every router policy must keep, one property per test case, each run across the
// routers it applies to (TEMPLATE_LIST_TEST_CASE over a type list, as cpp-sort's
// tests/distributions/). A router enters a test through RouterFactory<Tag>, a trait
// specialised per tag that builds the router from a seed and says what the router promises;
// the tests themselves know no router by name.
//
// The properties, and who they apply to:
//   (a) gates finite and non-negative                 every router
//   (b) per-token gate sums, where a router promises one (GateSum below)
//   (c) capacity never exceeded                        every token-choice router
//   (d) same seed and step, same output; a new step moves noisy and jittered routing
//   (e) permuting the tokens permutes the output, bit for bit, where each token is routed
//       on its own (see the list above that test case for who is left out and why)
//
// Every expectation comes from the routing rule (docs/routers.md, docs/capacity.md,
// docs/soft_moe.md), never from a previous run of the code.
#include <moe/moe.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

namespace {

using moe::Activation;
using moe::Capacity;
using moe::ForwardContext;
using moe::Index;
using moe::Mode;
using moe::Priority;
using moe::RowMatrix;

// Sizes shared by every router: large enough that capacity overflows and that every GEMM
// leaves Eigen's coefficient-based path, small enough to run in milliseconds.
constexpr Index kTokens = 24;
constexpr Index kExperts = 8;
constexpr Index kDim = 12;
constexpr Index kHidden = 16;
constexpr Index kVocab = 50;
constexpr Index kTasks = 3;

/// N(0, scale^2) entries from a counter-based generator, so a seed means the same matrix on
/// every machine.
template <class S>
RowMatrix<S> counter_matrix(Index rows, Index cols, std::uint64_t seed, double scale = 1.0) {
  const moe::CounterRng rng(seed, 0);
  RowMatrix<S> m(rows, cols);
  for (Index r = 0; r < rows; ++r)
    for (Index c = 0; c < cols; ++c)
      m(r, c) = static_cast<S>(scale * rng.normal(static_cast<std::uint64_t>(r), static_cast<std::uint64_t>(c)));
  return m;
}

template <class S, Activation Act>
moe::FFNExperts<S, Act> make_experts(std::uint64_t seed) {
  moe::FFNExperts<S, Act> experts(kExperts, kDim, kHidden);
  experts.wi() = counter_matrix<S>(kExperts * kHidden, kDim, seed, 1.0 / std::sqrt(double(kDim)));
  experts.wo() = counter_matrix<S>(kExperts * kDim, kHidden, seed + 1, 1.0 / std::sqrt(double(kHidden)));
  return experts;
}

/// What a router promises about the sum of one token's gates.
enum class GateSum {
  one,                ///< exactly 1 up to rounding (renormalised or softmax over the k)
  scaling_factor,     ///< routed_scaling_factor (DeepSeek-V3 with renormalisation)
  top1_probability,   ///< the token's largest softmax probability, <= 1 (Switch, not renormalised)
  none,               ///< no promise (expert choice): see the test case
  reaches_threshold,  ///< top-p: the raw probabilities of 1..k experts, summing to >= threshold unless capped at k
  dense,              ///< Soft MoE: no triples; its dispatch and combine weights are distributions
};

template <class RouterType>
using FFNLayer = moe::MoELayer<moe::FFNExperts<typename RouterType::scalar_type, Activation::relu>, RouterType,
                               moe::WeightedSumCombiner<typename RouterType::scalar_type>>;

// The tags: one per router policy and mode. RouterFactory<Tag> builds the router and says
// what it promises. Members:
//   router_type, layer_type, name
//   make_router(seed)        random weights from a seed
//   mode                     the ForwardContext mode the router runs in
//   gate_sum, expected_sum   the per-token promise (b)
//   capacity()               the capacity the layer is built with (dropless unless Switch)
//   sequence_length          for Soft MoE: tokens per sequence (0 for everyone else)
template <class S> struct SoftmaxTopKTag {};      // Mixtral: softmax, top-2, renormalised
template <class S> struct SwitchTag {};           // Switch: softmax top-1, not renormalised, capacity 1.25
template <class S> struct TopKSoftmaxTag {};      // GPT-OSS: top-2 of biased logits, softmax over the 2
template <class S> struct GroupLimitedTag {};     // DeepSeek-V3: sigmoid, 4 groups keep 2, top-3, scaled
template <class S> struct NoisyTrainingTag {};    // Shazeer 2017, training, noise from (seed, step)
template <class S> struct NoisySuppliedTag {};    // Shazeer 2017, training, noise given by set_noise()
template <class S> struct NoisyInferenceTag {};   // Shazeer 2017, inference: no noise
template <class S> struct ExpertChoiceTag {};     // Zhou 2022, capacity factor 2
template <class S> struct HashTag {};             // Roller 2021, balanced table over 50 ids
template <class S> struct SoftTag {};             // Puigcerver 2023, 2 slots per expert, 3 sequences of 8
template <class S> struct JitteredTrainingTag {}; // Switch top-1 behind Jittered, training
template <class S> struct JitteredInferenceTag {};// the same in inference: the wrapped router exactly
template <class S> struct TopPTag {};            // Huang 2024: top-p 0.6, at most 3 experts, raw gates
template <class S> struct ThresholdSkipTag {};   // NAEE: top-3, drop p < 0.5 p_first, renormalised
template <class S> struct HierarchicalTag {};    // Shazeer 2017: 4 groups of 2, top-2 groups x top-1
template <class S> struct TaskAwareTag {};        // task-aware, 3 tasks mixed by sigmoid sensitivity, top-2

template <class Tag>
struct RouterFactory;

/// Defaults most factories share.
struct FactoryDefaults {
  static constexpr Mode mode = Mode::inference;
  static constexpr Index sequence_length = 0;
  /// Adaptive token-choice rules give each token 1..max_k pairs (RoutingResult::k = 0); their
  /// factories set adaptive and define max_k.
  static constexpr bool adaptive = false;
  static Capacity capacity() { return Capacity::unlimited(); }
};

template <class S>
struct RouterFactory<SoftmaxTopKTag<S>> : FactoryDefaults {
  using router_type = moe::SoftmaxTopKRouter<S>;
  using layer_type = FFNLayer<router_type>;
  static constexpr const char* name = "softmax top-2, renormalised (Mixtral)";
  static constexpr GateSum gate_sum = GateSum::one;
  static router_type make_router(std::uint64_t seed) {
    return router_type(counter_matrix<S>(kExperts, kDim, seed), 2, moe::SoftmaxTopK<S>{.renormalize = true});
  }
};

template <class S>
struct RouterFactory<SwitchTag<S>> : FactoryDefaults {
  using router_type = moe::SoftmaxTopKRouter<S>;
  using layer_type = FFNLayer<router_type>;
  static constexpr const char* name = "softmax top-1, capacity factor 1.25 (Switch)";
  static constexpr GateSum gate_sum = GateSum::top1_probability;
  static router_type make_router(std::uint64_t seed) {
    return router_type(counter_matrix<S>(kExperts, kDim, seed), 1, moe::SoftmaxTopK<S>{.renormalize = false});
  }
  static Capacity capacity() { return Capacity::from_factor(1.25); }
};

template <class S>
struct RouterFactory<TopKSoftmaxTag<S>> : FactoryDefaults {
  using router_type = moe::TopKSoftmaxRouter<S>;
  using layer_type = FFNLayer<router_type>;
  static constexpr const char* name = "top-2 then softmax, with logit bias (GPT-OSS)";
  static constexpr GateSum gate_sum = GateSum::one;
  static router_type make_router(std::uint64_t seed) {
    const RowMatrix<S> bias = counter_matrix<S>(1, kExperts, seed + 1, 0.5);
    return router_type(counter_matrix<S>(kExperts, kDim, seed), 2, moe::TopKSoftmax<S>{}, bias.row(0).transpose());
  }
};

template <class S>
struct RouterFactory<GroupLimitedTag<S>> : FactoryDefaults {
  using router_type = moe::GroupLimitedRouter<S>;
  using layer_type = FFNLayer<router_type>;
  static constexpr const char* name = "sigmoid, group-limited top-3, scaled 2.5 (DeepSeek-V3)";
  static constexpr GateSum gate_sum = GateSum::scaling_factor;
  static constexpr double scaling = 2.5;
  static router_type make_router(std::uint64_t seed) {
    moe::SigmoidGroupLimited<S> gating;
    gating.n_group = 4;
    gating.topk_group = 2;
    gating.routed_scaling_factor = S(scaling);
    gating.renormalize = true;
    // A correction bias of either sign: it steers selection only, so the gates stay sigmoid
    // scores (positive) times a positive factor whatever its sign.
    gating.correction_bias = counter_matrix<S>(1, kExperts, seed + 1, 0.3).row(0).transpose();
    return router_type(counter_matrix<S>(kExperts, kDim, seed), 3, std::move(gating));
  }
};

template <class S>
struct RouterFactory<NoisyTrainingTag<S>> : FactoryDefaults {
  using router_type = moe::NoisyTopKRouter<S>;
  using layer_type = FFNLayer<router_type>;
  static constexpr const char* name = "noisy top-2, training, counter-based noise (Shazeer 2017)";
  static constexpr Mode mode = Mode::training;
  static constexpr GateSum gate_sum = GateSum::one;
  static router_type make_router(std::uint64_t seed) {
    return router_type(counter_matrix<S>(kExperts, kDim, seed), counter_matrix<S>(kExperts, kDim, seed + 1), 2);
  }
};

template <class S>
struct RouterFactory<NoisySuppliedTag<S>> : RouterFactory<NoisyTrainingTag<S>> {
  using router_type = moe::NoisyTopKRouter<S>;
  static constexpr const char* name = "noisy top-2, training, noise given by set_noise()";
  static router_type make_router(std::uint64_t seed) {
    router_type r = RouterFactory<NoisyTrainingTag<S>>::make_router(seed);
    r.set_noise(counter_matrix<S>(kTokens, kExperts, seed + 2));
    return r;
  }
};

template <class S>
struct RouterFactory<NoisyInferenceTag<S>> : RouterFactory<NoisyTrainingTag<S>> {
  static constexpr const char* name = "noisy top-2, inference (no noise)";
  static constexpr Mode mode = Mode::inference;
};

template <class S>
struct RouterFactory<ExpertChoiceTag<S>> : FactoryDefaults {
  using router_type = moe::ExpertChoiceRouter<S>;
  using layer_type = FFNLayer<router_type>;
  static constexpr const char* name = "expert choice, capacity factor 2 (Zhou 2022)";
  static constexpr GateSum gate_sum = GateSum::none;
  static router_type make_router(std::uint64_t seed) {
    return router_type(counter_matrix<S>(kExperts, kDim, seed), 2.0);
  }
};

template <class S>
struct RouterFactory<HashTag<S>> : FactoryDefaults {
  using router_type = moe::HashRouter<S>;
  using layer_type = FFNLayer<router_type>;
  static constexpr const char* name = "hash, balanced table (Roller 2021)";
  // The gate is the constant 1 (docs/routers.md: gate = 1), one assignment per token.
  static constexpr GateSum gate_sum = GateSum::one;
  static router_type make_router(std::uint64_t seed) { return router_type::balanced(kVocab, kExperts, kDim, seed); }
};

template <class S>
struct RouterFactory<SoftTag<S>> : FactoryDefaults {
  using router_type = moe::SoftRouter<S>;
  using layer_type = moe::SoftMoE<S>;
  static constexpr const char* name = "Soft MoE, 2 slots per expert, sequences of 8 (Puigcerver 2023)";
  static constexpr GateSum gate_sum = GateSum::dense;
  static constexpr Index sequence_length = 8;
  static router_type make_router(std::uint64_t seed) {
    return router_type(counter_matrix<S>(kDim, kExperts * 2, seed, 1.0 / std::sqrt(double(kDim))), 2);
  }
};

template <class S>
struct RouterFactory<JitteredTrainingTag<S>> : FactoryDefaults {
  using router_type = moe::Jittered<moe::SoftmaxTopKRouter<S>>;
  using layer_type = FFNLayer<router_type>;
  static constexpr const char* name = "Jittered<softmax top-1>, eps 0.05, training";
  static constexpr Mode mode = Mode::training;
  static constexpr GateSum gate_sum = GateSum::top1_probability;
  static router_type make_router(std::uint64_t seed) {
    return router_type(RouterFactory<SwitchTag<S>>::make_router(seed), 0.05);
  }
};

template <class S>
struct RouterFactory<JitteredInferenceTag<S>> : RouterFactory<JitteredTrainingTag<S>> {
  static constexpr const char* name = "Jittered<softmax top-1>, inference (no jitter)";
  static constexpr Mode mode = Mode::inference;
};

template <class S>
struct RouterFactory<TopPTag<S>> : FactoryDefaults {
  using router_type = moe::TopPRouter<S>;
  using layer_type = FFNLayer<router_type>;
  static constexpr const char* name = "top-p 0.6, at most 3 experts, raw gates (Huang 2024)";
  static constexpr GateSum gate_sum = GateSum::reaches_threshold;
  static constexpr bool adaptive = true;
  static constexpr Index max_k = 3;
  static constexpr double threshold = 0.6;
  static router_type make_router(std::uint64_t seed) {
    return router_type(counter_matrix<S>(kExperts, kDim, seed, 0.5), max_k, moe::TopP<S>{S(threshold)});
  }
};

template <class S>
struct RouterFactory<ThresholdSkipTag<S>> : FactoryDefaults {
  using router_type = moe::ThresholdSkipRouter<S>;
  using layer_type = FFNLayer<router_type>;
  static constexpr const char* name = "top-3, drop p < 0.5 p_first, renormalised (NAEE)";
  static constexpr GateSum gate_sum = GateSum::one;
  static constexpr bool adaptive = true;
  static constexpr Index max_k = 3;
  static router_type make_router(std::uint64_t seed) {
    return router_type(counter_matrix<S>(kExperts, kDim, seed, 0.5), max_k, moe::ThresholdSkip<S>{S(0.5)});
  }
};

template <class S>
struct RouterFactory<HierarchicalTag<S>> : FactoryDefaults {
  using router_type = moe::HierarchicalRouter<S>;
  using layer_type = FFNLayer<router_type>;
  static constexpr const char* name = "hierarchical, 4 groups of 2, top-2 groups x top-1, renormalised";
  static constexpr GateSum gate_sum = GateSum::one;
  static router_type make_router(std::uint64_t seed) {
    return router_type(counter_matrix<S>(4, kDim, seed), counter_matrix<S>(kExperts, kDim, seed + 1), 2, 1);
  }
};

template <class S>
struct RouterFactory<TaskAwareTag<S>> : FactoryDefaults {
  using router_type = moe::TaskAwareSoftmaxTopKRouter<S>;
  using layer_type = FFNLayer<router_type>;
  static constexpr const char* name = "task-aware, 3 tasks, softmax top-2, renormalised";
  static constexpr GateSum gate_sum = GateSum::one;
  static router_type make_router(std::uint64_t seed) {
    std::vector<RowMatrix<S>> task_gates;
    for (Index j = 0; j < kTasks; ++j)
      task_gates.push_back(counter_matrix<S>(kExperts, kDim, seed + 1 + static_cast<std::uint64_t>(j)));
    return router_type(moe::SoftmaxTopKRouter<S>(counter_matrix<S>(kExperts, kDim, seed), 2),
                       std::move(task_gates), counter_matrix<S>(kTasks, 1, seed + 9, 1.5));
  }
};

template <class Tag>
using scalar_of = typename RouterFactory<Tag>::router_type::scalar_type;

template <class Tag>
typename RouterFactory<Tag>::layer_type make_layer(std::uint64_t seed = 11) {
  using F = RouterFactory<Tag>;
  using S = scalar_of<Tag>;
  using Experts = std::remove_cvref_t<decltype(std::declval<typename F::layer_type&>().experts())>;
  constexpr Activation act = Experts::activation;
  return typename F::layer_type(make_experts<S, act>(seed + 100), F::make_router(seed),
                                typename F::layer_type::combiner_type{}, F::capacity());
}

/// One batch: the tokens, their ids (read by hash routing only) and their tasks (read by
/// task-aware routing only; synthetic: the id modulo kTasks).
template <class S>
struct Batch {
  RowMatrix<S> x;
  std::vector<std::int64_t> ids;
  std::vector<std::int64_t> task_ids;
};

template <class S>
Batch<S> make_batch(std::uint64_t seed = 21) {
  const auto T = static_cast<std::size_t>(kTokens);
  Batch<S> b{counter_matrix<S>(kTokens, kDim, seed), std::vector<std::int64_t>(T), std::vector<std::int64_t>(T)};
  const moe::CounterRng rng(seed, 1);
  for (std::size_t t = 0; t < T; ++t) {
    b.ids[t] = static_cast<std::int64_t>(rng.bits(t, 0) % kVocab);
    b.task_ids[t] = b.ids[t] % kTasks;
  }
  return b;
}

/// The context a router of Tag runs in, with every kind of per-token id (each router reads the
/// kind it needs); the spans point into `batch`, which must outlive it.
template <class Tag, class S>
ForwardContext make_context(const Batch<S>& batch, std::uint64_t seed = 1234, std::uint64_t step = 7) {
  ForwardContext ctx;
  ctx.mode = RouterFactory<Tag>::mode;
  ctx.token_ids = batch.ids;
  ctx.task_ids = batch.task_ids;
  ctx.seed = seed;
  ctx.step = step;
  ctx.sequence_length = RouterFactory<Tag>::sequence_length;
  return ctx;
}

template <class S>
S tolerance(double scale = 1.0) {
  return static_cast<S>(16 * scale) * std::numeric_limits<S>::epsilon();
}

// Type lists ------------------------------------------------------------------------------

template <class S>
using AllTags = std::tuple<SoftmaxTopKTag<S>, SwitchTag<S>, TopKSoftmaxTag<S>, GroupLimitedTag<S>,
                           NoisyTrainingTag<S>, NoisySuppliedTag<S>, NoisyInferenceTag<S>, ExpertChoiceTag<S>,
                           HashTag<S>, SoftTag<S>, JitteredTrainingTag<S>, JitteredInferenceTag<S>, TaskAwareTag<S>,
                           TopPTag<S>, ThresholdSkipTag<S>, HierarchicalTag<S>>;

template <class... Ts>
using tuple_cat_t = decltype(std::tuple_cat(std::declval<Ts>()...));

/// The tags of a tuple whose router satisfies Pred.
template <template <class> class Pred, class Tuple>
struct filter;
template <template <class> class Pred, class... Ts>
struct filter<Pred, std::tuple<Ts...>> {
  using type = tuple_cat_t<std::conditional_t<Pred<Ts>::value, std::tuple<Ts>, std::tuple<>>...>;
};

template <class Tag>
struct is_token_choice
    : std::bool_constant<moe::router_traits<typename RouterFactory<Tag>::router_type>::token_choice> {};

using AllRouters = tuple_cat_t<AllTags<float>, AllTags<double>>;
/// Capacity acts on the assignments of token-choice routers; expert choice fills every expert
/// exactly by construction and Soft MoE's slots are never dropped (the dense path ignores it).
using TokenChoiceRouters = filter<is_token_choice, AllRouters>::type;
static_assert(std::tuple_size_v<TokenChoiceRouters> == 2 * 14);

/// Routers whose training-mode routing draws from (seed, step).
using RandomisedRouters = std::tuple<NoisyTrainingTag<float>, JitteredTrainingTag<float>, NoisyTrainingTag<double>,
                                     JitteredTrainingTag<double>>;

/// Routers that route each token on its own, so that permuting the batch permutes the
/// output. Left out, and why:
///  - expert choice: an expert picks its c best tokens from the whole batch, and equal scores
///    go to the lower token index, so the choice depends on the batch and its order;
///  - Switch with capacity: Priority::position serves tokens in batch order (and
///    batch_prioritized breaks equal gates by token index), so which tokens are dropped
///    depends on the order;
///  - Soft MoE: a slot is a weighted sum over every token of its sequence, so permuting the
///    tokens reorders a floating-point sum (equal in exact arithmetic only), and permuting
///    across sequences changes the slots;
///  - noisy top-k and Jittered in training: the noise of row t is drawn for the row index t
///    of the call, so a token moved to another row gets other noise. (Supplied noise is
///    likewise per row.)
template <class S>
using EquivariantTags = std::tuple<SoftmaxTopKTag<S>, TopKSoftmaxTag<S>, GroupLimitedTag<S>, NoisyInferenceTag<S>,
                                   HashTag<S>, JitteredInferenceTag<S>, TaskAwareTag<S>, TopPTag<S>,
                                   ThresholdSkipTag<S>, HierarchicalTag<S>>;
using EquivariantRouters = tuple_cat_t<EquivariantTags<float>, EquivariantTags<double>>;

}  // namespace

#define MOE_ROUTER_INFO(Tag)                                                     \
  INFO("router: " << RouterFactory<Tag>::name << " ("                           \
                  << (std::is_same_v<scalar_of<Tag>, float> ? "float" : "double") << ")")

// (a) -------------------------------------------------------------------------------------

TEMPLATE_LIST_TEST_CASE("router property (a): gates are finite and non-negative", "[router][properties]",
                        AllRouters) {
  using F = RouterFactory<TestType>;
  using S = scalar_of<TestType>;
  MOE_ROUTER_INFO(TestType);
  const auto layer = make_layer<TestType>();
  const Batch<S> batch = make_batch<S>();
  moe::Workspace<S> ws;
  const RowMatrix<S> y = layer.forward(batch.x, ws, make_context<TestType>(batch));
  REQUIRE(y.allFinite());
  if constexpr (F::gate_sum == GateSum::dense) {
    // No triples: the weights are the dispatch D (softmax over tokens) and the combine C
    // (softmax over slots).
    REQUIRE(ws.routing.size() == 0);
    const RowMatrix<S>& D = ws.routing.scores;
    const RowMatrix<S>& C = moe::SoftCombiner<S>::combine_weights(ws);
    REQUIRE(D.rows() == kTokens);
    REQUIRE(C.rows() == kTokens);
    REQUIRE(D.allFinite());
    REQUIRE(C.allFinite());
    REQUIRE(D.minCoeff() >= S(0));
    REQUIRE(C.minCoeff() >= S(0));
  } else {
    REQUIRE(ws.routing.size() > 0);
    for (Index i = 0; i < ws.routing.size(); ++i) {
      const S g = ws.routing.gate[static_cast<std::size_t>(i)];
      INFO("assignment " << i << " gate " << g);
      REQUIRE(std::isfinite(g));
      REQUIRE(g >= S(0));
    }
  }
}

// (b) -------------------------------------------------------------------------------------

TEMPLATE_LIST_TEST_CASE("router property (b): per-token gate sums keep the router's promise", "[router][properties]",
                        AllRouters) {
  using F = RouterFactory<TestType>;
  using S = scalar_of<TestType>;
  MOE_ROUTER_INFO(TestType);
  const auto layer = make_layer<TestType>();
  const Batch<S> batch = make_batch<S>();
  moe::Workspace<S> ws;
  const ForwardContext ctx = make_context<TestType>(batch);
  (void)layer.forward(batch.x, ws, ctx);
  const moe::RoutingResult<S>& r = ws.routing;

  if constexpr (F::gate_sum == GateSum::dense) {
    // Soft MoE has no per-token gates. Its promise: within each sequence every column of D
    // sums to 1 (a slot is a convex combination of its sequence's tokens), and every row of
    // C sums to 1 (a token's output is a convex combination of the slot outputs).
    const RowMatrix<S>& D = r.scores;
    const RowMatrix<S>& C = moe::SoftCombiner<S>::combine_weights(ws);
    const Index n = F::sequence_length;
    for (Index b = 0; b < kTokens / n; ++b)
      for (Index s = 0; s < D.cols(); ++s) {
        INFO("sequence " << b << " slot " << s);
        REQUIRE(std::abs(D.block(b * n, s, n, 1).sum() - S(1)) <= tolerance<S>());
      }
    for (Index t = 0; t < kTokens; ++t) {
      INFO("token " << t);
      REQUIRE(std::abs(C.row(t).sum() - S(1)) <= tolerance<S>());
    }
  } else {
    const RowMatrix<S> sums = r.dense_gates().rowwise().sum();
    if constexpr (F::gate_sum == GateSum::none) {
      // Expert choice promises no per-token sum: a token may be taken by no expert (sum 0),
      // by one, or by several. What holds is weaker: each gate is S[t, e] for a distinct e
      // of one softmax row, so a token's gates sum to at most 1.
      for (Index t = 0; t < kTokens; ++t) {
        INFO("token " << t);
        REQUIRE(sums(t) <= S(1) + tolerance<S>());
      }
      for (Index i = 0; i < r.size(); ++i) {
        const auto iu = static_cast<std::size_t>(i);
        REQUIRE(r.gate[iu] == r.scores(r.token[iu], r.expert[iu]));
      }
    } else {
      if constexpr (F::adaptive) {
        // 1..max_k pairs per token, token-major: token t's are consecutive, in token order.
        REQUIRE(r.k == 0);
        std::vector<Index> count(static_cast<std::size_t>(kTokens), 0);
        for (Index i = 0; i < r.size(); ++i) {
          const auto iu = static_cast<std::size_t>(i);
          if (i > 0) REQUIRE(r.token[iu] >= r.token[iu - 1]);
          ++count[static_cast<std::size_t>(r.token[iu])];
        }
        for (const Index c : count) REQUIRE((c >= 1 && c <= F::max_k));
      } else {
        REQUIRE(r.size() == kTokens * r.k);
      }
      for (Index t = 0; t < kTokens; ++t) {
        INFO("token " << t << " gate sum " << sums(t));
        if constexpr (F::gate_sum == GateSum::one) {
          REQUIRE(std::abs(sums(t) - S(1)) <= tolerance<S>());
        } else if constexpr (F::gate_sum == GateSum::scaling_factor) {
          REQUIRE(std::abs(sums(t) - S(F::scaling)) <= tolerance<S>(F::scaling));
        } else if constexpr (F::gate_sum == GateSum::reaches_threshold) {
          // Raw probabilities: each gate is its expert's p; the sum reaches the threshold, or
          // the token took max_k experts (the cap); never above 1.
          Index taken = 0;
          for (Index i = 0; i < r.size(); ++i) {
            const auto iu = static_cast<std::size_t>(i);
            if (r.token[iu] != t) continue;
            ++taken;
            REQUIRE(r.gate[iu] == r.scores(t, r.expert[iu]));
          }
          REQUIRE((sums(t) >= S(F::threshold) || taken == F::max_k));
          REQUIRE(sums(t) <= S(1) + tolerance<S>());
        } else {
          static_assert(F::gate_sum == GateSum::top1_probability);
          // Not renormalised: the one gate is the largest probability of the token's
          // softmax row (the row it was selected from), so it is at most 1 and at least 1/E.
          REQUIRE(r.k == 1);
          REQUIRE(sums(t) == r.scores.row(t).maxCoeff());
          REQUIRE(std::abs(r.scores.row(t).sum() - S(1)) <= tolerance<S>());
          REQUIRE(sums(t) <= S(1));
          REQUIRE(sums(t) >= S(1) / S(kExperts) - tolerance<S>());
        }
      }
    }
  }
}

// (c) -------------------------------------------------------------------------------------

TEMPLATE_LIST_TEST_CASE("router property (c): no expert takes more than its capacity", "[router][properties]",
                        TokenChoiceRouters) {
  using S = scalar_of<TestType>;
  MOE_ROUTER_INFO(TestType);
  auto layer = make_layer<TestType>();
  const Batch<S> batch = make_batch<S>();
  const ForwardContext ctx = make_context<TestType>(batch);

  struct Case {
    Capacity capacity;
    const char* what;
  };
  const Case cases[] = {
      {Capacity::fixed(0), "fixed 0"},
      {Capacity::fixed(2, Priority::position), "fixed 2, position"},
      {Capacity::fixed(3, Priority::batch_prioritized), "fixed 3, batch prioritized"},
      {Capacity::from_factor(1.0, 0, Priority::position), "factor 1.0, position"},
      {Capacity::from_factor(1.25, 0, Priority::batch_prioritized), "factor 1.25, batch prioritized"},
      {Capacity::from_factor(0.5, 4, Priority::position), "factor 0.5, minimum 4"},
  };
  moe::Workspace<S> ws;
  for (const Case& c : cases) {
    INFO("capacity " << c.what);
    layer.set_capacity(c.capacity);
    const RowMatrix<S> y = layer.forward(batch.x, ws, ctx);
    const moe::RoutingResult<S>& r = ws.routing;
    const moe::DispatchPlan<S>& plan = ws.plan;
    const Index n = r.size();
    if constexpr (RouterFactory<TestType>::adaptive)
      REQUIRE((n >= kTokens && n <= kTokens * RouterFactory<TestType>::max_k));  // 1..max_k per token
    else
      REQUIRE(n == kTokens * r.k);

    // The capacity the documented formula gives: c, or max(min, ceil(cf * n / E)).
    Index expected = c.capacity.absolute;
    if (c.capacity.kind == Capacity::Kind::factor)
      expected = std::max<Index>(c.capacity.minimum,
                                 static_cast<Index>(std::ceil(c.capacity.factor * double(n) / double(kExperts))));
    REQUIRE(plan.capacity == expected);

    // Each expert keeps min(demand, capacity): never more, and no slot left empty while an
    // assignment to that expert was dropped.
    const std::vector<Index> demand = r.expert_counts();
    Index kept = 0;
    for (Index e = 0; e < kExperts; ++e) {
      INFO("expert " << e << " demand " << demand[static_cast<std::size_t>(e)]);
      REQUIRE(plan.count(e) <= expected);
      REQUIRE(plan.count(e) == std::min(demand[static_cast<std::size_t>(e)], expected));
      REQUIRE(ws.stats.expert_load[static_cast<std::size_t>(e)] == plan.count(e));
      kept += plan.count(e);
    }
    REQUIRE(kept + static_cast<Index>(plan.dropped.size()) == n);
    REQUIRE(ws.stats.dropped == static_cast<Index>(plan.dropped.size()));
    // Not vacuous: 2 slots x 8 experts hold fewer than the 24 k assignments, so with a fixed
    // capacity of 2 or less some expert overflows and the min() above is exercised.
    if (c.capacity.kind == Capacity::Kind::absolute && c.capacity.absolute <= 2)
      REQUIRE(std::any_of(demand.begin(), demand.end(), [&](Index n_e) { return n_e > expected; }));

    // A token whose every assignment was dropped gets 0 from the layer (its assignments found
    // by token, which also covers the adaptive rules' 1..max_k per token).
    std::vector<bool> any_kept(static_cast<std::size_t>(kTokens), false);
    for (Index i = 0; i < n; ++i)
      if (plan.kept(i)) any_kept[static_cast<std::size_t>(r.token[static_cast<std::size_t>(i)])] = true;
    for (Index t = 0; t < kTokens; ++t) {
      if (!any_kept[static_cast<std::size_t>(t)]) {
        INFO("token " << t << " fully dropped");
        REQUIRE(y.row(t).isZero(0));
      }
    }
  }
}

// (d) -------------------------------------------------------------------------------------

TEMPLATE_LIST_TEST_CASE("router property (d): the same seed and step give the same output, bit for bit",
                        "[router][properties]", AllRouters) {
  using S = scalar_of<TestType>;
  MOE_ROUTER_INFO(TestType);
  const auto layer = make_layer<TestType>();
  const Batch<S> batch = make_batch<S>();
  const ForwardContext ctx = make_context<TestType>(batch);
  // A fresh workspace, the same workspace again (steady state), and a second layer built
  // from the same seeds.
  moe::Workspace<S> ws1, ws2;
  const RowMatrix<S> y1 = layer.forward(batch.x, ws1, ctx);
  const moe::RoutingResult<S> first = ws1.routing;
  const RowMatrix<S> y1_again = layer.forward(batch.x, ws1, ctx);
  const auto twin = make_layer<TestType>();
  const RowMatrix<S> y2 = twin.forward(batch.x, ws2, ctx);
  REQUIRE(y1 == y1_again);
  REQUIRE(y1 == y2);
  for (const moe::RoutingResult<S>* r : {&ws1.routing, &ws2.routing}) {
    REQUIRE(r->token == first.token);
    REQUIRE(r->expert == first.expert);
    REQUIRE(r->gate == first.gate);
    REQUIRE(r->logits == first.logits);
    REQUIRE(r->scores == first.scores);
  }
  REQUIRE(ws1.plan.dropped == ws2.plan.dropped);
}

TEMPLATE_LIST_TEST_CASE("router property (d): in training a new step or seed draws new noise, the same one replays it",
                        "[router][properties]", RandomisedRouters) {
  using S = scalar_of<TestType>;
  MOE_ROUTER_INFO(TestType);
  STATIC_REQUIRE(moe::router_traits<typename RouterFactory<TestType>::router_type>::needs_rng);
  STATIC_REQUIRE(RouterFactory<TestType>::mode == Mode::training);
  const auto layer = make_layer<TestType>();
  const Batch<S> batch = make_batch<S>();
  moe::Workspace<S> ws;
  auto route = [&](std::uint64_t seed, std::uint64_t step) {
    (void)layer.forward(batch.x, ws, make_context<TestType>(batch, seed, step));
    return ws.routing;
  };
  const moe::RoutingResult<S> base = route(1234, 7);
  const moe::RoutingResult<S> next_step = route(1234, 8);
  const moe::RoutingResult<S> other_seed = route(99, 7);
  const moe::RoutingResult<S> replay = route(1234, 7);
  // The gates come from the noisy logits (softmax over the k, or the top-1 probability of
  // the jittered row), so new noise moves every one of them.
  REQUIRE(next_step.logits != base.logits);
  REQUIRE(other_seed.logits != base.logits);
  REQUIRE(next_step.gate != base.gate);
  REQUIRE(other_seed.gate != base.gate);
  REQUIRE(replay.logits == base.logits);
  REQUIRE(replay.gate == base.gate);
  REQUIRE(replay.expert == base.expert);

  // In inference the same layer routes on the clean input: the seed and step do not matter.
  ForwardContext inference = make_context<TestType>(batch, 1234, 7);
  inference.mode = Mode::inference;
  (void)layer.forward(batch.x, ws, inference);
  const moe::RoutingResult<S> clean = ws.routing;
  inference.seed = 99;
  inference.step = 8;
  (void)layer.forward(batch.x, ws, inference);
  REQUIRE(ws.routing.logits == clean.logits);
  REQUIRE(ws.routing.gate == clean.gate);
}

// (e) -------------------------------------------------------------------------------------

TEMPLATE_LIST_TEST_CASE("router property (e): permuting the tokens permutes the routing and the output, bit for bit",
                        "[router][properties]", EquivariantRouters) {
  using S = scalar_of<TestType>;
  MOE_ROUTER_INFO(TestType);
  const auto layer = make_layer<TestType>();
  const Batch<S> batch = make_batch<S>();

  // A fixed shuffle (Fisher-Yates from a counter-based generator): row i of the permuted
  // batch is token perm[i] of the original.
  std::vector<Index> perm(static_cast<std::size_t>(kTokens));
  std::iota(perm.begin(), perm.end(), Index{0});
  const moe::CounterRng rng(5, 0);
  for (Index i = kTokens - 1; i > 0; --i)
    std::swap(perm[static_cast<std::size_t>(i)],
              perm[rng.bits(static_cast<std::uint64_t>(i), 0) % static_cast<std::uint64_t>(i + 1)]);
  Batch<S> permuted = batch;
  for (Index i = 0; i < kTokens; ++i) {
    const auto iu = static_cast<std::size_t>(i);
    permuted.x.row(i) = batch.x.row(perm[iu]);
    permuted.ids[iu] = batch.ids[static_cast<std::size_t>(perm[iu])];
    permuted.task_ids[iu] = batch.task_ids[static_cast<std::size_t>(perm[iu])];
  }

  moe::Workspace<S> ws, ws_p;
  const RowMatrix<S> y = layer.forward(batch.x, ws, make_context<TestType>(batch));
  const RowMatrix<S> y_p = layer.forward(permuted.x, ws_p, make_context<TestType>(permuted));
  const Index k = ws.routing.k;
  REQUIRE(ws_p.routing.k == k);

  // The routing is computed token by token (the router GEMM's row for a token does not
  // depend on its neighbours here, and selection is per row), so it permutes bit for bit:
  // logits, experts, gates, and the expert input rows the gather copies.
  for (Index i = 0; i < kTokens; ++i) {
    const Index t = perm[static_cast<std::size_t>(i)];
    INFO("row " << i << " of the permuted batch is token " << t);
    REQUIRE(ws_p.routing.logits.row(i) == ws.routing.logits.row(t));
    for (Index j = 0; j < k; ++j) {
      const auto a = static_cast<std::size_t>(i * k + j);
      const auto b = static_cast<std::size_t>(t * k + j);
      REQUIRE(ws_p.routing.token[a] == i);
      REQUIRE(ws_p.routing.expert[a] == ws.routing.expert[b]);
      REQUIRE(ws_p.routing.gate[a] == ws.routing.gate[b]);
      const Index slot = ws.plan.slot_of[b];
      const Index slot_p = ws_p.plan.slot_of[a];
      REQUIRE(ws_p.x_perm.row(slot_p) == ws.x_perm.row(slot));
    }
  }

  // The output is not bit for bit, and the reason is Eigen's GEMM blocking, not the routing:
  // a token's row moves inside its expert's slab (the slab keeps token order), and Eigen
  // 3.4's GEMM kernel (GeneralBlockPanelKernel.h) runs the rows of full 4-row panels and
  // the leftover rows of a slab through different micro-kernels, whose sums over the depth
  // are ordered differently. Measured on this input (float, SSE2): the gathered rows and the
  // first expert GEMM's rows were identical, and y_perm differed in the last bit exactly for
  // the (token, expert) rows that moved between a full panel and the remainder (e.g. slot 4
  // of a 7-row slab against slot 1). Double happened to agree bit for bit; nothing promises it.
  //
  // So the output is checked against the rounding bound of that reordering: each expert
  // output element is a dot product of depth ff, and two summation orders of it differ by at
  // most (ff - 1) eps sum|terms| (standard bound, u = eps / 2 per order); the gate-weighted
  // combine, summed in ascending expert order in both runs, adds a few eps of the same
  // magnitude. With B(t, o) = sum over t's kept assignments of gate * (|act_t| |wo_e|^T)(o),
  // |y_p(i, o) - y(t, o)| <= (2 ff + 4) eps B(t, o). A wrong gate, expert or token would miss
  // this by orders of magnitude.
  const Index ff = layer.experts().d_ff();
  const RowMatrix<S>& wo = layer.experts().wo();
  RowMatrix<S> bound = RowMatrix<S>::Zero(kTokens, kDim);
  for (Index p = 0; p < ws.plan.rows(); ++p) {
    const auto pu = static_cast<std::size_t>(p);
    Index e = 0;
    while (p >= ws.plan.offsets[static_cast<std::size_t>(e) + 1]) ++e;
    bound.row(ws.plan.token[pu]) += ws.plan.gate[pu] * (ws.hidden.row(p).segment(ff, ff).cwiseAbs() *
                                                        wo.middleRows(e * kDim, kDim).cwiseAbs().transpose());
  }
  const S gamma = S(2 * ff + 4) * std::numeric_limits<S>::epsilon();
  for (Index i = 0; i < kTokens; ++i) {
    const Index t = perm[static_cast<std::size_t>(i)];
    for (Index o = 0; o < kDim; ++o) {
      INFO("row " << i << " of the permuted batch is token " << t << ", column " << o << ": " << y_p(i, o)
                  << " against " << y(t, o) << ", bound " << gamma * bound(t, o));
      REQUIRE(std::abs(y_p(i, o) - y(t, o)) <= gamma * bound(t, o));
    }
  }
}
