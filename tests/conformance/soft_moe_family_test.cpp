// Runner for Soft MoE (family puigcerver2023): the layer's dense path, loaded through
// moe::io::load_soft_moe, one sequence per row of the input's batch axis; forward and backward.
#include <moe/io/soft_moe_loader.hpp>

#include <catch2/catch.hpp>

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "conformance/golden_runner.hpp"

namespace {

using moe::Index;
using moe::RowMatrix;
using moe::io::SafetensorsFile;
using namespace moe::test;

/// "2x20x64" -> {2, 20, 64}.
std::vector<Index> parse_shape(const std::string& s) {
  std::vector<Index> dims;
  std::size_t start = 0;
  while (start <= s.size()) {
    const std::size_t x = s.find('x', start);
    dims.push_back(std::stol(s.substr(start, x == std::string::npos ? std::string::npos : x - start)));
    if (x == std::string::npos) break;
    start = x + 1;
  }
  if (dims.size() != 3) throw std::runtime_error("input_shape is not B x S x d: " + s);
  return dims;
}

template <class S>
GoldenRun run_soft_moe(const SafetensorsFile& f) {
  if (meta(f, "router") != "soft") throw std::runtime_error("puigcerver2023 case with router " + meta(f, "router"));
  if (meta(f, "expert") != "gelu_erf_ffn") throw std::runtime_error("Soft MoE case with experts " + meta(f, "expert"));
  moe::io::SoftMoeConfig config;
  config.slots_per_expert = meta_index(f, "slots_per_expert");
  const auto layer = moe::io::load_soft_moe<S>(f, meta(f, "prefix"), config);
  const std::vector<Index> shape = parse_shape(meta(f, "input_shape"));
  if (layer.num_experts() != meta_index(f, "num_experts") || layer.input_dim() != shape[2])
    throw std::runtime_error("loaded layer disagrees with the case's num_experts or d_model");
  const RowMatrix<S> x = f.read_rows<S>("input", -1, layer.input_dim());
  moe::ForwardContext ctx;
  ctx.sequence_length = shape[1];
  moe::Workspace<S> ws;
  const RowMatrix<S> y = layer.forward(x, ws, ctx);
  GoldenRun r;
  r.set("output", y.template cast<double>());
  r.set("dispatch", ws.routing.scores.template cast<double>());
  r.set("combine", moe::SoftCombiner<S>::combine_weights(ws).template cast<double>());
  // grad.input, grad.moe.phi and the experts' grad.moe.experts.{e}.wi|wo.weight.
  run_layer_backward(layer, f, r, ctx);
  return r;
}

const bool soft_moe_family_registered = register_family("puigcerver2023", {run_soft_moe<float>, run_soft_moe<double>});

}  // namespace

namespace {

using moe::io::SafetensorsWriter;

/// A Soft MoE layer under "moe.": d = 4, E*p = 6 slots, ff = 3; each tensor holds 0.5 + its
/// element index / 100, tagged by the tensor's position so a mix-up is visible.
SafetensorsWriter soft_writer(Index phi_cols = 6, Index experts = 3, const std::string& skip = "") {
  SafetensorsWriter w;
  float tag = 0;
  const auto put = [&](const std::string& name, std::vector<std::int64_t> shape) {
    tag += 1;
    if (name == skip) return;
    std::vector<float> v(static_cast<std::size_t>(shape[0] * shape[1]));
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = tag + static_cast<float>(i) / 100.0f;
    w.add<float>(name, std::move(shape), std::span<const float>(v));
  };
  put("moe.phi", {4, phi_cols});
  for (Index e = 0; e < experts; ++e) {
    put("moe.experts." + std::to_string(e) + ".wi.weight", {3, 4});
    put("moe.experts." + std::to_string(e) + ".wo.weight", {4, 3});
  }
  return w;
}

SafetensorsFile soft_file_of(const SafetensorsWriter& w) { return SafetensorsFile::from_bytes(w.to_bytes(), "soft.safetensors"); }

}  // namespace

TEST_CASE("load_soft_moe puts every tensor where the layer reads it", "[io][soft]") {
  const auto layer = moe::io::load_soft_moe<double>(soft_file_of(soft_writer()), "moe.", {2});
  REQUIRE(layer.num_experts() == 3);
  REQUIRE(layer.router().slots_per_expert() == 2);
  REQUIRE(layer.input_dim() == 4);
  REQUIRE(layer.experts().d_ff() == 3);
  CHECK_FALSE(layer.router().normalize());
  // Tags: phi 1, then expert e's wi 2 + 2e and wo 3 + 2e; element (r, c) adds (r * cols + c) / 100.
  CHECK(layer.router().phi()(1, 5) == Approx(1 + 11 / 100.0).epsilon(1e-6));
  for (Index e = 0; e < 3; ++e) {
    CHECK(layer.experts().wi(e)(2, 1) == Approx(2 + 2 * e + 9 / 100.0).epsilon(1e-6));
    CHECK(layer.experts().wo(e)(3, 0) == Approx(3 + 2 * e + 9 / 100.0).epsilon(1e-6));
  }
  moe::io::SoftMoeConfig c{3, true, 4.0};
  const auto normalised = moe::io::load_soft_moe<float>(soft_file_of(soft_writer(6, 2)), "moe.", c);
  CHECK(normalised.num_experts() == 2);
  CHECK(normalised.router().normalize());
  CHECK(normalised.router().scale() == 4.0f);
}

TEST_CASE("load_soft_moe refuses files that do not hold the layer", "[io][soft][errors]") {
  REQUIRE_THROWS_AS(moe::io::load_soft_moe<float>(soft_file_of(soft_writer(7, 3)), "moe.", {2}),
                    moe::io::TensorMismatchError);
  REQUIRE_THROWS_WITH(moe::io::load_soft_moe<float>(soft_file_of(soft_writer(7, 3)), "moe.", {2}),
                      "moe::io: file 'soft.safetensors': tensor 'moe.phi': moe::io::load_soft_moe(): expected 7 "
                      "columns to be num_experts * slots_per_expert with slots_per_expert = 2");
  REQUIRE_THROWS_AS(moe::io::load_soft_moe<float>(soft_file_of(soft_writer(6, 3, "moe.experts.2.wo.weight")), "moe.", {2}),
                    moe::io::MissingTensorError);
  // Phi says 6 experts of one slot; the file has 3.
  REQUIRE_THROWS_AS(moe::io::load_soft_moe<float>(soft_file_of(soft_writer()), "moe.", {1}), moe::io::MissingTensorError);
  REQUIRE_THROWS_WITH(moe::io::load_soft_moe<float>(soft_file_of(soft_writer()), "moe.", {0}),
                      "moe::io::load_soft_moe(): slots_per_expert expected >= 1, got 0");
}
