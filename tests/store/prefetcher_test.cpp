// Prefetcher: loads ahead into the cache within its budget; placement, drops, failures, a call
// joining a prefetch it needs, shutdown with work queued.
#include <moe/store/expert_cache.hpp>
#include <moe/store/prefetcher.hpp>

#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

using moe::Index;
using moe::store::CallStats;

namespace {
struct Expert {
  int e = -1;
};
using Cache = moe::store::ExpertCache<Expert, moe::store::LruPolicy>;
using Prefetch = moe::store::Prefetcher<Expert, moe::store::LruPolicy>;

Expert make_expert(Index) { return {}; }
std::size_t load_expert(Index e, Expert& x) {
  x.e = static_cast<int>(e);
  return 100;
}

/// A gate the test opens: loads of the gated expert wait on it.
struct Gate {
  std::mutex m;
  std::condition_variable cv;
  bool open = false;
  std::atomic<int> entered{0};
  void wait() {
    ++entered;
    std::unique_lock<std::mutex> lock(m);
    cv.wait(lock, [&] { return open; });
  }
  void release() {
    {
      const std::lock_guard<std::mutex> lock(m);
      open = true;
    }
    cv.notify_all();
  }
};
}  // namespace

TEST_CASE("prefetched experts become resident and the next call hits them", "[store][prefetch][threads]") {
  auto cache = std::make_shared<Cache>(8, 10, 40);  // 4 experts, one of them the prefetch slot
  Prefetch p(cache, make_expert, load_expert);
  CHECK(cache->capacity() == 3);
  p.request({5, 2, 5});  // 5 queued once
  p.wait_idle();
  CHECK(cache->resident() == std::vector<Index>{2, 5});
  const auto t = cache->prefetch_totals();
  CHECK(t.requested == 2);
  CHECK(t.loaded == 2);
  CHECK(t.bytes_read == 200);
  CHECK(t.placed == 2);
  CHECK(t.used == 0);
  CallStats s;
  const auto call = cache->begin_call();
  const auto hit = cache->pin_resident({2, 3, 5}, call, s);
  CHECK(hit == std::vector<bool>{true, false, true});
  CHECK(cache->prefetch_totals().used == 2);
  CHECK(s.hits == 2);
  CHECK(s.bytes_read == 0);  // the prefetch's reads are not the call's
  p.request({2});            // resident: not requested again
  p.wait_idle();
  CHECK(cache->prefetch_totals().requested == 2);
}

TEST_CASE("a prefetch is placed only where a slot is free or evictable, else dropped", "[store][prefetch][threads]") {
  auto cache = std::make_shared<Cache>(6, 10, 30);  // 2 resident + 1 in flight
  Prefetch p(cache, make_expert, load_expert);
  CallStats s;
  const auto call = cache->begin_call();
  for (Index e : {0, 1})
    REQUIRE(cache->acquire_miss(e, call, s, [] { return Expert{}; }, [e](Expert& x) { return load_expert(e, x); }));
  // Both pinned by the call: the prefetch of 4 loads, finds no slot and is dropped.
  p.request({4});
  p.wait_idle();
  CHECK(cache->resident() == std::vector<Index>{0, 1});
  CHECK(cache->prefetch_totals().not_placed == 1);
  CHECK(cache->prefetch_totals().placed == 0);
  // Unpinned, 0 is the LRU victim.
  cache->release(0);
  cache->release(1);
  p.request({4});
  p.wait_idle();
  CHECK(cache->resident() == std::vector<Index>{1, 4});
  CHECK(cache->prefetch_totals().evictions == 1);
  CHECK(cache->resident_bytes() <= 30);
}

TEST_CASE("a call that needs an expert being prefetched waits for that read and counts a hit",
          "[store][prefetch][threads]") {
  auto cache = std::make_shared<Cache>(4, 10, 30);
  Gate gate;
  std::atomic<int> loads{0};
  Prefetch p(cache, make_expert, [&](Index e, Expert& x) {
    ++loads;
    gate.wait();
    return load_expert(e, x);
  });
  p.request({3});
  while (gate.entered.load() == 0) std::this_thread::yield();  // the prefetch of 3 is in flight
  CallStats s;
  const auto call = cache->begin_call();
  std::thread opener([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    gate.release();
  });
  // A different expert is not held up by the prefetch in flight: its slot is the reserved one.
  REQUIRE(cache->acquire_miss(1, call, s, [] { return Expert{}; }, [](Expert& x) { return load_expert(1, x); }));
  REQUIRE(cache->acquire_miss(3, call, s, [] { return Expert{}; },
                              [](Expert&) -> std::size_t { FAIL("3 read twice"); return 0; }));
  opener.join();
  CHECK(cache->get(3).e == 3);
  CHECK(loads.load() == 1);
  CHECK(s == CallStats{1, 1, 100, 0});  // 3 a hit, 1 a miss
  CHECK(cache->prefetch_totals().used == 1);
}

TEST_CASE("a failed prefetch leaves the expert for the call, which sees the error", "[store][prefetch][threads][errors]") {
  auto cache = std::make_shared<Cache>(4, 10, 20);
  Prefetch p(cache, make_expert, [](Index, Expert&) -> std::size_t { throw std::runtime_error("disk gone"); });
  p.request({2});
  p.wait_idle();
  CHECK(cache->prefetch_totals().failed == 1);
  CHECK(cache->resident().empty());
  CallStats s;
  CHECK_THROWS_WITH(cache->acquire_miss(2, cache->begin_call(), s, [] { return Expert{}; },
                                        [](Expert&) -> std::size_t { throw std::runtime_error("disk gone"); }),
                    "disk gone");
}

TEST_CASE("the prefetch slot comes out of the budget, which must hold two experts", "[store][prefetch][errors]") {
  auto small = std::make_shared<Cache>(4, 10, 19);
  CHECK_THROWS_WITH(Prefetch(small, make_expert, load_expert),
                    "ExpertCache::reserve_prefetch_slots(): budget_bytes expected >= 20 (one resident expert and 1 in "
                    "flight for prefetch), got 19");
  CHECK(small->capacity() == 1);  // unchanged by the refusal
  CHECK_THROWS_WITH(Prefetch(nullptr, make_expert, load_expert), "Prefetcher::Prefetcher(): cache expected a cache, got nullptr");
  auto cache = std::make_shared<Cache>(4, 10, 20);
  Prefetch p(cache, make_expert, load_expert);
  CHECK_THROWS_WITH(p.request({4}), "Prefetcher::request(): entry expected in [0, 4), got 4");
}

TEST_CASE("destroying a prefetcher with work queued finishes the load in flight and stops", "[store][prefetch][threads]") {
  auto cache = std::make_shared<Cache>(64, 10, 100);
  {
    Prefetch p(cache, make_expert, [](Index e, Expert& x) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
      return load_expert(e, x);
    });
    std::vector<Index> all(64);
    for (Index e = 0; e < 64; ++e) all[static_cast<std::size_t>(e)] = e;
    p.request(all);
  }
  const auto t = cache->prefetch_totals();
  CHECK(t.loaded == t.requested);  // nothing left half-done
  CHECK(t.loaded < 64);            // the queue was dropped
  CHECK(cache->resident_bytes() <= 100);
}
