// load_low_rank: the golden-variety file (sizes, rank, scale, every weight against the file's
// tensor), the config (alpha, a frozen or trained base), and errors that name the loader and
// the tensor. Its golden case: tests/conformance/variety_test.cpp.
#include <moe/io/low_rank_loader.hpp>

#include <catch2/catch.hpp>

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "support/golden.hpp"
#include "support/safetensors_file.hpp"

namespace {

using moe::Index;
using moe::io::SafetensorsFile;
using moe::io::SafetensorsWriter;
using moe::test::in_memory;

/// A small "moe." low-rank layer: E = 3, d = 4, r = 2, d_out = 4; `skip` leaves a tensor out,
/// `bad_b` gives expert 2's lora_B the wrong rank.
SafetensorsWriter low_rank_writer(const std::string& skip = "", bool bad_b = false) {
  SafetensorsWriter w;
  const auto put = [&](const std::string& name, std::vector<std::int64_t> shape) {
    if (name == skip) return;
    std::int64_t n = 1;
    for (auto v : shape) n *= v;
    std::vector<float> data(static_cast<std::size_t>(n));
    for (std::size_t i = 0; i < data.size(); ++i) data[i] = 0.125f * float(i % 7) - 0.25f;
    w.add<float>(name, std::move(shape), std::span<const float>(data));
  };
  put("moe.gate.weight", {3, 4});
  put("moe.base.weight", {4, 4});
  for (int e = 0; e < 3; ++e) {
    const std::string q = "moe.experts." + std::to_string(e) + ".";
    put(q + "lora_A.weight", {2, 4});
    put(q + "lora_B.weight", {4, (bad_b && e == 2) ? 3 : 2});
  }
  return w;
}


}  // namespace

TEMPLATE_TEST_CASE("load_low_rank reads the golden-variety file: sizes, rank, scale, every weight",
                   "[io][loader][low_rank][variety]", float, double) {
  using S = TestType;
  const auto f = SafetensorsFile::open(moe::test::golden_variety_dir() / "low_rank.safetensors");
  const std::string p = moe::test::meta(f, "prefix");
  const Index E = std::stol(moe::test::meta(f, "num_experts")), d = std::stol(moe::test::meta(f, "d_model"));
  const Index r = std::stol(moe::test::meta(f, "rank"));
  const double alpha = std::stod(moe::test::meta(f, "alpha"));
  const auto layer = moe::io::load_low_rank<S>(f, p, {2, true, alpha, true});
  REQUIRE(layer.num_experts() == E);
  REQUIRE(layer.input_dim() == d);
  REQUIRE(layer.experts().rank() == r);
  REQUIRE(static_cast<double>(layer.experts().scale()) == alpha / static_cast<double>(r));
  REQUIRE(moe::test::equals_file(f, p + "gate.weight", layer.router().weight()));
  REQUIRE(moe::test::equals_file(f, p + "base.weight", layer.combiner().shared_expert().weight(0)));
  for (Index e = 0; e < E; ++e) {
    INFO("expert " << e);
    REQUIRE(moe::test::equals_file(f, p + "experts." + std::to_string(e) + ".lora_A.weight", layer.experts().lora_a(e)));
    REQUIRE(moe::test::equals_file(f, p + "experts." + std::to_string(e) + ".lora_B.weight", layer.experts().lora_b(e)));
  }
}

TEST_CASE("load_low_rank: alpha 0 means scale 1, and the base is frozen unless asked", "[io][loader][low_rank]") {
  const auto frozen = moe::io::load_low_rank<float>(in_memory(low_rank_writer()));
  CHECK(frozen.experts().scale() == 1.0f);
  CHECK(frozen.router().k() == 2);
  CHECK_FALSE(frozen.combiner().shared_expert().trainable());
  std::vector<std::string> names;
  frozen.for_each_parameter([&](const std::string& name, const auto&) { names.push_back(name); });
  CHECK(names == std::vector<std::string>{"gate.weight", "experts.0.lora_A.weight", "experts.0.lora_B.weight",
                                          "experts.1.lora_A.weight", "experts.1.lora_B.weight",
                                          "experts.2.lora_A.weight", "experts.2.lora_B.weight"});
  const auto trained = moe::io::load_low_rank<double>(in_memory(low_rank_writer()), "moe.", {1, false, 8.0, true});
  CHECK(trained.experts().scale() == 4.0);
  CHECK(trained.combiner().shared_expert().trainable());
  names.clear();
  trained.for_each_parameter([&](const std::string& name, const auto&) { names.push_back(name); });
  CHECK(names.size() == 8);
  CHECK(names.back() == "base.weight");
}

TEST_CASE("load_low_rank names the loader, the tensor and what was expected", "[io][loader][low_rank][errors]") {
  using moe::io::load_low_rank;
  REQUIRE_THROWS_AS(load_low_rank<float>(in_memory(low_rank_writer("moe.base.weight"))), moe::io::MissingTensorError);
  REQUIRE_THROWS_WITH(load_low_rank<float>(in_memory(low_rank_writer("moe.experts.1.lora_A.weight"))),
                      Catch::Contains("moe.experts.1.lora_A.weight") && Catch::Contains("moe::io::load_low_rank"));
  REQUIRE_THROWS_AS(load_low_rank<float>(in_memory(low_rank_writer("", true))), moe::io::TensorMismatchError);
  REQUIRE_THROWS_WITH(load_low_rank<float>(in_memory(low_rank_writer("", true))),
                      Catch::Contains("moe.experts.2.lora_B.weight") && Catch::Contains("expected shape [4, 2], got [4, 3]"));
  REQUIRE_THROWS_WITH(load_low_rank<float>(in_memory(low_rank_writer()), "moe.", {4, true}),
                      Catch::StartsWith("moe::io::load_low_rank(): ") && Catch::Contains("k"));
}
