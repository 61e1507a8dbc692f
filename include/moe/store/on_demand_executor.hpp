// Step 4 with experts that live on disk: the experts a call routes to are materialised from a
// source into a cache with a byte budget, then run as LocalExecutor runs them (docs/store.md).
#ifndef MOE_STORE_ON_DEMAND_EXECUTOR_HPP
#define MOE_STORE_ON_DEMAND_EXECUTOR_HPP

#include <moe/contracts/dispatch_plan.hpp>
#include <moe/contracts/executor.hpp>
#include <moe/contracts/expert.hpp>
#include <moe/core/error.hpp>
#include <moe/core/thread_pool.hpp>
#include <moe/core/traits.hpp>
#include <moe/core/types.hpp>
#include <moe/expert/local_executor.hpp>
#include <moe/store/expert_cache.hpp>
#include <moe/store/prefetcher.hpp>

#include <algorithm>
#include <cstddef>
#include <memory>
#include <mutex>
#include <string>
#include <stdexcept>
#include <utility>
#include <vector>
#include <xsimd/xsimd.hpp>

namespace moe::store {

/// What OnDemandExecutor needs of a source of experts (io::SwiGLUExpertSource is one).
/// make_resident() gives a one-expert bank of the compute layout; load(e, r) reads expert e
/// into r, overwriting every weight (r may hold another expert's, its memory recycled from an
/// eviction), and returns the file bytes read.
template <class T>
concept ExpertSource = requires(const T& s, typename T::resident_type& r, Index e) {
  typename T::resident_type;
  { s.num_experts() } -> std::convertible_to<Index>;
  { s.expert_bytes() } -> std::convertible_to<std::size_t>;
  { s.make_resident() } -> std::same_as<typename T::resident_type>;
  { s.load(e, r) } -> std::convertible_to<std::size_t>;
};

/// Runs step 4 with experts materialised on demand from a Source into a shared ExpertCache.
///
/// forward / backward: the experts with rows in the plan are needed, in ascending order. The
/// resident ones are hits and are pinned first; the misses are loaded one by one, each pinned
/// as it arrives. When the next miss cannot be placed because the budget is pinned by this
/// call, the pinned experts run (a "wave") and are released, then loading continues: any
/// budget of at least one expert works, and no expert is evicted while the call still needs
/// it. Within a wave each expert's rows run in LocalExecutor's tasks (blocks of
/// expert_rows_per_task rows; one task per expert in backward) on the call's pool, so every
/// output row, and every gradient slice, has the bits the in-memory layer gives, whatever the
/// budget, the policy, the waves or the thread count.
///
/// Statistics: each call's ExpertLoadStatistics go to the workspace (ws.expert_loads, through
/// the step's `loads`), to the StatsScope open on the calling thread (if any, for totals over
/// several layers and calls) and into cache().totals().
///
/// Copies share the source and the cache, as the layers built from one executor do. The cache
/// is thread-safe, so one layer may serve several threads, each with its own Workspace.
///
/// Several layers share one budget through one cache (store::ExpertStore builds them): this
/// layer's expert e is the cache's entry first() + e. With a Prefetcher, the executor can
/// predict its next call from frequency (ExpertStore's option): after each forward it asks for
/// the experts its past calls needed most, as many as this call needed.
template <ExpertSource Source, class Policy = LruPolicy>
class OnDemandExecutor {
 public:
  using resident_type = typename Source::resident_type;
  using cache_type = ExpertCache<resident_type, Policy>;
  using prefetcher_type = Prefetcher<resident_type, Policy>;

  /// A cache of its own. budget_bytes must hold at least one expert (source.expert_bytes());
  /// throws std::invalid_argument otherwise.
  OnDemandExecutor(std::shared_ptr<const Source> source, std::size_t budget_bytes, Policy policy = {})
      : source_(checked(std::move(source))),
        cache_(std::make_shared<cache_type>(source_->num_experts(), source_->expert_bytes(), budget_bytes,
                                            std::move(policy))) {}

