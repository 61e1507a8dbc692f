// Several on-demand layers under one byte budget, with an optional prefetch thread: the store
// of a model's layer stack (docs/store.md#stack).
#ifndef MOE_STORE_EXPERT_STORE_HPP
#define MOE_STORE_EXPERT_STORE_HPP

#include <moe/contracts/routing_result.hpp>
#include <moe/core/context.hpp>
#include <moe/core/error.hpp>
#include <moe/core/types.hpp>
#include <moe/store/expert_cache.hpp>
#include <moe/store/on_demand_executor.hpp>
#include <moe/store/prefetcher.hpp>

#include <algorithm>
#include <cstddef>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>
#include <xsimd/xsimd.hpp>

namespace moe::store {

/// How an ExpertStore prefetches.
struct PrefetchOptions {
  /// A prefetch thread (one slot of the budget for its load in flight; the budget must hold
  /// two experts). Without it prefetch() does nothing.
  bool thread = false;
  /// After each forward, each layer asks for the experts its past calls needed most, as many
  /// as the call needed (OnDemandExecutor). Needs `thread`.
  bool frequency = false;
};

/// The experts of layers 0 .. L-1, each read from its own source, in one ExpertCache: layer
/// l's expert e is the cache's entry first(l) + e, so every layer competes for the one budget
/// under one policy. executor(l) is layer l's OnDemandExecutor. With a prefetch thread,
/// prefetch(l, experts) queues layer l's experts, and prefetch_next (below) predicts them from
/// a router, for LayerStack's hook.
///
/// The sources must have the same expert_bytes() and resident shape (the number of experts may
/// differ): an evicted expert's memory takes the next load, whatever its layer.
/// Copies share everything.
template <ExpertSource Source, class Policy = LruPolicy>
class ExpertStore {
 public:
  using executor_type = OnDemandExecutor<Source, Policy>;
  using cache_type = typename executor_type::cache_type;
  using prefetcher_type = typename executor_type::prefetcher_type;
  using resident_type = typename Source::resident_type;

  /// Throws std::invalid_argument for no layers, a null source, sources of different
  /// expert_bytes(), a budget below one expert (two with the prefetch thread), or frequency
  /// without the thread.
  ExpertStore(std::vector<std::shared_ptr<const Source>> layers, std::size_t budget_bytes, Policy policy = {},
              PrefetchOptions prefetch = {})
      : state_(std::make_shared<State>()) {
    constexpr const char* where = "ExpertStore::ExpertStore()";
    detail::require(!layers.empty(), where, "layers", "at least one source", 0);
    Index total = 0;
    for (std::size_t l = 0; l < layers.size(); ++l) {
      if (!layers[l])
        throw std::invalid_argument(std::string(where) + ": layers[" + std::to_string(l) +
                                    "] expected a source, got nullptr");
      detail::require(layers[l]->expert_bytes() == layers[0]->expert_bytes(), where,
                      detail::concat("layers[", l, "] expert_bytes (= layer 0's)"), layers[0]->expert_bytes(),
                      layers[l]->expert_bytes());
      if (l > 0) {  // the cache loads one layer's expert into another's evicted memory
        const resident_type a = layers[0]->make_resident(), b = layers[l]->make_resident();
        if (a.input_dim() != b.input_dim() || a.output_dim() != b.output_dim() || a.hidden_cols() != b.hidden_cols())
          throw std::invalid_argument(std::string(where) + ": layers[" + std::to_string(l) +
                                      "] expert shape (input_dim, output_dim, hidden_cols) expected layer 0's (" +
                                      std::to_string(a.input_dim()) + ", " + std::to_string(a.output_dim()) + ", " +
                                      std::to_string(a.hidden_cols()) + "), got (" + std::to_string(b.input_dim()) +
                                      ", " + std::to_string(b.output_dim()) + ", " + std::to_string(b.hidden_cols()) + ")");
      }
      state_->first.push_back(total);
      total += layers[l]->num_experts();
    }
    if (prefetch.frequency && !prefetch.thread)
      throw std::invalid_argument(std::string(where) +
                                  ": PrefetchOptions::frequency expected PrefetchOptions::thread, got no thread");
    state_->sources = std::move(layers);
    state_->cache = std::make_shared<cache_type>(total, state_->sources[0]->expert_bytes(), budget_bytes, std::move(policy));
    state_->frequency = prefetch.frequency;
    if (prefetch.thread) {
      std::shared_ptr<State> s = state_;
      // The prefetch thread reads through the sources; it holds them (not the store's state,
      // which holds it) so the two never keep each other alive.
      auto sources = std::make_shared<std::vector<std::shared_ptr<const Source>>>(s->sources);
      auto firsts = std::make_shared<std::vector<Index>>(s->first);
      const auto locate = [firsts](Index entry) {
        const auto it = std::upper_bound(firsts->begin(), firsts->end(), entry);
        const auto l = static_cast<std::size_t>(it - firsts->begin() - 1);
        return std::pair<std::size_t, Index>(l, entry - (*firsts)[l]);
      };
      s->prefetcher = std::make_shared<prefetcher_type>(
          s->cache, [sources, locate](Index entry) { return (*sources)[locate(entry).first]->make_resident(); },
          [sources, locate](Index entry, resident_type& r) {
            const auto [l, e] = locate(entry);
            return (*sources)[l]->load(e, r);
          });
    }
  }

