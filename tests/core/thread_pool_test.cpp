#include <moe/core/thread_pool.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <thread>
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

TEST_CASE("ThreadPool::for_each_thread runs once on each of the pool's threads", "[core][threads]") {
  for (const moe::Index threads : {1, 2, 3, 8}) {
    moe::ThreadPool pool(threads);
    for (int round = 0; round < 50; ++round) {
      std::mutex m;
      std::vector<std::thread::id> ids;
      std::vector<moe::Index> indices;
      pool.for_each_thread([&](moe::Index i) {
        std::lock_guard lock(m);
        ids.push_back(std::this_thread::get_id());
        indices.push_back(i);
      });
      REQUIRE(ids.size() == static_cast<std::size_t>(threads));
      // The caller is one of the threads, and no thread ran twice.
      REQUIRE(std::find(ids.begin(), ids.end(), std::this_thread::get_id()) != ids.end());
      std::sort(ids.begin(), ids.end());
      REQUIRE(std::adjacent_find(ids.begin(), ids.end()) == ids.end());
      std::sort(indices.begin(), indices.end());
      std::vector<moe::Index> all(static_cast<std::size_t>(threads));
      std::iota(all.begin(), all.end(), moe::Index{0});
      REQUIRE(indices == all);
      // The pool still runs ordinary work afterwards.
      std::atomic<int> count{0};
      pool.run(7, [&](moe::Index) { count.fetch_add(1); });
      REQUIRE(count.load() == 7);
    }
  }
}

TEST_CASE("ThreadPool::setup_threads_once runs a key's setup once per pool", "[core][threads]") {
  struct TagA;
  struct TagB;
  const std::size_t a = moe::detail::thread_setup_key<TagA>();
  const std::size_t b = moe::detail::thread_setup_key<TagB>();
  REQUIRE(a != b);
  REQUIRE(moe::detail::thread_setup_key<TagA>() == a);
  std::atomic<int> calls{0};
  const auto setup = [&](moe::Index) { calls.fetch_add(1); };
  moe::ThreadPool pool(3);
  pool.setup_threads_once(a, setup);
  REQUIRE(calls.load() == 3);
  pool.setup_threads_once(a, setup);
  REQUIRE(calls.load() == 3);
  pool.setup_threads_once(b, setup);
  REQUIRE(calls.load() == 6);
  moe::ThreadPool other(2);
  other.setup_threads_once(a, setup);
  REQUIRE(calls.load() == 8);
  REQUIRE_THROWS_WITH(pool.setup_threads_once(64, setup),
                      "ThreadPool::setup_threads_once(): key expected < 64, got 64");
}
