// load_recurrent: the golden-variety file (sizes, every tensor against the file's), the config,
// the names, and errors that name the loader and the tensor. Its golden values:
// tests/conformance/variety_test.cpp.
#include <moe/io/recurrent_loader.hpp>

#include <catch2/catch.hpp>

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "support/golden.hpp"
#include "support/safetensors_file.hpp"

namespace recurrent_loader_test {

using moe::Index;
using moe::io::SafetensorsFile;
using moe::io::SafetensorsWriter;

/// A small "moe." recurrent layer: E = 3, d = 4, H = 2. `skip` leaves a tensor out; `bad`
/// replaces one tensor's shape.
SafetensorsWriter writer(const std::string& skip = "", const std::string& bad = "",
                         std::vector<std::int64_t> bad_shape = {}) {
  SafetensorsWriter w;
  const auto put = [&](const std::string& name, std::vector<std::int64_t> shape) {
    if (name == skip) return;
    if (name == bad) shape = bad_shape;
    std::int64_t n = 1;
    for (auto v : shape) n *= v;
    std::vector<float> data(static_cast<std::size_t>(n));
    for (std::size_t i = 0; i < data.size(); ++i) data[i] = 0.125f * float(i % 7) - 0.25f;
    w.add<float>(name, std::move(shape), std::span<const float>(data));
  };
  put("moe.gate.weight", {3, 4});
  for (int e = 0; e < 3; ++e) {
    const std::string q = "moe.experts." + std::to_string(e) + ".";
    put(q + "weight_ih", {6, 4});
    put(q + "weight_hh", {6, 2});
    put(q + "bias_ih", {6});
    put(q + "bias_hh", {6});
  }
  return w;
}


}  // namespace recurrent_loader_test

TEMPLATE_TEST_CASE("load_recurrent reads the golden-variety file: sizes and every tensor", "[io][loader][recurrent][variety]",
                   float, double) {
  using S = TestType;
  using moe::Index;
  const auto f = moe::io::SafetensorsFile::open(moe::test::golden_variety_dir() / "recurrent_expert.safetensors");
  const std::string p = moe::test::meta(f, "prefix");
  const Index E = std::stol(moe::test::meta(f, "num_experts")), d = std::stol(moe::test::meta(f, "d_model"));
  const Index H = std::stol(moe::test::meta(f, "hidden_size")), k = std::stol(moe::test::meta(f, "top_k"));
  const auto layer = moe::io::load_recurrent<S>(f, p, {k, moe::test::meta(f, "renormalize") == "true"});
  REQUIRE(layer.num_experts() == E);
  REQUIRE(layer.input_dim() == d);
  REQUIRE(layer.output_dim() == H);
  REQUIRE(layer.router().k() == k);
  REQUIRE(layer.router().gating().renormalize);
  REQUIRE(moe::test::equals_file(f, p + "gate.weight", layer.router().weight()));
  for (Index e = 0; e < E; ++e) {
    INFO("expert " << e);
    const std::string q = p + "experts." + std::to_string(e) + ".";
    REQUIRE(moe::test::equals_file(f, q + "weight_ih", layer.experts().weight_ih(e)));
    REQUIRE(moe::test::equals_file(f, q + "weight_hh", layer.experts().weight_hh(e)));
    REQUIRE(moe::test::equals_file(f, q + "bias_ih", layer.experts().bias_ih(e)));
    REQUIRE(moe::test::equals_file(f, q + "bias_hh", layer.experts().bias_hh(e)));
  }
}

TEST_CASE("load_recurrent: the config, another hidden size, and the names", "[io][loader][recurrent]") {
  using moe::test::in_memory;
  const auto layer = moe::io::load_recurrent<float>(in_memory(recurrent_loader_test::writer()));
  CHECK(layer.router().k() == 2);
  CHECK(layer.router().gating().renormalize);
  CHECK(layer.experts().hidden_size() == 2);
  CHECK(layer.output_dim() == 2);
  std::vector<std::string> names;
  layer.for_each_parameter([&](const std::string& name, const auto&) { names.push_back(name); });
  REQUIRE(names.size() == 13);
  CHECK(names[0] == "gate.weight");
  CHECK(names[5] == "experts.1.weight_ih");
  CHECK(names[12] == "experts.2.bias_hh");
  const auto one = moe::io::load_recurrent<double>(in_memory(recurrent_loader_test::writer()), "moe.", {1, false});
  CHECK(one.router().k() == 1);
  CHECK_FALSE(one.router().gating().renormalize);
}

TEST_CASE("load_recurrent names the loader, the tensor and what was expected", "[io][loader][recurrent][errors]") {
  using moe::io::load_recurrent;
  using moe::test::in_memory;
  using recurrent_loader_test::writer;
  REQUIRE_THROWS_AS(load_recurrent<float>(in_memory(writer("moe.gate.weight"))), moe::io::MissingTensorError);
  REQUIRE_THROWS_WITH(load_recurrent<float>(in_memory(writer("moe.experts.2.bias_hh"))),
                      Catch::Contains("moe.experts.2.bias_hh") && Catch::Contains("moe::io::load_recurrent"));
  REQUIRE_THROWS_WITH(load_recurrent<float>(in_memory(writer("moe.experts.0.weight_ih"))),
                      Catch::Contains("moe.experts.0.weight_ih"));
  REQUIRE_THROWS_AS(load_recurrent<float>(in_memory(writer("", "moe.experts.1.weight_hh", {6, 3}))),
                    moe::io::TensorMismatchError);
  REQUIRE_THROWS_WITH(load_recurrent<float>(in_memory(writer("", "moe.experts.1.weight_hh", {6, 3}))),
                      Catch::Contains("moe.experts.1.weight_hh") && Catch::Contains("expected shape [6, 2], got [6, 3]"));
  REQUIRE_THROWS_WITH(load_recurrent<float>(in_memory(writer("", "moe.experts.2.bias_ih", {6, 1}))),
                      Catch::Contains("moe.experts.2.bias_ih") && Catch::Contains("expected shape [6], got [6, 1]"));
  REQUIRE_THROWS_WITH(load_recurrent<float>(in_memory(writer("", "moe.experts.1.weight_ih", {6, 5}))),
                      Catch::Contains("expected shape [6, 4], got [6, 5]"));
  // Expert 0's weight_ih sets H = rows / 3.
  REQUIRE_THROWS_WITH(load_recurrent<float>(in_memory(writer("", "moe.experts.0.weight_ih", {5, 4}))),
                      Catch::Contains("moe.experts.0.weight_ih") &&
                          Catch::Contains("expected rows a positive multiple of 3 (3 * hidden_size: gates r, z, n), got 5"));
  REQUIRE_THROWS_WITH(load_recurrent<float>(in_memory(writer("", "moe.experts.0.weight_ih", {0, 4}))),
                      Catch::Contains("got 0"));
  REQUIRE_THROWS_WITH(load_recurrent<float>(in_memory(writer("", "moe.gate.weight", {12}))),
                      Catch::Contains("moe.gate.weight") && Catch::Contains("expected a 2-D tensor, got shape [12]"));
  REQUIRE_THROWS_WITH(load_recurrent<float>(in_memory(writer()), "moe.", {4, true}),
                      Catch::StartsWith("moe::io::load_recurrent(): ") && Catch::Contains("k expected in [1, num_experts = 3], got 4"));
  REQUIRE_THROWS_AS(load_recurrent<float>(in_memory(writer()), "model."), moe::io::MissingTensorError);
}