  [[nodiscard]] Index num_layers() const noexcept { return static_cast<Index>(state_->sources.size()); }
  [[nodiscard]] const Source& source(Index layer) const { return *state_->sources[checked(layer, "source()")]; }
  /// Layer l's first entry in the cache.
  [[nodiscard]] Index first(Index layer) const { return state_->first[checked(layer, "first()")]; }
  [[nodiscard]] cache_type& cache() const noexcept { return *state_->cache; }
  /// The prefetcher, or nullptr without the thread.
  [[nodiscard]] prefetcher_type* prefetcher() const noexcept { return state_->prefetcher.get(); }

  /// Layer l's executor, on the shared cache (and prefetcher).
  [[nodiscard]] executor_type executor(Index layer) const {
    const std::size_t l = checked(layer, "executor()");
    return executor_type(state_->sources[l], state_->cache, state_->first[l], state_->prefetcher, state_->frequency);
  }

  /// Queues layer l's experts (its own indices) for the prefetch thread; nothing without it.
  void prefetch(Index layer, const std::vector<Index>& experts) const {
    const std::size_t l = checked(layer, "prefetch()");
    std::vector<Index> entries;
    entries.reserve(experts.size());
    for (Index e : experts) {
      detail::require(e >= 0 && e < state_->sources[l]->num_experts(), "ExpertStore::prefetch()", "expert",
                      detail::concat("in [0, ", state_->sources[l]->num_experts(), ")"), e);
      entries.push_back(state_->first[l] + e);
    }
    if (state_->prefetcher) state_->prefetcher->request(entries);
  }

  /// Blocks until the prefetch thread is idle (no-op without it).
  void wait_prefetch_idle() const {
    if (state_->prefetcher) state_->prefetcher->wait_idle();
  }

 private:
  struct State {
    std::vector<std::shared_ptr<const Source>> sources;
    std::vector<Index> first;
    std::shared_ptr<cache_type> cache;
    std::shared_ptr<prefetcher_type> prefetcher;
    bool frequency = false;
  };
  [[nodiscard]] std::size_t checked(Index layer, const char* what) const {
    detail::require(layer >= 0 && layer < num_layers(), std::string("ExpertStore::") + what, "layer",
                    detail::concat("in [0, ", num_layers(), ")"), layer);
    return static_cast<std::size_t>(layer);
  }
  std::shared_ptr<State> state_;
};

/// The experts a router picks for x (ascending, each once): the prediction of the next layer's
/// experts from this layer's input, the residual stream changing little from one layer to the
/// next. For LayerStack's hook:
///
///     stack.forward(x, ws, ctx, [&](Index l, const auto& h) {
///       if (l + 1 < stack.num_layers())
///         store.prefetch(l + 1, moe::store::predict_experts(stack.layer(l + 1).router(), h));
///     });
template <class Router, class Arch = xsimd::default_arch>
std::vector<Index> predict_experts(const Router& router, const ConstMatrixRef<typename Router::scalar_type>& x,
                                   const ForwardContext& ctx = {}) {
  RoutingResult<typename Router::scalar_type> routing;
  ForwardContext inference = ctx;
  inference.mode = Mode::inference;
  inference.routing_tape = nullptr;
  inference.telemetry = nullptr;
  router.template route<Arch>(x, routing, inference);
  std::vector<Index> experts(routing.expert.begin(), routing.expert.end());
  std::sort(experts.begin(), experts.end());
  experts.erase(std::unique(experts.begin(), experts.end()), experts.end());
  return experts;
}

}  // namespace moe::store

#endif  // MOE_STORE_EXPERT_STORE_HPP
