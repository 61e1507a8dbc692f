// load_conv_experts: the golden-variety file (sizes, kernel size, every weight against the
// file's tensor) and errors that name the loader and the tensor. Its golden case:
// tests/conformance/variety_test.cpp.
#include <moe/io/conv_loader.hpp>

#include <catch2/catch.hpp>

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "support/golden.hpp"
#include "support/safetensors_file.hpp"

namespace conv_loader_test {

using moe::Index;
using moe::io::SafetensorsFile;
using moe::io::SafetensorsWriter;

/// A small "moe." conv layer: E = 3, d = 4, ff = 2, w = 3; `skip` leaves a tensor out,
/// `bad_w` gives expert 2's kernel 2 taps instead of 3.
SafetensorsWriter conv_writer(const std::string& skip = "", bool bad_w = false) {
  SafetensorsWriter w;
  const auto put = [&](const std::string& name, std::vector<std::int64_t> shape) {
    if (name == skip) return;
    std::int64_t n = 1;
    for (auto v : shape) n *= v;
    std::vector<float> data(static_cast<std::size_t>(n));
    for (std::size_t i = 0; i < data.size(); ++i) data[i] = 0.125f * float(i % 5) - 0.25f;
    w.add<float>(name, std::move(shape), std::span<const float>(data));
  };
  put("moe.gate.weight", {3, 4});
  for (int e = 0; e < 3; ++e) {
    const std::string q = "moe.experts." + std::to_string(e) + ".";
    put(q + "conv.weight", {(bad_w && e == 2) ? 2 : 3, 4});
    put(q + "w1.weight", {2, 4});
    put(q + "w3.weight", {2, 4});
    put(q + "w2.weight", {4, 2});
  }
  return w;
}


}  // namespace conv_loader_test

using conv_loader_test::conv_writer;
using moe::Index;

TEMPLATE_TEST_CASE("load_conv_experts reads the golden-variety file: sizes, kernel size, every weight",
                   "[io][loader][conv][variety]", float, double) {
  using S = TestType;
  const auto f = moe::io::SafetensorsFile::open(moe::test::golden_variety_dir() / "conv_expert.safetensors");
  const std::string p = moe::test::meta(f, "prefix");
  const Index E = std::stol(moe::test::meta(f, "num_experts")), d = std::stol(moe::test::meta(f, "d_model"));
  const auto layer = moe::io::load_conv_experts<S>(f, p, {std::stol(moe::test::meta(f, "top_k")), true});
  REQUIRE(layer.num_experts() == E);
  REQUIRE(layer.input_dim() == d);
  REQUIRE(layer.experts().kernel_size() == std::stol(moe::test::meta(f, "kernel_size")));
  REQUIRE(moe::test::equals_file(f, p + "gate.weight", layer.router().weight()));
  for (Index e = 0; e < E; ++e) {
    INFO("expert " << e);
    const std::string q = p + "experts." + std::to_string(e) + ".";
    REQUIRE(moe::test::equals_file(f, q + "conv.weight", layer.experts().conv(e)));
    REQUIRE(moe::test::equals_file(f, q + "w1.weight", layer.experts().inner().gate_proj(e)));
    REQUIRE(moe::test::equals_file(f, q + "w3.weight", layer.experts().inner().up_proj(e)));
    REQUIRE(moe::test::equals_file(f, q + "w2.weight", layer.experts().inner().down_proj(e)));
  }
  std::vector<std::string> names;
  layer.for_each_parameter([&](const std::string& n, const auto&) { names.push_back(n); });
  REQUIRE(names.size() == static_cast<std::size_t>(1 + 4 * E));
  CHECK(names[1] == "experts.0.conv.weight");
  CHECK(names.back() == "experts." + std::to_string(E - 1) + ".w2.weight");
}

TEST_CASE("load_conv_experts names the loader, the tensor and what was expected", "[io][loader][conv][errors]") {
  using moe::io::load_conv_experts;
  using moe::test::in_memory;
  CHECK(load_conv_experts<float>(in_memory(conv_writer())).experts().kernel_size() == 3);
  REQUIRE_THROWS_AS(load_conv_experts<float>(in_memory(conv_writer("moe.experts.0.conv.weight"))),
                    moe::io::MissingTensorError);
  REQUIRE_THROWS_WITH(load_conv_experts<float>(in_memory(conv_writer("moe.experts.1.conv.weight"))),
                      Catch::Contains("moe.experts.1.conv.weight") && Catch::Contains("moe::io::load_conv_experts"));
  REQUIRE_THROWS_WITH(load_conv_experts<float>(in_memory(conv_writer("moe.experts.2.w3.weight"))),
                      Catch::Contains("moe.experts.2.w3.weight"));
  REQUIRE_THROWS_AS(load_conv_experts<float>(in_memory(conv_writer("", true))), moe::io::TensorMismatchError);
  REQUIRE_THROWS_WITH(load_conv_experts<float>(in_memory(conv_writer("", true))),
                      Catch::Contains("moe.experts.2.conv.weight") && Catch::Contains("expected shape [3, 4], got [2, 4]"));
  REQUIRE_THROWS_WITH(load_conv_experts<float>(in_memory(conv_writer()), "moe.", {4, true}),
                      Catch::StartsWith("moe::io::load_conv_experts(): ") && Catch::Contains("k"));
}
