// RoutingTelemetry: each record's figures against their definitions (entropy and margin of
// softmax(logits) computed here by hand, drops and capacity use from the plan), forward
// unchanged with a collector attached, the layer tag, dense and id routers, CSV and JSON.
#include <catch2/catch.hpp>

#include <moe/moe.hpp>

#include <nlohmann/json.hpp>

#include <cmath>
#include <sstream>
#include <string>
#include <vector>

namespace telemetry_test {

using moe::Index;
using moe::RowMatrix;

RowMatrix<float> random(Index rows, Index cols, std::uint64_t seed, double scale) {
  RowMatrix<float> m(rows, cols);
  const moe::CounterRng rng(seed, 0);
  for (Index r = 0; r < rows; ++r)
    for (Index c = 0; c < cols; ++c)
      m(r, c) = static_cast<float>(scale * rng.normal(static_cast<std::uint64_t>(r), static_cast<std::uint64_t>(c)));
  return m;
}

moe::MixtralMoE<float> mixtral(Index E, Index d, Index k, moe::Capacity capacity = {}) {
  moe::SwiGLUExperts<float> experts(E, d, 8);
  experts.gate_up() = random(experts.gate_up().rows(), experts.gate_up().cols(), 1, 0.3);
  experts.down() = random(experts.down().rows(), experts.down().cols(), 2, 0.3);
  return {std::move(experts), moe::SoftmaxTopKRouter<float>(random(E, d, 3, 1.0), k), moe::WeightedSumCombiner<float>{},
          capacity};
}

}  // namespace telemetry_test

using namespace telemetry_test;

TEST_CASE("telemetry: entropy and top-1 margin of softmax(logits), by hand", "[dispatch][telemetry]") {
  moe::RoutingResult<float> routing;
  routing.reset(2, 3, 2, 1);
  routing.token = {0, 1};
  routing.expert = {0, 0};
  routing.gate = {1.0f, 1.0f};
  routing.logits.resize(2, 3);
  // Token 0 uniform: entropy ln 3, margin 0. Token 1: softmax (4, 2, 2) / 8 = (1/2, 1/4, 1/4),
  // entropy (1/2) ln 2 + (1/2) ln 4 = 1.5 ln 2, margin 1/4.
  routing.logits << 0.0f, 0.0f, 0.0f, std::log(4.0f), std::log(2.0f), std::log(2.0f);
  moe::DispatchPlan<float> plan;
  moe::build_plan(routing, plan);
  moe::LayerStatistics stats;
  moe::record_statistics(plan, routing.size(), stats);
  moe::RoutingTelemetry telemetry;
  telemetry.record(5, routing, plan, stats);
  REQUIRE(telemetry.records().size() == 1);
  const moe::TelemetryRecord& r = telemetry.records()[0];
  CHECK(r.call == 0);
  CHECK(r.layer == 5);
  CHECK(r.tokens == 2);
  CHECK(r.assignments == 2);
  CHECK(r.load == std::vector<Index>{2, 0, 0});
  CHECK(r.dropped_fraction == 0.0);
  CHECK(r.entropy == Approx((std::log(3.0) + 1.5 * std::log(2.0)) / 2).epsilon(1e-6));
  CHECK(r.top1_margin == Approx(0.125).epsilon(1e-6));
  CHECK(r.capacity == -1);
  CHECK(std::isnan(r.capacity_use_max));
}

TEST_CASE("telemetry: a layer's records match its plan, and forward is unchanged", "[dispatch][telemetry]") {
  constexpr Index T = 40, d = 6, E = 4;
  const auto layer = mixtral(E, d, 1, moe::Capacity::from_factor(0.75));  // top-1: drops lose whole tokens
  const RowMatrix<float> x = random(T, d, 9, 1.0);
  moe::Workspace<float> ws;
  const RowMatrix<float> plain = layer.forward(x, ws);

  moe::RoutingTelemetry telemetry;
  moe::ForwardContext ctx;
  ctx.telemetry = &telemetry;
  ctx.layer_index = 2;
  const RowMatrix<float> y = layer.forward(x, ws, ctx);
  CHECK(y == plain);  // bit for bit
  ctx.layer_index = 7;
  (void)layer.forward(x.topRows(10), ws, ctx);
  REQUIRE(telemetry.records().size() == 2);
  CHECK(telemetry.records()[1].layer == 7);
  CHECK(telemetry.records()[1].call == 1);
  CHECK(telemetry.records()[1].tokens == 10);

  // The second call's figures, from its workspace.
  const moe::TelemetryRecord& r = telemetry.records()[1];
  CHECK(r.load == ws.stats.expert_load);
  CHECK(r.capacity == ws.plan.capacity);
  REQUIRE(r.capacity > 0);
  Index max = 0, sum = 0;
  for (Index l : ws.stats.expert_load) {
    max = std::max(max, l);
    sum += l;
  }
  CHECK(r.capacity_use_max == Approx(double(max) / double(r.capacity)));
  CHECK(r.capacity_use_mean == Approx(double(sum) / double(E) / double(r.capacity)));
  // A token is dropped when every one of its assignments lost its slot.
  std::vector<bool> served(10, false);
  for (std::size_t a = 0; a < ws.routing.token.size(); ++a)
    if (ws.plan.slot_of[a] >= 0) served[static_cast<std::size_t>(ws.routing.token[a])] = true;
  const auto dropped = std::count(served.begin(), served.end(), false);
  CHECK(r.dropped_fraction == Approx(double(dropped) / 10.0));
  // The first call: capacity ceil(0.75 * 40 / 4) = 8 per expert keeps at most 32 of 40 tokens.
  CHECK(telemetry.records()[0].dropped_fraction >= 0.2);
  CHECK(telemetry.records()[0].capacity_use_max == Approx(1.0));

  // Detached: nothing more is recorded.
  (void)layer.forward(x, ws);
  CHECK(telemetry.records().size() == 2);
  telemetry.clear();
  CHECK(telemetry.empty());
}

