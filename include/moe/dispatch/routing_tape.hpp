// Step 2 (bookkeeping), optional: routing decisions recorded by one forward and replayed by a
// later one instead of routing (docs/replay.md).
#ifndef MOE_DISPATCH_ROUTING_TAPE_HPP
#define MOE_DISPATCH_ROUTING_TAPE_HPP

#include <moe/contracts/dispatch_plan.hpp>
#include <moe/contracts/routing_result.hpp>
#include <moe/dispatch/dispatch_plan.hpp>
#include <moe/core/error.hpp>
#include <moe/core/types.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace moe {

/// One forward call's routing: per assignment (token-major, a token's experts best first) the
/// token, the expert, the gate and whether capacity kept it, plus the call's shape. Indices are
/// 32-bit and kept flags bytes; gates are stored as double, which holds a float gate exactly,
/// so a replay gives a float or a double layer its recorded gates bit for bit.
struct RoutingRecord {
  Index layer_index = 0;  ///< ForwardContext::layer_index of the call
  Index num_tokens = 0;
  Index num_experts = 0;
  Index k = 0;            ///< assignments per token; 0 when it varies (top-p, threshold skipping)
  Index capacity = -1;    ///< slots per expert in that call (-1: unlimited)
  std::vector<std::int32_t> token;
  std::vector<std::int32_t> expert;
  std::vector<double> gate;
  std::vector<std::uint8_t> kept;

  [[nodiscard]] Index size() const noexcept { return static_cast<Index>(token.size()); }

  /// Throws std::invalid_argument (`where`: what expected x, got y) unless the record is one a
  /// forward could have written: arrays of one length; tokens token-major in [0, num_tokens),
  /// T * k of them in order when k > 0; experts in [0, num_experts), none twice for a token;
  /// kept flags 0 or 1; no expert keeping more than `capacity` assignments. Replay and the
  /// file reader run it, so a hand-made or damaged record never reaches the stages.
  void validate(const char* where) const {
    const Index n = size();
    constexpr Index max32 = std::numeric_limits<std::int32_t>::max();
    detail::require(num_tokens >= 0 && num_tokens <= max32 && num_experts >= 1 && num_experts <= max32 && k >= 0 &&
                        k <= num_experts && capacity >= -1,
                    where, "record shape (tokens in [0, 2^31), experts in [1, 2^31), k in [0, experts], capacity >= -1)",
                    "valid",
                    detail::concat("tokens ", num_tokens, ", experts ", num_experts, ", k ", k, ", capacity ", capacity));
    detail::require(static_cast<Index>(expert.size()) == n && static_cast<Index>(gate.size()) == n &&
                        static_cast<Index>(kept.size()) == n,
                    where, "record arrays of one length (token, expert, gate, kept)", n,
                    detail::concat(expert.size(), ", ", gate.size(), ", ", kept.size()));
    if (k > 0) detail::require(n == num_tokens * k, where, "assignments (num_tokens * k)", num_tokens * k, n);
    for (Index i = 0; i < n; ++i) {
      const auto iu = static_cast<std::size_t>(i);
      const Index t = token[iu], e = expert[iu];
      if (t < 0 || t >= num_tokens || (i > 0 && t < token[iu - 1]) || (k > 0 && t != i / k))
        detail::throw_invalid(where, "record token", "token-major indices in [0, num_tokens)",
                              detail::concat(t, " at assignment ", i));
      if (e < 0 || e >= num_experts)
        detail::throw_invalid(where, "record expert", detail::concat("in [0, ", num_experts, ")"),
                              detail::concat(e, " at assignment ", i));
      if (kept[iu] > 1) detail::throw_invalid(where, "record kept flag", "0 or 1", detail::concat(int(kept[iu]), " at assignment ", i));
    }
    // Sorting copies keeps both checks O(n log n) whatever the file claims (a record read from
    // disk may hold one token with every assignment, or experts numbered up to 2^31).
    std::vector<std::int32_t> sorted;
    for (Index begin = 0; begin < n;) {
      Index end = begin + 1;
      while (end < n && token[static_cast<std::size_t>(end)] == token[static_cast<std::size_t>(begin)]) ++end;
      sorted.assign(expert.begin() + begin, expert.begin() + end);
      std::sort(sorted.begin(), sorted.end());
      if (const auto dup = std::adjacent_find(sorted.begin(), sorted.end()); dup != sorted.end())
        detail::throw_invalid(where, "record expert", "each expert at most once per token",
                              detail::concat(*dup, " twice for token ", token[static_cast<std::size_t>(begin)]));
      begin = end;
    }
    if (capacity >= 0) {
      sorted.clear();
      for (Index i = 0; i < n; ++i)
        if (kept[static_cast<std::size_t>(i)] != 0) sorted.push_back(expert[static_cast<std::size_t>(i)]);
      std::sort(sorted.begin(), sorted.end());
      for (std::size_t i = 0; i < sorted.size();) {
        std::size_t j = i;
        while (j < sorted.size() && sorted[j] == sorted[i]) ++j;
        if (static_cast<Index>(j - i) > capacity)
          detail::throw_invalid(where, "record kept assignments per expert", detail::concat("<= capacity ", capacity),
                                detail::concat(j - i, " for expert ", sorted[i]));
        i = j;
      }
    }
  }
};

