// Runner for the Switch Transformers family: top-1 softmax routing with ReLU FFN experts,
// without capacity (switch_top1) and with an absolute capacity under the two priority
// policies (switch_capacity_drop: token position; switch_capacity_bpr: V-MoE's BPR); forward
// quantities and every gradient.
#include <moe/io/switch_loader.hpp>

#include <string>

#include "conformance/golden_runner.hpp"

namespace {

using moe::Index;
using moe::RowMatrix;
using moe::io::SafetensorsFile;
using namespace moe::test;

/// The case's "capacity" ("unbounded" or a count per expert) and "priority" (prose naming
/// the policy); an unknown text fails the case rather than guessing.
moe::Capacity capacity_of(const SafetensorsFile& f) {
  const std::string c = meta(f, "capacity");
  if (c == "unbounded") return moe::Capacity::unlimited();
  std::size_t used = 0;
  const Index n = std::stol(c, &used);
  if (used != c.size() || n < 0) throw std::runtime_error("metadata capacity is neither 'unbounded' nor a count: " + c);
  const std::string p = meta(f, "priority");
  if (p.find("batch prioritized") != std::string::npos)
    return moe::Capacity::fixed(n, moe::Priority::batch_prioritized);
  if (p.find("token position") != std::string::npos || p.find("first come first served") != std::string::npos)
    return moe::Capacity::fixed(n, moe::Priority::position);
  throw std::runtime_error("metadata priority names no known policy: " + p);
}

template <class S>
GoldenRun run_switch(const SafetensorsFile& f) {
  if (meta_index(f, "top_k") != 1) throw std::runtime_error("Switch routes top-1; the case says otherwise");
  const auto layer = moe::io::load_switch_transformers<S>(f, meta(f, "prefix"), {capacity_of(f)});
  const RowMatrix<S> x = f.read_rows<S>("input", -1, layer.input_dim());
  moe::Workspace<S> ws;
  const RowMatrix<S> y = layer.forward(x, ws);
  const moe::RoutingResult<S>& routing = ws.routing;
  const moe::DispatchPlan<S>& plan = ws.plan;
  const Index T = routing.num_tokens;

  // The golden gates are the weights the output was computed with: a dropped token gives its
  // expert 0. kept is per token: whether its (single) assignment kept its slot.
  RowMatrix<double> gates = RowMatrix<double>::Zero(T, routing.num_experts);
  RowMatrix<double> kept = RowMatrix<double>::Zero(1, T);
  for (Index i = 0; i < routing.size(); ++i) {
    const auto iu = static_cast<std::size_t>(i);
    if (!plan.kept(i)) continue;
    gates(routing.token[iu], routing.expert[iu]) += static_cast<double>(routing.gate[iu]);
    kept(0, routing.token[iu]) = 1.0;
  }
  if (ws.stats.dropped != static_cast<Index>(plan.dropped.size()))
    throw std::runtime_error("layer statistics disagree with the plan's drops");

  GoldenRun r;
  r.set("output", y.template cast<double>());
  r.set("router_logits", routing.logits.template cast<double>());
  r.set("gates", std::move(gates));
  r.set("kept", std::move(kept));
  // Balancing losses see the router's choices before capacity (README: top-1 argmax before drops).
  r.set_scalar("aux_loss", static_cast<double>(moe::LoadBalancingLoss{}(routing)));
  r.set_scalar("z_loss", static_cast<double>(moe::RouterZLoss{}(routing)));
  // Gradients with the same capacity: a dropped token's gate gets dL/dgate = 0 from the layer,
  // while the aux and z losses see every choice.
  run_layer_backward(layer, f, r);
  return r;
}

const bool switch_family_registered = register_family("switch_transformers", {run_switch<float>, run_switch<double>});

}  // namespace
