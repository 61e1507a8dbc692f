// N MoE layers of one shape with residual connections, x_{l+1} = x_l + layer_l(x_l): the
// model-shaped driver of the on-demand store's benchmark and example (docs/store.md#stack).
#ifndef MOE_LAYER_LAYER_STACK_HPP
#define MOE_LAYER_LAYER_STACK_HPP

#include <moe/core/context.hpp>
#include <moe/core/error.hpp>
#include <moe/core/types.hpp>
#include <moe/layer/workspace.hpp>

#include <cstddef>
#include <functional>
#include <utility>
#include <vector>

namespace moe {

/// Layers of one MoELayer type, each mapping [T, d] to [T, d], run in order with a residual
/// connection around each. Forward only (inference); every layer has its own Workspace.
template <class Layer>
class LayerStack {
 public:
  using layer_type = Layer;
  using scalar_type = typename Layer::scalar_type;
  using S = scalar_type;
  /// Called with (l, x_l) before layer l runs on its input x_l: a store predicts and prefetches
  /// the next layers' experts here (store::ExpertStore::prefetch_next).
  using Hook = std::function<void(Index, const ConstMatrixRef<S>&)>;

  explicit LayerStack(std::vector<Layer> layers) : layers_(std::move(layers)) {
    constexpr const char* where = "LayerStack::LayerStack()";
    detail::require(!layers_.empty(), where, "layers", "at least one", 0);
    const Index d = layers_.front().experts().input_dim();
    for (std::size_t l = 0; l < layers_.size(); ++l) {
      detail::require(layers_[l].experts().input_dim() == d, where,
                      detail::concat("layer ", l, " input_dim (= layer 0's)"), d, layers_[l].experts().input_dim());
      detail::require(layers_[l].experts().output_dim() == d, where,
                      detail::concat("layer ", l, " output_dim (= input_dim, for the residual)"), d,
                      layers_[l].experts().output_dim());
    }
  }

  [[nodiscard]] Index num_layers() const noexcept { return static_cast<Index>(layers_.size()); }
  [[nodiscard]] Index dim() const { return layers_.front().experts().input_dim(); }
  [[nodiscard]] const Layer& layer(Index l) const { return layers_[static_cast<std::size_t>(l)]; }
  [[nodiscard]] Layer& layer(Index l) { return layers_[static_cast<std::size_t>(l)]; }

  /// y = x_N with x_0 = x, x_{l+1} = x_l + layer_l(x_l). ws is resized to one Workspace per
  /// layer (layer l's statistics, ws[l].expert_loads, stay there after the call). Layer l runs
  /// with ctx's layer_index set to l (telemetry, routing tapes).
  RowMatrix<S> forward(const ConstMatrixRef<S>& x, std::vector<Workspace<S>>& ws, const ForwardContext& ctx = {},
                       const Hook& before_layer = {}) const {
    detail::require(x.cols() == dim(), "LayerStack::forward()", "x columns", dim(), x.cols());
    ws.resize(layers_.size());
    RowMatrix<S> h = x;
    RowMatrix<S> y(x.rows(), x.cols());
    ForwardContext at = ctx;
    for (std::size_t l = 0; l < layers_.size(); ++l) {
      if (before_layer) before_layer(static_cast<Index>(l), h);
      at.layer_index = static_cast<Index>(l);
      layers_[l].forward(h, y, ws[l], at);
      h += y;
    }
    return h;
  }

 private:
  std::vector<Layer> layers_;
};

}  // namespace moe

#endif  // MOE_LAYER_LAYER_STACK_HPP
