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

// A small "moe." layer (E = 3, d = 4, ff = 2) with a gate, a noise weight and a hash table;
// `skip` leaves one tensor out.
moe::io::SafetensorsWriter moe_writer(const std::string& skip = "", std::vector<std::int64_t> table = {0, 2, 1, 1, 0}) {
  moe::io::SafetensorsWriter w;
  const auto put = [&](const std::string& name, std::vector<std::int64_t> shape) {
    if (name == skip) return;
    std::int64_t n = 1;
    for (auto v : shape) n *= v;
    std::vector<float> data(static_cast<size_t>(n));
    for (size_t i = 0; i < data.size(); ++i) data[i] = 0.01f * float(i + 1);
    w.add<float>(name, std::move(shape), std::span<const float>(data));
  };
  put("moe.gate.weight", {3, 4});
  put("moe.noise.weight", {3, 4});
  for (int e = 0; e < 3; ++e) {
    const std::string q = "moe.experts." + std::to_string(e) + ".";
    put(q + "w1.weight", {2, 4});
    put(q + "w3.weight", {2, 4});
    put(q + "w2.weight", {4, 2});
  }
  if (skip != "moe.hash_table")
    w.add<std::int64_t>("moe.hash_table", {std::int64_t(table.size())}, std::span<const std::int64_t>(table));
  return w;
}

SafetensorsFile file_of(const moe::io::SafetensorsWriter& w) {
  return SafetensorsFile::from_bytes(w.to_bytes(), "layer.safetensors");
}

const bool routing_families_registered = register_family("shazeer2017", {run_noisy_top_k<float>, run_noisy_top_k<double>}) &&
                        register_family("zhou2022", {run_expert_choice<float>, run_expert_choice<double>}) &&
                        register_family("roller2021", {run_hash<float>, run_hash<double>});

}  // namespace

TEST_CASE("the routing loaders read sizes and weights from the moe. layout", "[io][loader][routing]") {
  const auto f = file_of(moe_writer());
  const auto noisy = moe::io::load_noisy_top_k<double>(f, "moe.", {2});
  REQUIRE(noisy.num_experts() == 3);
  REQUIRE(noisy.router().k() == 2);
  REQUIRE(noisy.router().noise_weight()(2, 3) == Approx(0.12f));
  REQUIRE(noisy.router().noise_epsilon() == Approx(1e-2));
  REQUIRE(noisy.experts().down_proj(1)(3, 1) == Approx(0.08f));
  const auto ec = moe::io::load_expert_choice<float>(f, "moe.", {1.5});
  REQUIRE(ec.router().capacity_factor() == 1.5);
  REQUIRE(ec.router().weight()(0, 1) == 0.02f);
  const auto hash = moe::io::load_hash<float>(f, "moe.");
  REQUIRE(hash.num_experts() == 3);
  REQUIRE(hash.input_dim() == 4);
  REQUIRE(hash.router().table() == std::vector<Index>{0, 2, 1, 1, 0});
}

TEST_CASE("the routing loaders name the loader, the tensor and what was expected", "[io][loader][routing][errors]") {
  REQUIRE_THROWS_AS(moe::io::load_noisy_top_k<float>(file_of(moe_writer("moe.noise.weight"))),
                    moe::io::MissingTensorError);
  REQUIRE_THROWS_WITH(moe::io::load_noisy_top_k<float>(file_of(moe_writer("moe.noise.weight"))),
                      "moe::io: file 'layer.safetensors': tensor 'moe.noise.weight': moe::io::load_noisy_top_k(): "
                      "expected this tensor (prefix 'moe.'), but the file has no such name; close names: "
                      "'moe.gate.weight'");  // 4 edits, within max(2, 16 / 4)
  REQUIRE_THROWS_WITH(moe::io::load_noisy_top_k<float>(file_of(moe_writer()), "moe.", {4}),
                      "moe::io::load_noisy_top_k(): NoisyTopKRouter::NoisyTopKRouter(): k expected in [1, "
                      "num_experts = 3], got 4");
  REQUIRE_THROWS_WITH(moe::io::load_expert_choice<float>(file_of(moe_writer()), "moe.", {0.0}),
                      "moe::io::load_expert_choice(): ExpertChoiceRouter::ExpertChoiceRouter(): capacity_factor "
                      "expected finite and > 0, got 0");
  REQUIRE_THROWS_WITH(moe::io::load_expert_choice<float>(file_of(moe_writer("moe.experts.1.w2.weight"))),
                      Catch::Contains("tensor 'moe.experts.1.w2.weight'"));

  REQUIRE_THROWS_AS(moe::io::load_hash<float>(file_of(moe_writer("moe.hash_table"))), moe::io::MissingTensorError);
  REQUIRE_THROWS_WITH(moe::io::load_hash<float>(file_of(moe_writer("moe.hash_table"))),
                      "moe::io: file 'layer.safetensors': tensor 'moe.hash_table': moe::io::load_hash(): expected "
                      "this tensor (prefix 'moe.'), but the file has no such name");  // no name within 3 edits or ending so
  REQUIRE_THROWS_AS(moe::io::load_hash<float>(file_of(moe_writer("", {0, 3, 1}))), moe::io::TensorMismatchError);
  REQUIRE_THROWS_WITH(moe::io::load_hash<float>(file_of(moe_writer("", {0, 3, 1}))),
                      "moe::io: file 'layer.safetensors': tensor 'moe.hash_table': moe::io::load_hash(): expected "
                      "entries in [0, 3), got 3 at index 1");
  REQUIRE_THROWS_WITH(moe::io::load_hash<float>(file_of(moe_writer("moe.experts.0.w1.weight"))),
                      "moe::io: file 'layer.safetensors': tensor 'moe.experts.0.w1.weight': moe::io::load_hash(): "
                      "expected at least one expert under this name (prefix 'moe.'), but the file has none; close "
                      "names: 'moe.experts.0.w2.weight', 'moe.experts.0.w3.weight', 'moe.experts.1.w1.weight'");
  moe::io::SafetensorsWriter w = moe_writer("moe.hash_table");
  const std::vector<float> table = {0.0f, 1.0f};
  w.add<float>("moe.hash_table", {2}, std::span<const float>(table));
  REQUIRE_THROWS_WITH(moe::io::load_hash<float>(file_of(w)),
                      "moe::io: file 'layer.safetensors': tensor 'moe.hash_table': moe::io::load_hash(): expected an "
                      "integer dtype (I64, I32, I16, I8, U8), got F32");
  moe::io::SafetensorsWriter w2 = moe_writer("moe.hash_table");
  const std::vector<std::int64_t> square = {0, 1, 2, 0};
  w2.add<std::int64_t>("moe.hash_table", {2, 2}, std::span<const std::int64_t>(square));
  REQUIRE_THROWS_WITH(moe::io::load_hash<float>(file_of(w2)),
                      "moe::io: file 'layer.safetensors': tensor 'moe.hash_table': moe::io::load_hash(): expected a "
                      "non-empty 1-D tensor, got shape [2, 2]");
}
