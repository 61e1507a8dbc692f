// A background thread that loads experts into an ExpertCache before a call needs them
// (docs/store.md#prefetch).
#ifndef MOE_STORE_PREFETCHER_HPP
#define MOE_STORE_PREFETCHER_HPP

#include <moe/core/error.hpp>
#include <moe/core/types.hpp>
#include <moe/store/expert_cache.hpp>

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace moe::store {

/// Loads the cache entries it is asked for on one thread of its own, ahead of the calls that
/// will need them. Construction takes one slot of the cache's budget for the load in flight
/// (ExpertCache::reserve_prefetch_slots), so the budget holds resident experts and the
/// prefetch together; the cache must hold two experts. A finished load is placed only if a
/// slot is free or an unpinned expert can be evicted (by the cache's policy), else dropped: a
/// call never waits for a prefetch it does not need, and one that needs an expert being
/// prefetched waits for that read instead of doing it again.
///
/// request() queues entries behind those already waiting (entries queued twice keep their first
/// place); at most max_pending wait, the oldest dropped first, since a late prediction is
/// worth less than a fresh one. A load that throws is counted (prefetch_totals().failed) and
/// forgotten: the call that needs the expert loads it and gets the error. Like the cache, it
/// loads into recycled memory (an evicted expert's) where it can: entries share one shape. The destructor lets
/// the load in flight finish, drops the queue and joins the thread.
template <class Resident, class Policy>
class Prefetcher {
 public:
  using cache_type = ExpertCache<Resident, Policy>;
  /// make(entry): a zeroed resident of the entry's shape; load(entry, resident): reads the
  /// entry's weights, returns the bytes read. Both run on the prefetch thread.
  using Make = std::function<Resident(Index)>;
  using Load = std::function<std::size_t(Index, Resident&)>;

  Prefetcher(std::shared_ptr<cache_type> cache, Make make, Load load, std::size_t max_pending = 0)
      : cache_(checked(std::move(cache))), make_(std::move(make)), load_(std::move(load)),
        max_pending_(max_pending > 0 ? max_pending : static_cast<std::size_t>(cache_->num_experts())) {
    cache_->reserve_prefetch_slots(1);
    thread_ = std::thread([this] { run(); });
  }
  Prefetcher(const Prefetcher&) = delete;
  Prefetcher& operator=(const Prefetcher&) = delete;
  ~Prefetcher() {
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
      pending_.clear();
    }
    wake_.notify_all();
    thread_.join();
  }

  [[nodiscard]] cache_type& cache() const noexcept { return *cache_; }

  /// Queues the entries (cache indices) for loading; returns at once.
  void request(const std::vector<Index>& entries) {
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      for (Index e : entries) {
        detail::require(e >= 0 && e < cache_->num_experts(), "Prefetcher::request()", "entry",
                        detail::concat("in [0, ", cache_->num_experts(), ")"), e);
        bool queued = false;
        for (Index q : pending_) queued = queued || q == e;
        if (!queued) pending_.push_back(e);
      }
      while (pending_.size() > max_pending_) pending_.pop_front();
    }
    wake_.notify_all();
  }

  /// Blocks until the queue is empty and no load is in flight (tests, benchmarks).
  void wait_idle() {
    std::unique_lock<std::mutex> lock(mutex_);
    idle_.wait(lock, [&] { return pending_.empty() && !busy_; });
  }

 private:
  static std::shared_ptr<cache_type> checked(std::shared_ptr<cache_type> c) {
    if (!c) throw std::invalid_argument("Prefetcher::Prefetcher(): cache expected a cache, got nullptr");
    return c;
  }

  void run() {
    for (;;) {
      Index e = -1;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        busy_ = false;
        idle_.notify_all();
        wake_.wait(lock, [&] { return stop_ || !pending_.empty(); });
        if (stop_) return;
        e = pending_.front();
        pending_.pop_front();
        busy_ = true;
      }
      if (!cache_->begin_prefetch(e)) continue;  // resident, loading or prefetched already
      try {
        // The memory of the last eviction or dropped load if there is one (the prefetch slot's).
        auto weights = spare_ ? std::move(spare_) : std::make_shared<Resident>(make_(e));
        const std::size_t bytes = load_(e, *weights);
        spare_ = cache_->finish_prefetch(e, std::move(weights), bytes);
      } catch (...) {
        cache_->abort_prefetch(e);
      }
    }
  }

  std::shared_ptr<cache_type> cache_;
  Make make_;
  Load load_;
  std::size_t max_pending_;
  std::mutex mutex_;
  std::condition_variable wake_, idle_;
  std::deque<Index> pending_;
  std::shared_ptr<Resident> spare_;  // the prefetch thread's only
  bool busy_ = false, stop_ = false;
  std::thread thread_;  // last: starts after every member above exists
};

}  // namespace moe::store

#endif  // MOE_STORE_PREFETCHER_HPP