TEST_CASE("telemetry: hash routing's zero logits, Soft MoE records its slots, multi-head its sub-tokens",
          "[dispatch][telemetry]") {
  constexpr Index T = 16, d = 8, E = 4;
  moe::RoutingTelemetry telemetry;
  moe::ForwardContext ctx;
  ctx.telemetry = &telemetry;
  const RowMatrix<float> x = random(T, d, 4, 1.0);

  moe::SwiGLUExperts<float> experts(E, d, 8);
  const moe::HashMoE<float> hash(std::move(experts), moe::HashRouter<float>::balanced(100, E, d, 1));
  std::vector<std::int64_t> ids(T);
  for (Index t = 0; t < T; ++t) ids[static_cast<std::size_t>(t)] = t * 3;
  ctx.token_ids = ids;
  moe::Workspace<float> ws;
  (void)hash.forward(x, ws, ctx);
  REQUIRE(telemetry.records().size() == 1);
  // A hash router's logits are all zeros (docs/routers.md): a uniform preference.
  CHECK(telemetry.records()[0].entropy == Approx(std::log(double(E))));
  CHECK(telemetry.records()[0].top1_margin == 0.0);
  CHECK(telemetry.records()[0].assignments == T);
  ctx.token_ids = {};

  const Index slots = 2;
  const moe::MoELayer<moe::SwiGLUExperts<float>, moe::SoftRouter<float>, moe::SoftCombiner<float>> soft(
      moe::SwiGLUExperts<float>(E, d, 8), moe::SoftRouter<float>(random(d, E * slots, 5, 0.3), slots));
  ctx.sequence_length = 8;
  moe::Workspace<float> ws_soft;
  (void)soft.forward(x, ws_soft, ctx);
  REQUIRE(telemetry.records().size() == 2);
  const auto& s = telemetry.records()[1];
  CHECK(s.assignments == 0);
  CHECK(s.dropped_fraction == 0.0);
  CHECK(s.capacity == -1);
  // Two sequences of 8: every expert takes its 2 slots in each.
  CHECK(s.load == std::vector<Index>(E, 2 * slots));
  ctx.sequence_length = 0;

  const moe::MultiHeadMoE<float> mh(mixtral(E, d / 2, 1), 2);
  moe::MultiHeadWorkspace<float> ws_mh;
  (void)mh.forward(x, ws_mh, ctx);
  REQUIRE(telemetry.records().size() == 3);
  CHECK(telemetry.records()[2].tokens == 2 * T);
  CHECK(telemetry.records()[2].load == ws_mh.inner.stats.expert_load);
}

TEST_CASE("telemetry: CSV and JSON exports", "[dispatch][telemetry]") {
  moe::RoutingTelemetry telemetry;
  std::ostringstream empty_json;
  telemetry.write_json(empty_json);
  CHECK(nlohmann::json::parse(empty_json.str())["records"].empty());

  const auto layer = mixtral(3, 4, 1);
  moe::ForwardContext ctx;
  ctx.telemetry = &telemetry;
  moe::Workspace<float> ws;
  (void)layer.forward(random(5, 4, 6, 1.0), ws, ctx);
  ctx.layer_index = 1;
  (void)layer.forward(random(3, 4, 7, 1.0), ws, ctx);

  std::ostringstream csv;
  telemetry.write_csv(csv);
  std::vector<std::string> lines;
  std::istringstream in(csv.str());
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  REQUIRE(lines.size() == 3);
  CHECK(lines[0] ==
        "call,layer,tokens,assignments,dropped_fraction,entropy,top1_margin,capacity,capacity_use_max,"
        "capacity_use_mean,load_0,load_1,load_2");
  // Unbounded capacity: the two capacity-use cells are empty.
  CHECK(lines[2].rfind("1,1,3,3,0,", 0) == 0);
  CHECK(lines[2].find(",-1,,,") != std::string::npos);

  std::ostringstream json;
  telemetry.write_json(json);
  const auto j = nlohmann::json::parse(json.str());
  REQUIRE(j["records"].size() == 2);
  const auto& r0 = j["records"][0];
  const auto& t0 = telemetry.records()[0];
  CHECK(r0["tokens"] == 5);
  CHECK(r0["capacity_use_max"].is_null());
  CHECK(r0["entropy"].get<double>() == t0.entropy);  // 17 digits: the double back exactly
  CHECK(r0["load"].get<std::vector<Index>>() == t0.load);
}
