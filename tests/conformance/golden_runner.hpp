// The conformance harness: each layer family registers a runner that loads a golden case,
// runs it, and reports every quantity it computed under the golden file's names (without the
// "expected." prefix). golden_test.cpp compares each against the file.
#ifndef MOE_TESTS_CONFORMANCE_GOLDEN_RUNNER_HPP
#define MOE_TESTS_CONFORMANCE_GOLDEN_RUNNER_HPP

#include <moe/core/context.hpp>
#include <moe/layer/workspace.hpp>
#include <moe/io/safetensors.hpp>
#include <moe/loss/load_balancing_loss.hpp>
#include <moe/loss/loss_weights.hpp>
#include <moe/loss/z_loss.hpp>

#include <functional>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>

#include "support/golden.hpp"

namespace moe::test {

/// Quantities computed for one case, as [rows, cols] matrices in double, keyed like the golden
/// file's expected tensors: "output" is compared with "expected.output", "aux_loss" with
/// "expected.aux_loss", and so on. A tensor [B, S, d] is reported as [B*S, d], a vector [n] as
/// [1, n], a scalar as [1, 1]; only the element count and row-major order must agree.
struct GoldenRun {
  std::map<std::string, RowMatrix<double>> values;
  /// Whether the runner computed gradients ("grad.*", "grad_<loss>.*"); while false, the
  /// harness skips the file's gradient tensors with a warning.
  bool has_gradients = false;
  void set(const std::string& key, RowMatrix<double> m) { values[key] = std::move(m); }
  void set_scalar(const std::string& key, double v) { values[key] = RowMatrix<double>::Constant(1, 1, v); }
};

struct FamilyRunner {
  std::function<GoldenRun(const io::SafetensorsFile&)> run_float;
  std::function<GoldenRun(const io::SafetensorsFile&)> run_double;
};

inline std::map<std::string, FamilyRunner>& family_registry() {
  static std::map<std::string, FamilyRunner> registry;
  return registry;
}

/// Registers the runner of a family (metadata "family"); used from a static initialiser.
inline bool register_family(const std::string& family, FamilyRunner runner) {
  family_registry()[family] = std::move(runner);
  return true;
}

inline Index meta_index(const io::SafetensorsFile& f, const std::string& key) { return std::stol(meta(f, key)); }
inline bool meta_bool(const io::SafetensorsFile& f, const std::string& key) {
  const std::string v = meta(f, key);
  if (v != "true" && v != "false") throw std::runtime_error("metadata " + key + " is neither true nor false: " + v);
  return v == "true";
}
inline double meta_double(const io::SafetensorsFile& f, const std::string& key) { return std::stod(meta(f, key)); }

/// Runs a token-routed layer on x and reports output, logits and dense gates; ws keeps the
/// routing for the losses a family reports on top.
template <class Layer>
GoldenRun run_routed_forward(const Layer& layer, const RowMatrix<typename Layer::scalar_type>& x,
                             Workspace<typename Layer::scalar_type>& ws, const ForwardContext& ctx = {}) {
  GoldenRun r;
  r.set("output", layer.forward(x, ws, ctx).template cast<double>());
  r.set("router_logits", ws.routing.logits.template cast<double>());
  r.set("gates", ws.routing.dense_gates().template cast<double>());
  return r;
}

/// Runs a token-routed layer on the case's input and reports output, logits, dense gates and
/// the aux and z losses.
template <class Layer>
GoldenRun run_routed_layer(const Layer& layer, const io::SafetensorsFile& f, const ForwardContext& ctx = {}) {
  using S = typename Layer::scalar_type;
  const RowMatrix<S> x = f.read_rows<S>("input", -1, layer.input_dim());
  Workspace<S> ws;
  GoldenRun r = run_routed_forward(layer, x, ws, ctx);
  r.set_scalar("aux_loss", static_cast<double>(LoadBalancingLoss{}(ws.routing)));
  r.set_scalar("z_loss", static_cast<double>(RouterZLoss{}(ws.routing)));
  return r;
}

/// Reports every gradient of `grads` as "<key>.<prefix><name>".
template <class Grads>
void report_gradients(GoldenRun& r, const std::string& key, const std::string& prefix, const Grads& grads) {
  grads.for_each_parameter([&](const std::string& name, const auto& g) {
    r.set(key + "." + prefix + name, RowMatrix<double>(g.template cast<double>()));
  });
}

/// Forward in training mode, then backward of L = sum(output * grad_output): "grad.input" and
/// "grad.<weight>"; then, with dy = 0, the gradients of the aux and z losses alone.
template <class Layer>
void run_layer_backward(const Layer& layer, const io::SafetensorsFile& f, GoldenRun& r, ForwardContext ctx = {}) {
  using S = typename Layer::scalar_type;
  const std::string prefix = meta(f, "prefix");
  const RowMatrix<S> x = f.read_rows<S>("input", -1, layer.input_dim());
  const RowMatrix<S> g = f.read_rows<S>("grad_output", x.rows(), layer.output_dim());
  Workspace<S> ws;
  ctx.mode = Mode::training;
  RowMatrix<S> y(x.rows(), layer.output_dim()), dx(x.rows(), layer.input_dim());
  layer.forward(x, y, ws, ctx);
  auto grads = layer.make_gradients();
  layer.backward(g, dx, ws, grads);
  r.set("grad.input", dx.template cast<double>());
  report_gradients(r, "grad", prefix, grads);
  const RowMatrix<S> zero = RowMatrix<S>::Zero(x.rows(), layer.output_dim());
  for (const auto& [key, weights] : {std::pair{std::string("grad_aux_loss"), LossWeights<S>{S(1), S(0)}},
                                     std::pair{std::string("grad_z_loss"), LossWeights<S>{S(0), S(1)}}}) {
    grads.set_zero();
    layer.backward(zero, dx, ws, grads, weights);
    report_gradients(r, key, prefix, grads);
  }
  r.has_gradients = true;
}

}  // namespace moe::test

#endif  // MOE_TESTS_CONFORMANCE_GOLDEN_RUNNER_HPP