  /// A shared cache, whose entries [first, first + E) are this layer's experts; an optional
  /// prefetcher on that cache, and whether to prefetch by frequency after each forward.
  OnDemandExecutor(std::shared_ptr<const Source> source, std::shared_ptr<cache_type> cache, Index first,
                   std::shared_ptr<prefetcher_type> prefetcher = nullptr, bool frequency_prefetch = false)
      : source_(checked(std::move(source))), cache_(std::move(cache)), prefetcher_(std::move(prefetcher)),
        first_(first), frequency_prefetch_(frequency_prefetch) {
    constexpr const char* where = "OnDemandExecutor::OnDemandExecutor()";
    if (!cache_) throw std::invalid_argument(std::string(where) + ": cache expected a cache, got nullptr");
    detail::require(first_ >= 0 && first_ + source_->num_experts() <= cache_->num_experts(), where,
                    "the layer's entries [first, first + E)",
                    detail::concat("inside the cache's ", cache_->num_experts(), " entries"),
                    detail::concat("[", first_, ", ", first_ + source_->num_experts(), ")"));
    detail::require(source_->expert_bytes() == cache_->expert_bytes(), where, "the source's expert_bytes (= the cache's)",
                    cache_->expert_bytes(), source_->expert_bytes());
    if (frequency_prefetch_ && !prefetcher_)
      throw std::invalid_argument(std::string(where) + ": frequency_prefetch expected a prefetcher, got nullptr");
    if (frequency_prefetch_) uses_ = std::make_shared<Uses>(source_->num_experts());
  }

  [[nodiscard]] const Source& source() const noexcept { return *source_; }
  [[nodiscard]] cache_type& cache() const noexcept { return *cache_; }
  /// This layer's first entry in the cache (0 with a cache of its own).
  [[nodiscard]] Index first() const noexcept { return first_; }
  /// The prefetcher, or nullptr.
  [[nodiscard]] prefetcher_type* prefetcher() const noexcept { return prefetcher_.get(); }

  template <class Arch = xsimd::default_arch, class ExpertType, class S>
  void forward(const ExpertType& experts, const ExpertStep<S>& step) const {
    check_bank(experts, "OnDemandExecutor::forward()");
    MatrixRef<S> hidden = step.hidden;
    MatrixRef<S> y_perm = step.y_perm;
    LocalExecutor::prepare<resident_type, S>(step.context.pool);
    run_waves(step.plan, step.loads, [&](const std::vector<Index>& wave, const std::vector<const resident_type*>& weights) {
      forward_wave<Arch>(step, wave, weights, hidden, y_perm);
    });
    if (frequency_prefetch_) predict_by_frequency(step.plan);
  }

  template <class Arch = xsimd::default_arch, class ExpertType, class S>
  void backward(const ExpertType& experts, const ExpertStepBackward<S>& step, ExpertType& grad) const {
    check_bank(experts, "OnDemandExecutor::backward()");
    constexpr bool serial = expert_traits<resident_type>::reads_other_tokens;
    if constexpr (serial) {
      if (step.input_grad == nullptr)
        throw std::invalid_argument(
            "OnDemandExecutor::backward(): the step's input_grad expected the layer's dx (the experts read other "
            "tokens' inputs), got nullptr");
    }
    MatrixRef<S> dx_perm = step.dx_perm;
    MatrixRef<S> dhidden = step.dhidden;
    LocalExecutor::prepare<resident_type, S>(step.context.pool);
    const DispatchPlan<S>& plan = step.plan;
    run_waves(plan, step.loads, [&](const std::vector<Index>& wave, const std::vector<const resident_type*>& weights) {
      std::vector<resident_type*> slices(wave.size());
      for (std::size_t i = 0; i < wave.size(); ++i) slices[i] = &grad.slice(wave[i]);  // before the tasks
      moe::detail::parallel_for(serial ? nullptr : step.context.pool, static_cast<Index>(wave.size()), [&](Index i) {
        const auto u = static_cast<std::size_t>(i);
        const Index e = wave[u], b = plan.begin(e), n = plan.count(e);
        if constexpr (expert_traits<resident_type>::needs_context) {
          const ExpertContext<S> ctx = moe::detail::slab_context(plan, b, n, step.input, step.context,
                                                                 serial ? step.input_grad : nullptr);
          moe::detail::backward_expert<Arch, resident_type, S>(
              *weights[u], 0, step.x_perm.middleRows(b, n), step.hidden.middleRows(b, n),
              step.dy_perm.middleRows(b, n), dx_perm.middleRows(b, n), dhidden.middleRows(b, n), *slices[u], &ctx);
        } else {
          moe::detail::backward_expert<Arch, resident_type, S>(
              *weights[u], 0, step.x_perm.middleRows(b, n), step.hidden.middleRows(b, n),
              step.dy_perm.middleRows(b, n), dx_perm.middleRows(b, n), dhidden.middleRows(b, n), *slices[u]);
        }
      });
    });
  }

