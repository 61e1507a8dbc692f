// The cache of materialised experts of an on-demand store: a byte budget, pins for the experts
// a call is running, and a pluggable eviction policy (docs/store.md).
#ifndef MOE_STORE_EXPERT_CACHE_HPP
#define MOE_STORE_EXPERT_CACHE_HPP

#include <moe/contracts/statistics.hpp>
#include <moe/core/error.hpp>
#include <moe/core/types.hpp>

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace moe::store {

/// What one call (a forward or a backward of one layer) did to the cache.
using CallStats = ExpertLoadStatistics;

/// What a Prefetcher did to a cache, added up over its life (ExpertCache::prefetch_totals()).
struct PrefetchStatistics {
  std::uint64_t requested = 0;   ///< experts asked for (after dropping those resident or in flight)
  std::uint64_t loaded = 0;      ///< loads the prefetch thread ran to the end
  std::uint64_t bytes_read = 0;  ///< file bytes those loads read
  std::uint64_t placed = 0;      ///< loaded and put in the cache
  std::uint64_t not_placed = 0;  ///< loaded, but every slot was pinned or the expert resident by then
  std::uint64_t used = 0;        ///< placed, then hit by a call before being evicted
  std::uint64_t evictions = 0;   ///< residents evicted to place a prefetch
  std::uint64_t failed = 0;      ///< loads that threw (the call that needs the expert loads it and sees the error)
};

/// Where a call's statistics go: the thread that calls layer.forward / backward opens a scope,
/// and every on-demand executor that runs on that thread inside it adds its call's CallStats
/// into the scope's struct. Scopes nest (the inner one receives). Without a scope, only the
/// cache's totals() count.
class StatsScope {
 public:
  explicit StatsScope(CallStats& into) noexcept : previous_(current()) { current() = &into; }
  StatsScope(const StatsScope&) = delete;
  StatsScope& operator=(const StatsScope&) = delete;
  ~StatsScope() { current() = previous_; }
  /// The struct of the innermost scope open on this thread, or nullptr.
  static CallStats*& current() noexcept {
    thread_local CallStats* sink = nullptr;
    return sink;
  }

 private:
  CallStats* previous_;
};

/// Least recently used: evicts the resident expert whose last use is oldest (call, then order
/// of use within the call, then expert index).
struct LruPolicy {
  struct Key {
    std::uint64_t call = 0, seq = 0;
  };
  void reset(Index num_experts) { keys_.assign(static_cast<std::size_t>(num_experts), {}); }
  /// Expert e was used (hit or loaded) in call `call`, as the seq-th use overall.
  void touch(Index e, std::uint64_t call, std::uint64_t seq) { keys_[static_cast<std::size_t>(e)] = {call, seq}; }
  void erase(Index) {}
  /// Whether a should be evicted before b.
  [[nodiscard]] bool before(Index a, Index b) const {
    const Key& x = keys_[static_cast<std::size_t>(a)];
    const Key& y = keys_[static_cast<std::size_t>(b)];
    return std::tie(x.call, x.seq, a) < std::tie(y.call, y.seq, b);
  }

 private:
  std::vector<Key> keys_;
};

/// Frequency-weighted LRU: an expert used u times (calls that needed it, counted across
/// evictions, so popularity survives a reload) ranks as if its last use were `weight * u`
/// calls later. weight 0 is LRU; a large weight approaches least-frequently-used. Ties go to
/// the older use, then the lower index. Counts halve every `halve_every` calls (0: never), so
/// old popularity fades.
struct FrequencyLruPolicy {
  std::uint64_t weight = 1;
  std::uint64_t halve_every = 0;

  void reset(Index num_experts) {
    lru_.reset(num_experts);
    uses_.assign(static_cast<std::size_t>(num_experts), 0);
    last_call_.assign(static_cast<std::size_t>(num_experts), 0);
    halved_at_ = 0;
  }
  void touch(Index e, std::uint64_t call, std::uint64_t seq) {
    if (halve_every > 0)
      while (call >= halved_at_ + halve_every) {
        for (auto& u : uses_) u /= 2;
        halved_at_ += halve_every;
      }
    const auto i = static_cast<std::size_t>(e);
    if (last_call_[i] != call || uses_[i] == 0) ++uses_[i];  // once per call
    last_call_[i] = call;
    lru_.touch(e, call, seq);
  }
  void erase(Index) {}
  [[nodiscard]] std::uint64_t uses(Index e) const { return uses_[static_cast<std::size_t>(e)]; }
  [[nodiscard]] bool before(Index a, Index b) const {
    const auto sa = score(a), sb = score(b);
    if (sa != sb) return sa < sb;
    return lru_.before(a, b);
  }

 private:
  [[nodiscard]] std::uint64_t score(Index e) const {
    const auto i = static_cast<std::size_t>(e);
    return last_call_[i] + weight * uses_[i];
  }
  LruPolicy lru_;
  std::vector<std::uint64_t> uses_, last_call_;
  std::uint64_t halved_at_ = 0;
};

/// Materialised experts under a byte budget. Resident is the compute-layout type of one expert
/// (a one-expert bank); every expert costs expert_bytes. Entries are numbered 0 ..
/// num_experts() - 1: one layer's experts, or, shared by several layers' executors, layer l's
/// expert e at l * E + e (OnDemandExecutor's `first`), so the layers share one budget.
///
/// Locking: one mutex guards the table, the policy and the totals; loads run outside it (the
/// slot is reserved and marked loading first), so a hit never waits on another expert's I/O.
/// A caller pins what it runs; a pinned or loading expert is never evicted. acquire() waits
/// (condition variable) only when the caller holds no pins and every byte of the budget is
/// pinned by other callers, which then finish and unpin: no cycle, no deadlock.
///
/// Prefetch (Prefetcher): reserve_prefetch_slots() takes slots out of the capacity for the
/// prefetch thread's loads in flight, so those never hold a slot a call could use; a prefetch
/// is placed when it finishes only if a slot is free or an unpinned expert can be evicted
/// (else dropped), and a call that needs an expert being prefetched waits for that load (one
/// it needed) instead of reading the expert twice. A call never waits on a prefetch it does
/// not need.
template <class Resident, class Policy>
class ExpertCache {
 public:
  ExpertCache(Index num_experts, std::size_t expert_bytes, std::size_t budget_bytes, Policy policy = {})
      : policy_(std::move(policy)), expert_bytes_(expert_bytes), budget_bytes_(budget_bytes),
        entries_(static_cast<std::size_t>(num_experts)) {
    constexpr const char* where = "ExpertCache::ExpertCache()";
    detail::require(num_experts >= 1, where, "num_experts", ">= 1", num_experts);
    detail::require(expert_bytes >= 1, where, "expert_bytes", ">= 1", expert_bytes);
    detail::require(budget_bytes >= expert_bytes, where, "budget_bytes",
                    detail::concat(">= ", expert_bytes, " (one expert)"), budget_bytes);
    policy_.reset(num_experts);
  }
  ExpertCache(const ExpertCache&) = delete;
  ExpertCache& operator=(const ExpertCache&) = delete;

  [[nodiscard]] Index num_experts() const noexcept { return static_cast<Index>(entries_.size()); }
  [[nodiscard]] std::size_t expert_bytes() const noexcept { return expert_bytes_; }
  [[nodiscard]] std::size_t budget_bytes() const noexcept { return budget_bytes_; }
  /// How many experts can be resident at once: the budget's experts less the prefetch slots.
  [[nodiscard]] Index capacity() const noexcept {
    return static_cast<Index>(budget_bytes_ / expert_bytes_) - prefetch_slots_;
  }
  /// Takes n slots of the budget for a prefetcher's loads in flight (a Prefetcher takes one).
  /// The budget must still hold one resident expert besides: std::invalid_argument otherwise.
  void reserve_prefetch_slots(Index n) {
    const std::lock_guard<std::mutex> lock(mutex_);
    const auto fit = static_cast<Index>(budget_bytes_ / expert_bytes_);
    detail::require(n >= 0 && fit - prefetch_slots_ - n >= 1,
                    "ExpertCache::reserve_prefetch_slots()", "budget_bytes",
                    detail::concat(">= ", (prefetch_slots_ + n + 1) * static_cast<Index>(expert_bytes_),
                                   " (one resident expert and ", prefetch_slots_ + n, " in flight for prefetch)"),
                    budget_bytes_);
    detail::require(resident_ + loading_ == 0, "ExpertCache::reserve_prefetch_slots()", "resident experts",
                    "0 (reserve before the first call)", resident_ + loading_);
    prefetch_slots_ += n;
  }
  [[nodiscard]] std::size_t resident_bytes() const {
    const std::lock_guard<std::mutex> lock(mutex_);
    return static_cast<std::size_t>(resident_) * expert_bytes_;
  }
  [[nodiscard]] bool is_resident(Index e) const {
    const std::lock_guard<std::mutex> lock(mutex_);
    return entries_[static_cast<std::size_t>(e)].state == State::ready;
  }
  /// The resident experts, ascending.
  [[nodiscard]] std::vector<Index> resident() const {
    const std::lock_guard<std::mutex> lock(mutex_);
    std::vector<Index> out;
    for (Index e = 0; e < num_experts(); ++e)
      if (entries_[static_cast<std::size_t>(e)].state == State::ready) out.push_back(e);
    return out;
  }
  /// Every call's statistics added up.
  [[nodiscard]] CallStats totals() const {
    const std::lock_guard<std::mutex> lock(mutex_);
    return totals_;
  }
  /// The prefetch thread's work (zero without a Prefetcher).
  [[nodiscard]] PrefetchStatistics prefetch_totals() const {
    const std::lock_guard<std::mutex> lock(mutex_);
    return prefetch_;
  }
  /// Read access to the policy (tests, diagnostics); hold no reference across calls.
  template <class F>
  auto with_policy(F&& f) const {
    const std::lock_guard<std::mutex> lock(mutex_);
    return f(policy_);
  }

  /// Starts a call: its number for the policy.
  std::uint64_t begin_call() {
    const std::lock_guard<std::mutex> lock(mutex_);
    return ++calls_;
  }

  /// Marks the needed experts that are resident (or loading) as hits and pins them, in
  /// ascending order; returns which ones (the rest are this call's misses).
  std::vector<bool> pin_resident(const std::vector<Index>& needed, std::uint64_t call, CallStats& stats) {
    const std::lock_guard<std::mutex> lock(mutex_);
    std::vector<bool> hit(needed.size(), false);
    for (std::size_t i = 0; i < needed.size(); ++i) {
      Entry& x = entries_[static_cast<std::size_t>(needed[i])];
      if (x.state == State::absent) continue;
      hit[i] = true;
      ++x.pins;
      policy_.touch(needed[i], call, ++seq_);
      ++stats.hits;
      count_prefetch_use_locked(x);
    }
    return hit;
  }

  /// Whether a miss can be placed now without waiting: a free slot, or an unpinned ready
  /// expert to evict.
  [[nodiscard]] bool can_place() const {
    const std::lock_guard<std::mutex> lock(mutex_);
    return can_place_locked();
  }

  /// Loads expert e (a miss) and pins it: evicts by the policy until one expert fits (waiting
  /// while every slot is pinned by other callers, which this caller must not be among: call it
  /// with no pins held, or after checking can_place()). load(Resident&) reads the weights and
  /// returns the bytes read; it runs outside the lock. It loads into the evicted expert's
  /// memory where there was an eviction (no allocation, no page faults, no zeroing), else into
  /// make()'s: so every entry must have one shape, and load must overwrite every weight. If another caller is loading or has
  /// loaded e meanwhile, this joins it and counts a hit.
  /// With may_wait false (the caller holds pins), returns false instead of waiting when no
  /// slot can be freed now; the caller then runs and releases what it holds and retries.
  template <class Make, class Load>
  bool acquire_miss(Index e, std::uint64_t call, CallStats& stats, Make&& make, Load&& load, bool may_wait = true) {
    Entry& x = entries_[static_cast<std::size_t>(e)];
    std::shared_ptr<Resident> recycled;  // the evicted expert's memory, reused for this load
    {
      std::unique_lock<std::mutex> lock(mutex_);
      for (;;) {
        if (x.prefetching) {  // the prefetch thread is reading e, which this call needs: wait for it
          changed_.wait(lock);
          continue;
        }
        if (x.state != State::absent) {  // another caller (or a prefetch) got to it first
          ++x.pins;
          policy_.touch(e, call, ++seq_);
          ++stats.hits;
          count_prefetch_use_locked(x);
          return true;
        }
        if (can_place_locked()) break;
        if (!may_wait) return false;
        changed_.wait(lock);
      }
      if (resident_ + loading_ >= capacity()) {
        recycled = evict_locked(pick_victim_locked());
        ++stats.evictions;
        ++totals_.evictions;
      }
      x.state = State::loading;
      ++x.pins;
      ++loading_;
      policy_.touch(e, call, ++seq_);
      ++stats.misses;
      ++totals_.misses;
    }
    std::shared_ptr<Resident> weights;
    std::size_t bytes = 0;
    try {
      weights = recycled ? std::move(recycled) : std::make_shared<Resident>(make());
      bytes = load(*weights);
    } catch (...) {
      const std::lock_guard<std::mutex> lock(mutex_);
      x.state = State::absent;
      x.pins = 0;
      --loading_;
      policy_.erase(e);
      changed_.notify_all();
      throw;
    }
    const std::lock_guard<std::mutex> lock(mutex_);
    x.weights = std::move(weights);
    x.state = State::ready;
    --loading_;
    ++resident_;
    stats.bytes_read += bytes;
    totals_.bytes_read += bytes;
    changed_.notify_all();
    return true;
  }

  /// The weights of a pinned expert (valid until it is released); waits while another caller
  /// is still loading it.
  [[nodiscard]] const Resident& get(Index e) {
    std::unique_lock<std::mutex> lock(mutex_);
    const Entry& x = entries_[static_cast<std::size_t>(e)];
    changed_.wait(lock, [&] { return x.state != State::loading; });
    if (x.state == State::absent)  // the loader failed; its exception went to its own caller
      throw std::runtime_error("ExpertCache::get(): loading expert " + std::to_string(e) + " failed in another call");
    return *x.weights;
  }

  /// Unpins expert e: it stays resident and becomes evictable when no caller pins it.
  void release(Index e) {
    const std::lock_guard<std::mutex> lock(mutex_);
    Entry& x = entries_[static_cast<std::size_t>(e)];
    if (x.pins > 0) --x.pins;
    changed_.notify_all();
  }

  /// Adds a call's hits to the totals (misses, bytes and evictions are counted as they happen).
  void end_call(const CallStats& stats) {
    const std::lock_guard<std::mutex> lock(mutex_);
    totals_.hits += stats.hits;
  }

  // The prefetch thread's side (Prefetcher).

  /// Claims entry e for a prefetch: true when it is neither resident, being loaded nor being
  /// prefetched; the caller then loads it outside the cache and calls finish_prefetch (or
  /// abort_prefetch). Counts a request.
  bool begin_prefetch(Index e) {
    const std::lock_guard<std::mutex> lock(mutex_);
    Entry& x = entries_[static_cast<std::size_t>(e)];
    if (x.state != State::absent || x.prefetching) return false;
    x.prefetching = true;
    ++prefetch_.requested;
    return true;
  }
  /// Places a finished prefetch of e if a slot is free or an unpinned expert can be evicted
  /// (the policy's choice, as for a call's miss; the new expert counts as used now), else
  /// drops it. Wakes calls waiting for e. Returns memory the prefetcher may load its next
  /// expert into (the evicted expert's, or its own dropped load), or nullptr: the prefetch
  /// slot's memory, inside the budget.
  std::shared_ptr<Resident> finish_prefetch(Index e, std::shared_ptr<Resident> weights, std::size_t bytes) {
    const std::lock_guard<std::mutex> lock(mutex_);
    Entry& x = entries_[static_cast<std::size_t>(e)];
    x.prefetching = false;
    ++prefetch_.loaded;
    prefetch_.bytes_read += bytes;
    std::shared_ptr<Resident> spare;
    if (x.state == State::absent && can_place_locked()) {
      if (resident_ + loading_ >= capacity()) {
        spare = evict_locked(pick_victim_locked());
        ++prefetch_.evictions;
      }
      x.weights = std::move(weights);
      x.state = State::ready;
      x.prefetched_unused = true;
      ++resident_;
      policy_.touch(e, calls_, ++seq_);
      ++prefetch_.placed;
    } else {
      ++prefetch_.not_placed;
      spare = std::move(weights);
    }
    changed_.notify_all();
    return spare;
  }
  /// A prefetch of e that threw: e is free for a call to load (which then sees the error).
  void abort_prefetch(Index e) {
    const std::lock_guard<std::mutex> lock(mutex_);
    entries_[static_cast<std::size_t>(e)].prefetching = false;
    ++prefetch_.failed;
    changed_.notify_all();
  }

 private:
  enum class State : std::uint8_t { absent, loading, ready };
  struct Entry {
    State state = State::absent;
    bool prefetching = false;       // the prefetch thread is reading it (state stays absent)
    bool prefetched_unused = false;  // placed by a prefetch, no call has hit it yet
    std::int64_t pins = 0;
    std::shared_ptr<Resident> weights;
  };

  void count_prefetch_use_locked(Entry& x) {
    if (!x.prefetched_unused) return;
    x.prefetched_unused = false;
    ++prefetch_.used;
  }

  [[nodiscard]] bool can_place_locked() const {
    if (resident_ + loading_ < capacity()) return true;
    return pick_victim_locked() >= 0;
  }
  [[nodiscard]] Index pick_victim_locked() const {
    Index best = -1;
    for (Index e = 0; e < num_experts(); ++e) {
      const Entry& x = entries_[static_cast<std::size_t>(e)];
      if (x.state != State::ready || x.pins > 0) continue;
      if (best < 0 || policy_.before(e, best)) best = e;
    }
    return best;
  }
  /// Evicts e and returns its memory (unpinned, so no caller holds a reference into it).
  std::shared_ptr<Resident> evict_locked(Index e) {
    Entry& x = entries_[static_cast<std::size_t>(e)];
    x.state = State::absent;
    x.prefetched_unused = false;
    --resident_;
    policy_.erase(e);
    return std::move(x.weights);
  }
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  Policy policy_;
  std::size_t expert_bytes_, budget_bytes_;
  std::vector<Entry> entries_;
  Index resident_ = 0, loading_ = 0, prefetch_slots_ = 0;
  std::uint64_t calls_ = 0, seq_ = 0;
  CallStats totals_;
  PrefetchStatistics prefetch_;
};

}  // namespace moe::store

#endif  // MOE_STORE_EXPERT_CACHE_HPP
