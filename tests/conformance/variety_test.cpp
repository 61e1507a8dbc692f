// Conformance with the routing and expert variety references (../shared/golden-variety/README.md).
//
// Every case in the folder (or in $MOE_GOLDEN_VARIETY_DIR) runs in float and in double; every
// "expected.*" tensor must be computed and match within the README's tolerances (max |a-b| /
// max |b| below 1e-5 in float, 1e-4 for float gradients, 1e-10 in double). A loss gradient
// the file does not store must be exactly zero (the README: the loss reaches no other
// weight). A case of an unknown family fails; no case is skipped.
#include <moe/io/conv_loader.hpp>
#include <moe/io/low_rank_loader.hpp>
#include <moe/io/multi_head_loader.hpp>
#include <moe/io/recurrent_loader.hpp>
#include <moe/io/routing_loaders.hpp>
#include <moe/layer/moe_layer.hpp>
#include <moe/loss/domain_loss.hpp>
#include <moe/loss/loss_list.hpp>
#include <moe/loss/modality_balancing_loss.hpp>
#include <moe/router/domain_aware_router.hpp>
#include <moe/router/modality_router.hpp>
#include <moe/router/task_aware_router.hpp>

#include <catch2/catch.hpp>

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "conformance/golden_runner.hpp"

namespace {

using moe::Index;
using moe::RowMatrix;
using moe::io::SafetensorsFile;
using moe::test::GoldenRun;
using moe::test::meta;
using moe::test::meta_bool;
using moe::test::meta_double;
using moe::test::meta_index;

std::vector<std::int64_t> read_ids(const SafetensorsFile& f, const std::string& name) { return f.read<std::int64_t>(name); }

/// A context whose sequences are the file's: input [B, S, d] holds B sequences of S tokens.
moe::ForwardContext sequences_of(const SafetensorsFile& f) {
  const std::vector<std::int64_t> shape = f.info("input").shape;
  REQUIRE(shape.size() == 3);
  moe::ForwardContext ctx;
  ctx.sequence_length = shape[1];
  return ctx;
}

/// L = sum(output * grad_output): "grad.input" and "grad.<prefix><weight>" of the layer.
template <class Layer, class Losses>
void report_backward(const Layer& layer, const SafetensorsFile& f, const moe::ForwardContext& ctx, GoldenRun& r,
                     const std::string& key, bool zero_dy, const Losses& losses) {
  using S = typename Layer::scalar_type;
  const RowMatrix<S> x = f.read_rows<S>("input", -1, layer.input_dim());
  RowMatrix<S> g = f.read_rows<S>("grad_output", x.rows(), layer.output_dim());
  if (zero_dy) g.setZero();
  typename Layer::workspace_type ws;
  moe::ForwardContext training = ctx;
  training.mode = moe::Mode::training;
  RowMatrix<S> y(x.rows(), layer.output_dim()), dx(x.rows(), layer.input_dim());
  layer.forward(x, y, ws, training);
  auto grads = layer.make_gradients();
  layer.backward(g, dx, ws, grads, losses);
  if (!zero_dy) r.set(key + ".input", dx.template cast<double>());
  moe::test::report_gradients(r, key, meta(f, "prefix"), grads);
}

// modality_experts ----------------------------------------------------------------------------

template <class S>
GoldenRun run_modality_experts(const SafetensorsFile& f) {
  if (meta(f, "expert") != "swiglu_silu") FAIL("expected SwiGLU experts, the case has " << meta(f, "expert"));
  const Index M = meta_index(f, "num_modalities");
  const auto layer = moe::io::load_modality_experts<S>(
      f, meta(f, "prefix"), {meta_index(f, "top_k"), meta_bool(f, "renormalize"), M});
  const std::vector<Index>& table = layer.router().expert_modality();
  // The loader's table is the file's (the metadata spells it out too).
  std::string listed;
  for (const Index e : table) listed += (listed.empty() ? "" : ",") + std::to_string(e);
  REQUIRE(listed == meta(f, "expert_modality"));
  const std::vector<std::int64_t> ids = read_ids(f, "modality_ids");
  moe::ForwardContext ctx;
  ctx.modality_ids = ids;

  const RowMatrix<S> x = f.read_rows<S>("input", -1, layer.input_dim());
  moe::Workspace<S> ws;
  GoldenRun r = moe::test::run_routed_forward(layer, x, ws, ctx);
  const moe::ModalityLoadBalancingLoss loss(layer.router());
  const moe::LossInput<S> in{ws.routing, moe::BackwardContext{ctx}};
  r.set_scalar("aux_loss", static_cast<double>(loss.value(in)));
  const std::vector<S> per = loss.per_modality(in);
  RowMatrix<double> per_m(1, M);
  for (Index m = 0; m < M; ++m) per_m(0, m) = static_cast<double>(per[static_cast<std::size_t>(m)]);
  r.set("aux_loss_per_modality", per_m);

  report_backward(layer, f, ctx, r, "grad", false, moe::no_losses);
  report_backward(layer, f, ctx, r, "grad_aux_loss", true, moe::losses(moe::weighted(loss, S(1))));
  r.has_gradients = true;
  return r;
}

// domain_aware --------------------------------------------------------------------------------

template <class S>
GoldenRun run_domain_aware(const SafetensorsFile& f) {
  if (meta(f, "expert") != "swiglu_silu") FAIL("expected SwiGLU experts, the case has " << meta(f, "expert"));
  const Index D = meta_index(f, "num_domains");
  const auto layer =
      moe::io::load_domain_aware<S>(f, meta(f, "prefix"), {meta_index(f, "top_k"), meta_bool(f, "renormalize")});
  REQUIRE(layer.router().num_domains() == D);
  const std::vector<std::int64_t> ids = read_ids(f, "domain_ids");
  moe::ForwardContext ctx;
  ctx.domain_ids = ids;

  const RowMatrix<S> x = f.read_rows<S>("input", -1, layer.input_dim());
  moe::Workspace<S> ws;
  GoldenRun r = moe::test::run_routed_forward(layer, x, ws, ctx);
  RowMatrix<S> z(x.rows(), D);
  layer.router().domain_logits(x, z);
  r.set("domain_logits", z.template cast<double>());
  const RowMatrix<S> q = layer.router().domain_probs(x);
  r.set("domain_probs", q.template cast<double>());
  r.set_scalar("domain_loss", static_cast<double>(moe::DomainLoss{}(moe::ConstMatrixRef<S>(q), ids)));

  report_backward(layer, f, ctx, r, "grad", false, moe::no_losses);
  report_backward(layer, f, ctx, r, "grad_domain_loss", true, moe::losses(moe::weighted(moe::DomainLoss{}, S(1))));
  r.has_gradients = true;
  return r;
}

// task_aware ----------------------------------------------------------------------------------

template <class S>
GoldenRun run_task_aware(const SafetensorsFile& f) {
  if (meta(f, "expert") != "swiglu_silu") FAIL("expected SwiGLU experts, the case has " << meta(f, "expert"));
  const auto layer =
      moe::io::load_task_aware<S>(f, meta(f, "prefix"), {meta_index(f, "top_k"), meta_bool(f, "renormalize")});
  REQUIRE(layer.router().num_tasks() == meta_index(f, "num_tasks"));
  const std::vector<std::int64_t> ids = read_ids(f, "task_ids");
  moe::ForwardContext ctx;
  ctx.task_ids = ids;

  const RowMatrix<S> x = f.read_rows<S>("input", -1, layer.input_dim());
  moe::Workspace<S> ws;
  GoldenRun r = moe::test::run_routed_forward(layer, x, ws, ctx);
  report_backward(layer, f, ctx, r, "grad", false, moe::no_losses);
  r.has_gradients = true;
  return r;
}

// top_p and threshold_skip ------------------------------------------------------------------

/// "num_selected" [T]: the experts each token kept (the routing's pairs per token).
template <class S>
void report_num_selected(const moe::RoutingResult<S>& routing, GoldenRun& r) {
  RowMatrix<double> counts = RowMatrix<double>::Zero(1, routing.num_tokens);
  for (const Index t : routing.token) counts(0, t) += 1.0;
  r.set("num_selected", counts);
}

template <class S>
GoldenRun run_top_p(const SafetensorsFile& f) {
  if (meta(f, "expert") != "swiglu_silu") FAIL("expected SwiGLU experts, the case has " << meta(f, "expert"));
  // top_k holds max_k (the README): a bound, not a fixed k.
  REQUIRE(meta_index(f, "top_k") == meta_index(f, "max_k"));
  const auto layer =
      moe::io::load_top_p<S>(f, meta(f, "prefix"), {meta_double(f, "threshold"), meta_index(f, "max_k")});
  const RowMatrix<S> x = f.read_rows<S>("input", -1, layer.input_dim());
  moe::Workspace<S> ws;
  GoldenRun r = moe::test::run_routed_forward(layer, x, ws, {});
  report_num_selected(ws.routing, r);
  report_backward(layer, f, {}, r, "grad", false, moe::no_losses);
  r.has_gradients = true;
  return r;
}

template <class S>
GoldenRun run_threshold_skip(const SafetensorsFile& f) {
  if (meta(f, "expert") != "swiglu_silu") FAIL("expected SwiGLU experts, the case has " << meta(f, "expert"));
  const auto layer = moe::io::load_threshold_skip<S>(f, meta(f, "prefix"),
                                                     {meta_double(f, "beta"), meta_index(f, "top_k")});
  const RowMatrix<S> x = f.read_rows<S>("input", -1, layer.input_dim());
  moe::Workspace<S> ws;
  GoldenRun r = moe::test::run_routed_forward(layer, x, ws, {});
  report_num_selected(ws.routing, r);
  report_backward(layer, f, {}, r, "grad", false, moe::no_losses);
  r.has_gradients = true;
  return r;
}

// hierarchical --------------------------------------------------------------------------------

template <class S>
GoldenRun run_hierarchical(const SafetensorsFile& f) {
  if (meta(f, "expert") != "swiglu_silu") FAIL("expected SwiGLU experts, the case has " << meta(f, "expert"));
  REQUIRE(meta(f, "renormalize").rfind("true", 0) == 0);  // "true (at both levels)"
  const auto layer = moe::io::load_hierarchical<S>(
      f, meta(f, "prefix"), {meta_index(f, "top_k_groups"), meta_index(f, "top_k_per_group"), true});
  REQUIRE(layer.router().num_groups() == meta_index(f, "num_groups"));
  REQUIRE(layer.router().experts_per_group() == meta_index(f, "experts_per_group"));
  REQUIRE(layer.router().k() == meta_index(f, "top_k"));
  const RowMatrix<S> x = f.read_rows<S>("input", -1, layer.input_dim());
  moe::Workspace<S> ws;
  GoldenRun r = moe::test::run_routed_forward(layer, x, ws, {});
  // The routing's logits are every group's secondary logits; the primary ones come from the router.
  r.set("group_logits", ws.routing.logits.template cast<double>());
  RowMatrix<S> z(x.rows(), layer.router().num_groups());
  layer.router().primary_logits(x, z);
  r.set("router_logits", z.template cast<double>());
  report_backward(layer, f, {}, r, "grad", false, moe::no_losses);
  r.has_gradients = true;
  return r;
}

// low_rank ------------------------------------------------------------------------------------

template <class S>
GoldenRun run_low_rank(const SafetensorsFile& f) {
  // The base trains here: the file gives its gradient (a frozen base would have none to report).
  const auto layer = moe::io::load_low_rank<S>(
      f, meta(f, "prefix"), {meta_index(f, "top_k"), meta_bool(f, "renormalize"), meta_double(f, "alpha"), true});
  REQUIRE(layer.experts().rank() == meta_index(f, "rank"));
  REQUIRE(static_cast<double>(layer.experts().scale()) == meta_double(f, "scale"));
  const RowMatrix<S> x = f.read_rows<S>("input", -1, layer.input_dim());
  moe::Workspace<S> ws;
  GoldenRun r = moe::test::run_routed_forward(layer, x, ws, {});
  report_backward(layer, f, {}, r, "grad", false, moe::no_losses);
  r.has_gradients = true;
  return r;
}

// conv_expert ---------------------------------------------------------------------------------

template <class S>
GoldenRun run_conv_expert(const SafetensorsFile& f) {
  if (meta(f, "expert").find("swiglu_silu") == std::string::npos)
    FAIL("expected a convolution then SwiGLU experts, the case has " << meta(f, "expert"));
  const auto layer =
      moe::io::load_conv_experts<S>(f, meta(f, "prefix"), {meta_index(f, "top_k"), meta_bool(f, "renormalize")});
  REQUIRE(layer.experts().kernel_size() == meta_index(f, "kernel_size"));
  const moe::ForwardContext ctx = sequences_of(f);  // the convolution stays within each sequence
  const RowMatrix<S> x = f.read_rows<S>("input", -1, layer.input_dim());
  moe::Workspace<S> ws;
  GoldenRun r = moe::test::run_routed_forward(layer, x, ws, ctx);
  report_backward(layer, f, ctx, r, "grad", false, moe::no_losses);
  r.has_gradients = true;
  return r;
}

// multi_head ----------------------------------------------------------------------------------

template <class S>
GoldenRun run_multi_head(const SafetensorsFile& f) {
  if (meta(f, "expert").find("swiglu_silu") == std::string::npos)
    FAIL("expected SwiGLU experts on sub-tokens, the case has " << meta(f, "expert"));
  const Index h = meta_index(f, "num_heads");
  const auto layer =
      moe::io::load_multi_head<S>(f, meta(f, "prefix"), {h, meta_index(f, "top_k"), meta_bool(f, "renormalize")});
  REQUIRE(layer.head_dim() == meta_index(f, "head_dim"));
  const RowMatrix<S> x = f.read_rows<S>("input", -1, layer.input_dim());
  GoldenRun r;
  moe::MultiHeadWorkspace<S> ws;
  r.set("output", layer.forward(x, ws, {}).template cast<double>());
  // Logits and gates of the [T*h, d/h] sub-tokens, in sub-token order.
  r.set("router_logits", ws.inner.routing.logits.template cast<double>());
  r.set("gates", ws.inner.routing.dense_gates().template cast<double>());
  report_backward(layer, f, {}, r, "grad", false, moe::no_losses);
  r.has_gradients = true;
  return r;
}

// recurrent_expert ----------------------------------------------------------------------------

template <class S>
GoldenRun run_recurrent_expert(const SafetensorsFile& f) {
  REQUIRE(meta(f, "routing_unit") == "sequence");
  REQUIRE(meta(f, "gru_gate_order") == "r,z,n");
  const auto layer =
      moe::io::load_recurrent<S>(f, meta(f, "prefix"), {meta_index(f, "top_k"), meta_bool(f, "renormalize")});
  REQUIRE(layer.output_dim() == meta_index(f, "hidden_size"));
  const moe::ForwardContext ctx = sequences_of(f);  // each sequence is routed once
  const RowMatrix<S> x = f.read_rows<S>("input", -1, layer.input_dim());
  GoldenRun r;
  moe::Workspace<S> ws;
  r.set("output", layer.forward(x, ws, ctx).template cast<double>());
  // The decision per sequence: logits and gates [B, E].
  moe::RoutingResult<S> per_sequence;
  layer.router().route_sequences(x, per_sequence, ctx);
  r.set("router_logits", per_sequence.logits.template cast<double>());
  r.set("gates", per_sequence.dense_gates().template cast<double>());
  // The token-level routing the layer ran gives each token its sequence's gates.
  const RowMatrix<S> token_gates = ws.routing.dense_gates();
  for (Index t = 0; t < x.rows(); ++t) REQUIRE(token_gates.row(t) == per_sequence.dense_gates().row(t / ctx.sequence_length));
  report_backward(layer, f, ctx, r, "grad", false, moe::no_losses);
  r.has_gradients = true;
  return r;
}

struct VarietyRunner {
  GoldenRun (*run_float)(const SafetensorsFile&);
  GoldenRun (*run_double)(const SafetensorsFile&);
};

const std::map<std::string, VarietyRunner>& variety_runners() {
  static const std::map<std::string, VarietyRunner> runners{
      {"modality_experts", {run_modality_experts<float>, run_modality_experts<double>}},
      {"domain_aware", {run_domain_aware<float>, run_domain_aware<double>}},
      {"task_aware", {run_task_aware<float>, run_task_aware<double>}},
      {"top_p", {run_top_p<float>, run_top_p<double>}},
      {"threshold_skip", {run_threshold_skip<float>, run_threshold_skip<double>}},
      {"low_rank", {run_low_rank<float>, run_low_rank<double>}},
      {"hierarchical", {run_hierarchical<float>, run_hierarchical<double>}},
      {"conv_expert", {run_conv_expert<float>, run_conv_expert<double>}},
      {"multi_head", {run_multi_head<float>, run_multi_head<double>}},
      {"recurrent_expert", {run_recurrent_expert<float>, run_recurrent_expert<double>}},
  };
  return runners;
}

bool is_gradient(const std::string& key) { return key.rfind("grad", 0) == 0; }

/// Every expected tensor against the run; a loss gradient ("grad_<loss>.*") the file does not
/// store must be exactly zero.
void check_case(const SafetensorsFile& f, const GoldenRun& run, double tol, double grad_tol) {
  std::set<std::string> expected_keys;
  for (const std::string& name : f.names()) {
    if (name.rfind("expected.", 0) != 0) continue;
    const std::string key = name.substr(std::string("expected.").size());
    expected_keys.insert(key);
    INFO("quantity " << key);
    const auto it = run.values.find(key);
    if (it == run.values.end()) {
      FAIL_CHECK("the runner did not compute " << key);
      continue;
    }
    const RowMatrix<double>& actual = it->second;
    const auto& info = f.info(name);
    REQUIRE(actual.size() == info.numel());
    const auto v = f.read<double>(name);
    const RowMatrix<double> expected = Eigen::Map<const RowMatrix<double>>(v.data(), actual.rows(), actual.cols());
    const double err = moe::test::max_relative_error(actual, expected);
    const double limit = is_gradient(key) ? grad_tol : tol;
    INFO("max relative error " << err << " (tolerance " << limit << ")");
    CHECK(err < limit);
  }
  for (const auto& [key, m] : run.values) {
    if (key.rfind("grad_", 0) != 0 || expected_keys.count(key) != 0) continue;
    INFO("loss gradient " << key << " is not stored: the loss must not reach this weight");
    CHECK(m.cwiseAbs().maxCoeff() == 0.0);
  }
}

}  // namespace