 private:
  static std::shared_ptr<const Source> checked(std::shared_ptr<const Source> s) {
    if (!s) throw std::invalid_argument("OnDemandExecutor::OnDemandExecutor(): source expected a source, got nullptr");
    return s;
  }

  template <class ExpertType>
  void check_bank(const ExpertType& experts, const char* where) const {
    detail::require(experts.num_experts() == source_->num_experts(), where, "the bank's num_experts (= the source's)",
                    source_->num_experts(), experts.num_experts());
  }

  /// Calls per expert that needed it, for the frequency prediction; shared by copies.
  struct Uses {
    explicit Uses(Index n) : count(static_cast<std::size_t>(n), 0) {}
    std::mutex mutex;
    std::vector<std::uint64_t> count;
  };

  /// After a forward: asks the prefetcher for the experts past calls needed most (ties to the
  /// lower index), as many as this call needed; resident ones are skipped by the prefetcher.
  template <class S>
  void predict_by_frequency(const DispatchPlan<S>& plan) const {
    std::vector<Index> wanted;
    {
      const std::lock_guard<std::mutex> lock(uses_->mutex);
      Index used = 0;
      for (Index e = 0; e < plan.num_experts; ++e)
        if (plan.count(e) > 0) {
          ++uses_->count[static_cast<std::size_t>(e)];
          ++used;
        }
      std::vector<Index> order(uses_->count.size());
      for (std::size_t i = 0; i < order.size(); ++i) order[i] = static_cast<Index>(i);
      std::stable_sort(order.begin(), order.end(), [&](Index a, Index b) {
        return uses_->count[static_cast<std::size_t>(a)] > uses_->count[static_cast<std::size_t>(b)];
      });
      for (Index i = 0; i < used; ++i) wanted.push_back(first_ + order[static_cast<std::size_t>(i)]);
    }
    prefetcher_->request(wanted);
  }

  /// Unpins what a call pinned, on every exit.
  struct Pins {
    cache_type& cache;
    std::vector<Index> held;
    ~Pins() { clear(); }
    void clear() {
      for (Index e : held) cache.release(e);
      held.clear();
    }
  };

