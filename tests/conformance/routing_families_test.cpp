// Runners for the routing families of issue #3 with own-reference golden cases: noisy top-k
// (shazeer2017), expert choice (zhou2022) and hash routing (roller2021), each loaded through
// moe::io from the "moe." layout; forward quantities and every gradient.
#include <moe/io/routing_loaders.hpp>
#include <moe/router/noisy_top_k_router.hpp>
#include <moe/loss/importance_loss.hpp>

#include <catch2/catch.hpp>

#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "conformance/golden_runner.hpp"

namespace {

using moe::Index;
using moe::RowMatrix;
using moe::io::SafetensorsFile;
using namespace moe::test;

template <class S>
RowMatrix<double> as_row(const moe::Vector<S>& v) {
  return v.template cast<double>().transpose();
}

// Training mode with the case's own standard-normal sample, so the noisy logits are the
// reference's; importance and load as tensor2tensor's noisy_top_k_gating.
template <class S>
GoldenRun run_noisy_top_k(const SafetensorsFile& f) {
  const Index k = meta_index(f, "top_k");
  auto layer = moe::io::load_noisy_top_k<S>(f, meta(f, "prefix"), {k});
  const RowMatrix<S> x = f.read_rows<S>("input", -1, layer.input_dim());
  layer.router().set_noise(f.read_rows<S>("noise", x.rows(), layer.num_experts()));
  moe::ForwardContext ctx;
  ctx.mode = moe::Mode::training;
  moe::Workspace<S> ws;
  const RowMatrix<S> y = layer.forward(x, ws, ctx);
  moe::NoisyGatingTerms<S> terms;
  layer.router().gating_terms(x, ctx, terms);
  if (terms.noisy != ws.routing.logits)
    throw std::runtime_error("gating_terms() does not reproduce the noisy logits route() selected on");
  GoldenRun r;
  r.set("output", y.template cast<double>());
  r.set("gates", ws.routing.dense_gates().template cast<double>());
  r.set("importance", as_row(moe::importance(ws.routing)));
  r.set("load", as_row(moe::noisy_load(terms, k)));
  r.set_scalar("importance_loss", static_cast<double>(moe::ImportanceLoss{}(ws.routing)));
  r.set_scalar("load_loss", static_cast<double>(moe::LoadLoss{}(terms, k)));

  // L = sum(output * grad_output) with the same noise, then each balancing loss alone (dy = 0).
  run_layer_backward(layer, f, r, ctx);
  const std::string prefix = meta(f, "prefix");
  const RowMatrix<S> zero = RowMatrix<S>::Zero(x.rows(), layer.output_dim());
  RowMatrix<S> dx(x.rows(), layer.input_dim());
  moe::LossWeights<S> importance_only, load_only;
  importance_only.importance = S(1);
  load_only.load = S(1);
  for (const auto& [key, weights] : {std::pair{std::string("grad_importance_loss"), importance_only},
                                     std::pair{std::string("grad_load_loss"), load_only}}) {
    auto grads = layer.make_gradients();
    layer.backward(zero, dx, ws, grads, weights);
    report_gradients(r, key, prefix, grads);
  }
  return r;
}

template <class S>
GoldenRun run_expert_choice(const SafetensorsFile& f) {
  auto layer = moe::io::load_expert_choice<S>(f, meta(f, "prefix"), {meta_double(f, "capacity_factor")});
  const RowMatrix<S> x = f.read_rows<S>("input", -1, layer.input_dim());
  if (layer.router().tokens_per_expert(x.rows()) != meta_index(f, "capacity_per_expert"))
    throw std::runtime_error("tokens per expert differ from the case's capacity_per_expert");
  moe::Workspace<S> ws;
  const RowMatrix<S> y = layer.forward(x, ws);
  GoldenRun r;
  r.set("output", y.template cast<double>());
  r.set("router_logits", ws.routing.logits.template cast<double>());
  r.set("gates", ws.routing.dense_gates().template cast<double>());
  run_layer_backward(layer, f, r);
  return r;
}

template <class S>
GoldenRun run_hash(const SafetensorsFile& f) {
  auto layer = moe::io::load_hash<S>(f, meta(f, "prefix"));
  const RowMatrix<S> x = f.read_rows<S>("input", -1, layer.input_dim());
  const std::vector<std::int64_t> ids = f.read<std::int64_t>("token_ids");
  moe::ForwardContext ctx;
  ctx.token_ids = ids;
  moe::Workspace<S> ws;
  const RowMatrix<S> y = layer.forward(x, ws, ctx);
  GoldenRun r;
  r.set("output", y.template cast<double>());
  r.set("gates", ws.routing.dense_gates().template cast<double>());
  run_layer_backward(layer, f, r, ctx);
  return r;
}

const bool routing_families_registered = register_family("shazeer2017", {run_noisy_top_k<float>, run_noisy_top_k<double>}) &&
                        register_family("zhou2022", {run_expert_choice<float>, run_expert_choice<double>}) &&
                        register_family("roller2021", {run_hash<float>, run_hash<double>});

}  // namespace
