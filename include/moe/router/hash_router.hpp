// Hash routing (Roller et al. 2021): a fixed function of the token id picks the expert, so
// routing has no parameters and no balancing loss.
#ifndef MOE_ROUTER_HASH_ROUTER_HPP
#define MOE_ROUTER_HASH_ROUTER_HPP

#include <moe/core/context.hpp>
#include <moe/core/error.hpp>
#include <moe/core/random.hpp>
#include <moe/core/types.hpp>
#include <moe/contracts/routing_result.hpp>
#include <moe/contracts/training.hpp>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>
#include <xsimd/xsimd.hpp>

namespace moe {

/// expert(t) = table[token_ids[t]] (a lookup table over a vocabulary), or, in the stateless
/// mode, hash(token_ids[t]) mod E; the gate is always 1.
///
/// RoutingResult: T triples, one per token in token order; k = 1. The router has no logits:
/// `logits` is all zeros [T, E] (so a loss that reads it sees a uniform router, never
/// uninitialised memory: z-loss log(E)^2, aux loss 1, both constant) and `scores` is the
/// one-hot [T, E] of the chosen experts.
///
/// Token ids must lie in [0, vocab_size()) for a table, and be >= 0 in the stateless mode.
///
/// | member  | shape   | golden name     |
/// |---------|---------|-----------------|
/// | table() | [vocab] | moe.hash_table  |
///
/// The table is not trainable (for_each_parameter names nothing), and the decision does not
/// depend on x: backward gives x no gradient through the router; x gets its gradient from
/// the experts alone.
template <class S>
class HashRouter {
 public:
  using scalar_type = S;
  static constexpr bool token_choice = true;
  static constexpr bool needs_token_ids = true;

  /// Routes by a given table: token id v goes to expert table[v], each in [0, num_experts).
  HashRouter(std::vector<Index> table, Index num_experts, Index input_dim)
      : table_(std::move(table)), num_experts_(num_experts), input_dim_(input_dim), stateless_(false) {
    constexpr const char* where = "HashRouter::HashRouter()";
    check_sizes(where);
    detail::require(!table_.empty(), where, "table length (vocabulary size)", ">= 1", table_.size());
    for (std::size_t v = 0; v < table_.size(); ++v)
      detail::require(table_[v] >= 0 && table_[v] < num_experts_, where,
                      detail::concat("table[", v, "] (an expert index)"), detail::concat("in [0, ", num_experts_, ")"),
                      table_[v]);
  }

  /// A random balanced table over vocab_size ids: every expert gets floor(vocab / E) or
  /// ceil(vocab / E) ids, placed by a Fisher-Yates shuffle driven by CounterRng(seed, 0).
  [[nodiscard]] static HashRouter balanced(Index vocab_size, Index num_experts, Index input_dim,
                                           std::uint64_t seed) {
    constexpr const char* where = "HashRouter::balanced()";
    detail::require(vocab_size >= 1, where, "vocab_size", ">= 1", vocab_size);
    detail::require(num_experts >= 1, where, "num_experts", ">= 1", num_experts);
    std::vector<Index> table(static_cast<std::size_t>(vocab_size));
    for (Index v = 0; v < vocab_size; ++v) table[static_cast<std::size_t>(v)] = v % num_experts;
    const CounterRng rng(seed, 0);
    for (Index i = vocab_size - 1; i > 0; --i) {
      const auto j = static_cast<Index>(rng.bits(static_cast<std::uint64_t>(i), 0) % static_cast<std::uint64_t>(i + 1));
      std::swap(table[static_cast<std::size_t>(i)], table[static_cast<std::size_t>(j)]);
    }
    return HashRouter(std::move(table), num_experts, input_dim);
  }

  /// No table: expert = hash(id) mod E, with the hash CounterRng(seed, 0).bits(id, 0), so any
  /// id >= 0 routes, and ids spread evenly over experts in expectation.
  [[nodiscard]] static HashRouter stateless(Index num_experts, Index input_dim, std::uint64_t seed = 0) {
    return HashRouter(StatelessTag{}, num_experts, input_dim, seed);
  }