  /// Pins the plan's experts wave by wave and calls run(wave, weights) for each wave; the
  /// call's statistics go to `loads` (the workspace's), the open StatsScope and the totals.
  template <class S, class Run>
  void run_waves(const DispatchPlan<S>& plan, ExpertLoadStatistics* loads, Run&& run) const {
    cache_type& cache = *cache_;
    std::vector<Index> needed;  // cache entries: this layer's expert e is first_ + e
    for (Index e = 0; e < plan.num_experts; ++e)
      if (plan.count(e) > 0) needed.push_back(first_ + e);
    CallStats stats;
    const std::uint64_t call = cache.begin_call();
    Pins pins{cache, {}};
    const auto flush = [&] {
      if (pins.held.empty()) return;
      std::vector<Index> wave = pins.held;
      std::sort(wave.begin(), wave.end());
      std::vector<const resident_type*> weights(wave.size());
      for (std::size_t i = 0; i < wave.size(); ++i) {
        weights[i] = &cache.get(wave[i]);
        wave[i] -= first_;  // the layer's expert index
      }
      run(wave, weights);
      pins.clear();
    };
    try {
      const std::vector<bool> hit = cache.pin_resident(needed, call, stats);
      for (std::size_t i = 0; i < needed.size(); ++i)
        if (hit[i]) pins.held.push_back(needed[i]);
      const Source& source = *source_;
      for (std::size_t i = 0; i < needed.size(); ++i) {
        if (hit[i]) continue;
        const Index id = needed[i], e = id - first_;
        const auto make = [&] { return source.make_resident(); };
        const auto load = [&](resident_type& r) { return source.load(e, r); };
        if (!cache.acquire_miss(id, call, stats, make, load, /*may_wait=*/pins.held.empty())) {
          flush();  // the budget is full of this call's experts: run them, then go on loading
          cache.acquire_miss(id, call, stats, make, load, /*may_wait=*/true);
        }
        pins.held.push_back(id);
      }
      flush();
    } catch (...) {
      cache.end_call(stats);
      if (loads != nullptr) *loads = stats;
      if (CallStats* sink = StatsScope::current()) *sink += stats;
      throw;
    }
    cache.end_call(stats);
    if (loads != nullptr) *loads = stats;
    if (CallStats* sink = StatsScope::current()) *sink += stats;
  }

  /// LocalExecutor's forward partition, restricted to the wave's experts: each expert's rows in
  /// blocks of expert_rows_per_task (whole slabs for whole_slabs banks).
  template <class Arch, class S>
  void forward_wave(const ExpertStep<S>& step, const std::vector<Index>& wave,
                    const std::vector<const resident_type*>& weights, MatrixRef<S>& hidden, MatrixRef<S>& y_perm) const {
    const DispatchPlan<S>& plan = step.plan;
    const auto block_rows = [&](Index n) {
      return expert_traits<resident_type>::whole_slabs ? std::max<Index>(n, 1) : expert_rows_per_task;
    };
    struct Task {
      std::size_t slot;
      Index begin, rows;
    };
    std::vector<Task> tasks;
    for (std::size_t i = 0; i < wave.size(); ++i) {
      const Index e = wave[i], n = plan.count(e), per = block_rows(n);
      for (Index t = 0; t * per < n; ++t) tasks.push_back({i, plan.begin(e) + t * per, std::min(per, n - t * per)});
    }
    moe::detail::parallel_for(step.context.pool, static_cast<Index>(tasks.size()), [&](Index k) {
      const Task& t = tasks[static_cast<std::size_t>(k)];
      const resident_type& r = *weights[t.slot];
      if constexpr (expert_traits<resident_type>::needs_context) {
        const ExpertContext<S> ctx = moe::detail::slab_context(plan, t.begin, t.rows, step.input, step.context);
        moe::detail::forward_expert<Arch, resident_type, S>(r, 0, step.x_perm.middleRows(t.begin, t.rows),
                                                            hidden.middleRows(t.begin, t.rows),
                                                            y_perm.middleRows(t.begin, t.rows), step.context.gemm, &ctx);
      } else {
        moe::detail::forward_expert<Arch, resident_type, S>(r, 0, step.x_perm.middleRows(t.begin, t.rows),
                                                            hidden.middleRows(t.begin, t.rows),
                                                            y_perm.middleRows(t.begin, t.rows), step.context.gemm);
      }
    });
  }

  std::shared_ptr<const Source> source_;
  std::shared_ptr<cache_type> cache_;
  std::shared_ptr<prefetcher_type> prefetcher_;
  Index first_ = 0;
  bool frequency_prefetch_ = false;
  std::shared_ptr<Uses> uses_;
};

}  // namespace moe::store

#endif  // MOE_STORE_ON_DEMAND_EXECUTOR_HPP
