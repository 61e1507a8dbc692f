// A small fixed-size thread pool: the library's parallel execution policy.
//
// Why not OpenMP: a pool object owned by the caller keeps the library header-only with no
// compiler flag for consumers, lets two layers in one process use different thread counts,
// and makes the thread count a runtime argument (ForwardContext::pool). Work is always cut
// into the same tasks whatever the pool size (see LocalExecutor), so results are bit-identical
// for any number of threads; the pool only decides who runs which task.
#ifndef MOE_CORE_THREAD_POOL_HPP
#define MOE_CORE_THREAD_POOL_HPP

#include <moe/core/error.hpp>
#include <moe/core/types.hpp>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace moe {

/// A non-owning reference to a callable taking a task index: two pointers, no allocation
/// (std::function may allocate for a capturing lambda). The callable must outlive the
/// TaskRef, which holds for a lambda passed straight to ThreadPool::run().
class TaskRef {
 public:
  template <class F>
    requires(!std::is_same_v<std::remove_cvref_t<F>, TaskRef> && std::is_invocable_v<F&, Index>)
  // Implicit, like std::function. The requires-clause already keeps TaskRef itself out, which
  // clang-tidy 14's forwarding-reference-overload check does not read.
  TaskRef(F&& f) noexcept  // NOLINT(google-explicit-constructor,bugprone-forwarding-reference-overload)
      : object_(const_cast<void*>(static_cast<const void*>(std::addressof(f)))),
        call_([](void* o, Index i) { (*static_cast<std::remove_reference_t<F>*>(o))(i); }) {}

  void operator()(Index i) const { call_(object_, i); }

 private:
  void* object_;
  void (*call_)(void*, Index);
};

class ThreadPool {
 public:
  /// A pool of `threads` threads in all: the caller of run() plus threads - 1 workers.
  explicit ThreadPool(Index threads) {
    detail::require(threads >= 1, "ThreadPool::ThreadPool()", "threads", ">= 1", threads);
    workers_.reserve(static_cast<std::size_t>(threads - 1));
    for (Index i = 1; i < threads; ++i) workers_.emplace_back([this] { work(); });
  }

  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  ~ThreadPool() {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    for (auto& w : workers_) w.join();
  }

  [[nodiscard]] Index size() const noexcept { return static_cast<Index>(workers_.size()) + 1; }

  /// Runs fn(task) for every task in [0, n) and returns when all have finished. Tasks may run
  /// concurrently and in any order; the first exception thrown by a task is rethrown here.
  /// One run at a time per pool (run is not reentrant). fn is a non-owning reference, so a
  /// run allocates nothing (steady-state forward and backward are allocation-free).
  void run(Index n, TaskRef fn) {
    if (n <= 0) return;
    if (workers_.empty() || n == 1) {
      for (Index i = 0; i < n; ++i) fn(i);
      return;
    }
    {
      // A worker that woke late for the previous run may still be leaving drain(): the job's
      // fields change only once no worker is inside.
      std::unique_lock lock(mutex_);
      done_.wait(lock, [&] { return active_ == 0; });
      job_ = &fn;
      tasks_ = n;
      next_.store(0);
      remaining_.store(n);
      error_ = nullptr;
      ++generation_;
    }
    wake_.notify_all();
    drain();
    // Wait for the tasks and for every worker that joined this run to leave drain(), so none
    // can take a task index of the next run.
    std::unique_lock lock(mutex_);
    done_.wait(lock, [&] { return remaining_.load() == 0 && active_ == 0; });
    job_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

  /// Runs fn(i) exactly once on each of the pool's threads, i in [0, size()) unique per
  /// thread (which thread gets which i is unspecified). For per-thread state that must exist
  /// before tasks need it: run() lets any thread take any task, so without this, which thread
  /// first meets a given task (and grows its buffers for it) would depend on scheduling. Each
  /// task waits at a barrier until all size() have started, so no thread can take two. Same
  /// rules as run(): one call at a time per pool, exceptions rethrown here.
  void for_each_thread(TaskRef fn) {
    const Index n = size();
    std::mutex m;
    std::condition_variable all_here;
    Index arrived = 0;
    auto task = [&](Index i) {
      {
        std::unique_lock lock(m);
        if (++arrived == n) {
          all_here.notify_all();
        } else {
          all_here.wait(lock, [&] { return arrived == n; });
        }
      }
      fn(i);
    };
    run(n, TaskRef(task));
  }

  /// for_each_thread(setup) the first time this pool sees `key` (0 <= key < 64), nothing
  /// after: thread-local state set up once per pool and kind (detail::thread_setup_key gives
  /// each kind its key). Same rules as run().
  void setup_threads_once(std::size_t key, TaskRef setup) {
    detail::require(key < 64, "ThreadPool::setup_threads_once()", "key", "< 64", key);
    const std::uint64_t bit = std::uint64_t{1} << key;
    if ((setup_done_ & bit) != 0) return;
    for_each_thread(setup);
    setup_done_ |= bit;
  }

 private:
  void work() {
    std::uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock lock(mutex_);
        wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
        ++active_;
      }
      drain();
      std::lock_guard lock(mutex_);
      if (--active_ == 0) done_.notify_all();
    }
  }

  /// Takes tasks until none is left; the last one to finish wakes the caller.
  void drain() {
    for (;;) {
      const Index i = next_.fetch_add(1);
      if (i >= tasks_) return;
      try {
        (*job_)(i);
      } catch (...) {
        std::lock_guard lock(mutex_);
        if (!error_) error_ = std::current_exception();
      }
      if (remaining_.fetch_sub(1) == 1) {
        std::lock_guard lock(mutex_);
        done_.notify_all();
      }
    }
  }

  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  const TaskRef* job_ = nullptr;
  Index tasks_ = 0;
  std::atomic<Index> next_{0};
  std::atomic<Index> remaining_{0};
  std::exception_ptr error_;
  std::uint64_t generation_ = 0;
  Index active_ = 0;  ///< workers inside drain(), guarded by mutex_
  bool stop_ = false;
  std::uint64_t setup_done_ = 0;  ///< keys of setup_threads_once() done; the caller's side only
};

namespace detail {
inline std::size_t next_thread_setup_key() {
  static std::atomic<std::size_t> next{0};
  return next.fetch_add(1);
}

/// The ThreadPool::setup_threads_once() key of one kind of per-thread state (a tag type):
/// distinct for distinct tags, the same for the whole process.
template <class Tag>
std::size_t thread_setup_key() {
  static const std::size_t key = next_thread_setup_key();
  return key;
}

/// Runs fn(task) for tasks [0, n) on the pool, or serially without one.
template <class F>
void parallel_for(ThreadPool* pool, Index n, F&& fn) {
  if (pool == nullptr || pool->size() == 1 || n <= 1) {
    for (Index i = 0; i < n; ++i) fn(i);
    return;
  }
  pool->run(n, TaskRef(fn));
}
}  // namespace detail

}  // namespace moe

#endif  // MOE_CORE_THREAD_POOL_HPP