TEMPLATE_TEST_CASE("golden variety cases match the reference in every computed quantity",
                   "[conformance][golden][variety]", float, double) {
  constexpr bool is_float = std::is_same_v<TestType, float>;
  const double tol = is_float ? 1e-5 : 1e-10;
  const double grad_tol = is_float ? 1e-4 : 1e-10;
  const auto cases = moe::test::golden_variety_cases();
  REQUIRE(!cases.empty());
  for (const auto& path : cases) {
    const SafetensorsFile f = SafetensorsFile::open(path);
    const std::string name = meta(f, "case");
    const std::string family = meta(f, "family");
    DYNAMIC_SECTION(name << " (" << family << ")") {
      const auto it = variety_runners().find(family);
      if (it != variety_runners().end()) {
        const GoldenRun run = is_float ? it->second.run_float(f) : it->second.run_double(f);
        check_case(f, run, tol, grad_tol);
      } else {
        FAIL("golden variety case " << name << ": family '" << family << "' has no runner in this build");
      }
    }
  }
}

TEST_CASE("the variety folder holds every family of issues #15 and #18, and each has a runner",
          "[conformance][golden][variety]") {
  std::set<std::string> families;
  for (const auto& path : moe::test::golden_variety_cases())
    families.insert(meta(SafetensorsFile::open(path), "family"));
  for (const char* family : {"modality_experts", "domain_aware", "top_p", "threshold_skip", "hierarchical", "multi_head",
                             "low_rank", "task_aware", "conv_expert", "recurrent_expert"}) {
    INFO("family " << family);
    CHECK(families.count(family) == 1);
    CHECK(variety_runners().count(family) == 1);
  }
}