/// What a forward does with the tape attached to its context (ForwardContext::routing_tape).
enum class TapeMode : std::uint8_t {
  /// Route as usual, then append the call's decisions (after capacity and any rerouting).
  record,
  /// Skip the router: experts, gates and kept flags come from the next record. Inference only;
  /// the output is the recorded forward's bit for bit, whatever the router's weights now are.
  replay,
  /// Run the router (its logits and scores, for the losses and the backward), then take each
  /// token's experts and kept flags from the next record and recompute their gates by the
  /// router's rule (regate): training through a fixed routing (routing replay for RL, for
  /// debugging a change). Needs a router that can regate (docs/replay.md).
  replay_experts,
};

/// A sequence of routing records: filled by forwards in TapeMode::record, read back in order
/// by forwards in a replay mode (a cursor walks the records; rewind() restarts it). A replayed
/// call must match its record's layer_index, token count and expert count, else forward throws.
///
/// Not synchronised: a tape serves one stream of forward calls (one thread, or calls ordered
/// by the caller), since replay pairs calls with records by their order.
class RoutingTape {
 public:
  explicit RoutingTape(TapeMode mode = TapeMode::record) : mode_(mode) {}

  [[nodiscard]] TapeMode mode() const noexcept { return mode_; }
  /// Switches mode and rewinds the cursor.
  void set_mode(TapeMode mode) noexcept {
    mode_ = mode;
    cursor_ = 0;
  }
  [[nodiscard]] bool replaying() const noexcept { return mode_ != TapeMode::record; }

  [[nodiscard]] const std::vector<RoutingRecord>& records() const noexcept { return records_; }
  [[nodiscard]] std::size_t size() const noexcept { return records_.size(); }
  /// The index of the record the next replayed call reads.
  [[nodiscard]] std::size_t cursor() const noexcept { return cursor_; }
  void rewind() noexcept { cursor_ = 0; }
  void clear() noexcept {
    records_.clear();
    cursor_ = 0;
  }
  /// Appends a record made elsewhere (a file, another tape), after validate().
  void append(RoutingRecord record) {
    record.validate("RoutingTape::append()");
    records_.push_back(std::move(record));
  }

  /// Appends what a forward decided: routing after capacity (and rerouting), kept flags from
  /// the plan. Called by the layers in TapeMode::record.
  template <class S>
  void record(Index layer_index, const RoutingResult<S>& routing, const DispatchPlan<S>& plan) {
    constexpr const char* where = "RoutingTape::record()";
    const Index n = routing.size();
    detail::require(routing.num_tokens <= std::numeric_limits<std::int32_t>::max() &&
                        routing.num_experts <= std::numeric_limits<std::int32_t>::max(),
                    where, "token and expert counts", "below 2^31", detail::concat(routing.num_tokens, ", ", routing.num_experts));
    detail::require(static_cast<Index>(plan.slot_of.size()) == n, where, "plan for this routing (slot_of length)", n,
                    plan.slot_of.size());
    RoutingRecord r;
    r.layer_index = layer_index;
    r.num_tokens = routing.num_tokens;
    r.num_experts = routing.num_experts;
    r.k = routing.k;
    r.capacity = plan.capacity;
    const auto nu = static_cast<std::size_t>(n);
    r.token.resize(nu);
    r.expert.resize(nu);
    r.gate.resize(nu);
    r.kept.resize(nu);
    for (std::size_t i = 0; i < nu; ++i) {
      r.token[i] = static_cast<std::int32_t>(routing.token[i]);
      r.expert[i] = static_cast<std::int32_t>(routing.expert[i]);
      r.gate[i] = static_cast<double>(routing.gate[i]);
      r.kept[i] = plan.slot_of[i] >= 0 ? 1 : 0;
    }
    records_.push_back(std::move(r));
  }

  /// The record for the next replayed call, checked against it; advances the cursor.
  const RoutingRecord& next(Index layer_index, Index num_tokens, Index num_experts, const char* where) {
    if (cursor_ >= records_.size())
      detail::throw_invalid(where, "routing tape", "a record for this call",
                            detail::concat("the end of the tape (", records_.size(), " records; rewind() to replay again)"));
    const RoutingRecord& r = records_[cursor_];
    detail::require(r.layer_index == layer_index, where, detail::concat("routing tape record ", cursor_, " layer_index"),
                    layer_index, r.layer_index);
    detail::require(r.num_tokens == num_tokens, where, detail::concat("routing tape record ", cursor_, " tokens (rows of x)"),
                    num_tokens, r.num_tokens);
    detail::require(r.num_experts == num_experts, where, detail::concat("routing tape record ", cursor_, " experts"),
                    num_experts, r.num_experts);
    ++cursor_;
    return r;
  }

 private:
  TapeMode mode_;
  std::vector<RoutingRecord> records_;
  std::size_t cursor_ = 0;
};

/// Replay, first half: copies a record's triples into `routing` (sized for its tokens and
/// experts; logits and scores untouched), its gates converted to S when copy_gates.
template <class S>
void replay_routing(const RoutingRecord& record, RoutingResult<S>& routing, bool copy_gates) {
  const auto n = static_cast<std::size_t>(record.size());
  routing.reset(record.num_tokens, record.num_experts, record.size(), record.k);
  for (std::size_t i = 0; i < n; ++i) {
    routing.token[i] = record.token[i];
    routing.expert[i] = record.expert[i];
    if (copy_gates) routing.gate[i] = static_cast<S>(record.gate[i]);
  }
}

/// Replay, second half: builds `plan` from `routing` with exactly the record's kept flags and
/// capacity, as build_plan would have laid them out.
template <class S>
void replay_plan(const RoutingRecord& record, const RoutingResult<S>& routing, DispatchPlan<S>& plan) {
  build_plan_from_kept(routing, plan, record.capacity, std::span<const std::uint8_t>(record.kept));
}

}  // namespace moe

#endif  // MOE_DISPATCH_ROUTING_TAPE_HPP