  [[nodiscard]] Index num_experts() const noexcept { return num_experts_; }
  [[nodiscard]] Index input_dim() const noexcept { return input_dim_; }
  [[nodiscard]] bool is_stateless() const noexcept { return stateless_; }
  /// The table's length; 0 in the stateless mode.
  [[nodiscard]] Index vocab_size() const noexcept { return static_cast<Index>(table_.size()); }
  [[nodiscard]] const std::vector<Index>& table() const noexcept { return table_; }

  /// The expert of one token id (the error names the id and the vocabulary size).
  [[nodiscard]] Index expert_of(std::int64_t id) const {
    const Index e = lookup(id);
    if (e < 0) detail::throw_invalid("HashRouter::expert_of()", "token id", valid_ids(), id);
    return e;
  }

  /// No trainable tensors.
  template <class F>
  void for_each_parameter(F&&) {}
  template <class F>
  void for_each_parameter(F&&) const {}

  /// Backward of route(): nothing depends on x or on a parameter, so it adds nothing (a loss
  /// on the constant logits has no path back either).
  template <class Arch = xsimd::default_arch>
  void backward(const RouterBackward<S>& /*in*/, HashRouter& /*grad*/, const auto& /*losses*/) const {}

  template <class Arch = xsimd::default_arch>
  void route(const ConstMatrixRef<S>& x, RoutingResult<S>& out, const ForwardContext& ctx = {}) const {
    constexpr const char* where = "HashRouter::route()";
    detail::require(x.cols() == input_dim(), where, "x columns (input_dim)", input_dim(), x.cols());
    const Index T = x.rows();
    detail::require(static_cast<Index>(ctx.token_ids.size()) == T, where, "token_ids length (one per row of x)", T,
                    ctx.token_ids.size());
    const Index E = num_experts_;
    out.reset(T, E, T, 1);
    detail::ensure_shape(out.logits, T, E);
    detail::ensure_shape(out.scores, T, E);
    out.logits.setZero();
    out.scores.setZero();
    for (Index t = 0; t < T; ++t) {
      const std::int64_t id = ctx.token_ids[static_cast<std::size_t>(t)];
      const Index e = lookup(id);
      if (e < 0) detail::throw_invalid(where, detail::concat("token_ids[", t, "]"), valid_ids(), id);
      const auto i = static_cast<std::size_t>(t);
      out.token[i] = t;
      out.expert[i] = e;
      out.gate[i] = S(1);
      out.scores(t, e) = S(1);
    }
  }

 private:
  // A tag, so that a braced table such as {0} never selects this constructor.
  struct StatelessTag {};
  HashRouter(StatelessTag, Index num_experts, Index input_dim, std::uint64_t seed)
      : num_experts_(num_experts), input_dim_(input_dim), stateless_(true), seed_(seed) {
    check_sizes("HashRouter::stateless()");
  }

  // The expert of id, or -1 when the id is out of range.
  [[nodiscard]] Index lookup(std::int64_t id) const noexcept {
    if (stateless_)
      return id < 0 ? Index{-1}
                    : static_cast<Index>(CounterRng(seed_, 0).bits(static_cast<std::uint64_t>(id), 0) %
                                         static_cast<std::uint64_t>(num_experts_));
    return id < 0 || id >= vocab_size() ? Index{-1} : table_[static_cast<std::size_t>(id)];
  }

  [[nodiscard]] std::string valid_ids() const {
    return stateless_ ? std::string(">= 0") : detail::concat("in [0, vocab_size = ", vocab_size(), ")");
  }

  void check_sizes(const char* where) const {
    detail::require(num_experts_ >= 1, where, "num_experts", ">= 1", num_experts_);
    detail::require(input_dim_ >= 1, where, "input_dim", ">= 1", input_dim_);
  }

  std::vector<Index> table_;
  Index num_experts_;
  Index input_dim_;
  bool stateless_;
  std::uint64_t seed_ = 0;
};


}  // namespace moe

#endif  // MOE_ROUTER_HASH_ROUTER_HPP
