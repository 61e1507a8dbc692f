#include <moe/core/thread_pool.hpp>

#include <catch2/catch.hpp>

#include <atomic>
#include <numeric>
#include <stdexcept>
#include <vector>

TEST_CASE("ThreadPool runs every task exactly once, run after run", "[core][threads]") {
  for (const moe::Index threads : {1, 2, 3, 8}) {
    moe::ThreadPool pool(threads);
    REQUIRE(pool.size() == threads);
    for (int round = 0; round < 200; ++round) {
      const moe::Index n = 1 + round % 37;
      std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
      pool.run(n, [&](moe::Index i) { hits[static_cast<size_t>(i)].fetch_add(1); });
      for (auto& h : hits) REQUIRE(h.load() == 1);
    }
  }
}

TEST_CASE("ThreadPool rethrows a task's exception in the caller and stays usable", "[core][threads]") {
  moe::ThreadPool pool(4);
  REQUIRE_THROWS_WITH(pool.run(16, [](moe::Index i) {
                        if (i == 5) throw std::runtime_error("task 5 failed");
                      }),
                      "task 5 failed");
  std::atomic<int> count{0};
  pool.run(10, [&](moe::Index) { count.fetch_add(1); });
  REQUIRE(count.load() == 10);
}

TEST_CASE("ThreadPool refuses zero threads", "[core][threads][errors]") {
  REQUIRE_THROWS_WITH(moe::ThreadPool(0), "ThreadPool::ThreadPool(): threads expected >= 1, got 0");
}
