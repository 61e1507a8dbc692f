// ExpertCache and its eviction policies: order, pins, budget.
#include <moe/store/expert_cache.hpp>

#include <catch2/catch.hpp>

#include <vector>

using moe::Index;
using moe::store::CallStats;

namespace {
struct W {
  int e = -1;
};
template <class Policy>
void load(moe::store::ExpertCache<W, Policy>& c, Index e, std::uint64_t call, CallStats& s) {
  REQUIRE(c.acquire_miss(e, call, s, [] { return W{}; }, [e](W& w) { w.e = static_cast<int>(e); return std::size_t{10}; }));
}
}  // namespace

TEST_CASE("LRU evicts the oldest use, frequency-weighted LRU the lowest last use + weight * uses", "[store][cache]") {
  moe::store::LruPolicy lru;
  lru.reset(3);
  lru.touch(0, 1, 1);
  lru.touch(1, 1, 2);
  lru.touch(2, 2, 3);
  CHECK(lru.before(0, 1));
  CHECK(lru.before(1, 2));
  lru.touch(0, 3, 4);
  CHECK(lru.before(1, 0));

  moe::store::FrequencyLruPolicy f;
  f.weight = 2;
  f.reset(3);
  for (std::uint64_t call = 1; call <= 3; ++call) f.touch(0, call, call);  // 0: last 3, uses 3 -> 9
  f.touch(0, 3, 4);                                                        // same call: counted once
  CHECK(f.uses(0) == 3);
  f.touch(1, 6, 5);  // 1: last 6, uses 1 -> 8
  CHECK(f.before(1, 0));
  f.touch(2, 7, 6);  // 2: 7 + 2 = 9 ties with 0; the older use (0) goes first
  CHECK(f.before(0, 2));
  moe::store::FrequencyLruPolicy halving;
  halving.halve_every = 2;
  halving.reset(1);
  halving.touch(0, 1, 1);
  CHECK(halving.uses(0) == 1);
  halving.touch(0, 2, 2);  // call 2 halves first (1 -> 0), then counts
  CHECK(halving.uses(0) == 1);
}

TEST_CASE("a pinned expert is never evicted, the budget bounds what is resident", "[store][cache]") {
  moe::store::ExpertCache<W, moe::store::LruPolicy> c(4, 10, 25);
  CHECK(c.capacity() == 2);
  CallStats s;
  const auto call = c.begin_call();
  load(c, 0, call, s);
  load(c, 1, call, s);
  CHECK(c.resident_bytes() == 20);
  // Both pinned: a third cannot be placed without waiting.
  CHECK_FALSE(c.can_place());
  CHECK_FALSE(c.acquire_miss(2, call, s, [] { return W{}; }, [](W&) { return std::size_t{10}; }, false));
  c.release(1);
  CHECK(c.can_place());
  load(c, 2, call, s);  // evicts 1, the only unpinned one, though 0 is older
  CHECK(c.resident() == std::vector<Index>{0, 2});
  CHECK(c.get(2).e == 2);
  CHECK(s == CallStats{0, 3, 30, 1});
}

TEST_CASE("the budget must hold one expert", "[store][cache][errors]") {
  using C = moe::store::ExpertCache<W, moe::store::LruPolicy>;
  REQUIRE_THROWS_WITH(C(4, 10, 9), "ExpertCache::ExpertCache(): budget_bytes expected >= 10 (one expert), got 9");
  REQUIRE_NOTHROW(C(4, 10, 10));
}

TEST_CASE("a failed load leaves the slot free and the error to its caller", "[store][cache][errors]") {
  moe::store::ExpertCache<W, moe::store::LruPolicy> c(2, 10, 10);
  CallStats s;
  CHECK_THROWS_WITH(c.acquire_miss(0, c.begin_call(), s, [] { return W{}; },
                                   [](W&) -> std::size_t { throw std::runtime_error("disk"); }),
                    "disk");
  CHECK(c.resident().empty());
  CHECK(c.can_place());
}

TEST_CASE("stats scopes nest and restore", "[store][cache]") {
  CallStats outer, inner;
  CHECK(moe::store::StatsScope::current() == nullptr);
  {
    moe::store::StatsScope a(outer);
    {
      moe::store::StatsScope b(inner);
      CHECK(moe::store::StatsScope::current() == &inner);
    }
    CHECK(moe::store::StatsScope::current() == &outer);
  }
  CHECK(moe::store::StatsScope::current() == nullptr);
}
