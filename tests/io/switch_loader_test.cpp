// The Switch Transformers loader: sizes from the tensors, capacity from the config, and
// errors that name the loader, the tensor, what was expected and what the file holds.
#include <moe/io/switch_loader.hpp>

#include <catch2/catch.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "support/safetensors_file.hpp"

namespace {

using moe::io::SafetensorsFile;
using moe::io::SafetensorsWriter;

/// A well-formed Switch layer: E = 3, d = 4, ff = 5, under "mlp."; every value distinct.
SafetensorsWriter switch_writer(const std::string& skip = "", const std::string& reshape = "") {
  SafetensorsWriter w;
  float next = 0.0f;
  const auto put = [&](const std::string& name, std::vector<std::int64_t> shape) {
    if (name == skip) return;
    if (name == reshape) shape.back() += 1;
    std::vector<float> data(static_cast<std::size_t>(shape[0] * shape[1]));
    for (auto& v : data) v = (next += 1.0f);
    w.add<float>(name, std::move(shape), std::span<const float>(data));
  };
  put("mlp.router.classifier.weight", {3, 4});
  for (int e = 0; e < 3; ++e) {
    const std::string q = "mlp.experts.expert_" + std::to_string(e) + ".";
    put(q + "wi.weight", {5, 4});
    put(q + "wo.weight", {4, 5});
  }
  return w;
}

SafetensorsFile switch_file_of(const SafetensorsWriter& w) { return moe::test::in_memory(w, "switch.safetensors"); }

}  // namespace

TEST_CASE("a well-formed Switch layer loads top-1, unnormalised, with its weights in place", "[io][loader][switch]") {
  const auto f = switch_file_of(switch_writer());
  const auto layer = moe::io::load_switch_transformers<double>(f, "mlp.");
  REQUIRE(layer.num_experts() == 3);
  REQUIRE(layer.input_dim() == 4);
  REQUIRE(layer.experts().d_ff() == 5);
  REQUIRE(layer.router().k() == 1);
  REQUIRE_FALSE(layer.router().gating().renormalize);
  REQUIRE(layer.capacity().kind == moe::Capacity::Kind::none);
  // Values were written 1, 2, ... in file order: router (12), then per expert wi (20), wo (20).
  CHECK(layer.router().weight()(0, 0) == 1.0);
  CHECK(layer.router().weight()(2, 3) == 12.0);
  CHECK(layer.experts().wi(0)(0, 0) == 13.0);
  CHECK(layer.experts().wi(0)(4, 3) == 32.0);
  CHECK(layer.experts().wo(0)(0, 0) == 33.0);
  CHECK(layer.experts().wo(2)(3, 4) == 12.0 + 3 * 40.0);

  const auto capped =
      moe::io::load_switch_transformers<float>(f, "mlp.", {moe::Capacity::fixed(2, moe::Priority::batch_prioritized)});
  CHECK(capped.capacity().kind == moe::Capacity::Kind::absolute);
  CHECK(capped.capacity().absolute == 2);
  CHECK(capped.capacity().priority == moe::Priority::batch_prioritized);
}

TEST_CASE("a missing Switch tensor names the loader, the tensor and the prefix", "[io][loader][switch][errors]") {
  const auto f = switch_file_of(switch_writer("mlp.experts.expert_1.wo.weight"));
  REQUIRE_THROWS_AS(moe::io::load_switch_transformers<float>(f, "mlp."), moe::io::MissingTensorError);
  REQUIRE_THROWS_WITH(moe::io::load_switch_transformers<float>(f, "mlp."),
                      "moe::io: file 'switch.safetensors': tensor 'mlp.experts.expert_1.wo.weight': "
                      "moe::io::load_switch_transformers(): expected this tensor (prefix 'mlp.'), but the file has no "
                      "such name; close names: 'mlp.experts.expert_0.wo.weight', 'mlp.experts.expert_1.wi.weight', "
                      "'mlp.experts.expert_2.wo.weight'");  // one edit each, in name order
  REQUIRE_THROWS_WITH(moe::io::load_switch_transformers<float>(switch_file_of(switch_writer("mlp.router.classifier.weight")), "mlp."),
                      Catch::Contains("tensor 'mlp.router.classifier.weight'"));
  // A wrong prefix fails on the first tensor.
  REQUIRE_THROWS_WITH(moe::io::load_switch_transformers<float>(switch_file_of(switch_writer()), "encoder.block.1.layer.1.mlp."),
                      Catch::Contains("tensor 'encoder.block.1.layer.1.mlp.router.classifier.weight'"));
}

TEST_CASE("a Switch tensor of the wrong shape names the expected and the actual shape", "[io][loader][switch][errors]") {
  const auto wo = switch_file_of(switch_writer("", "mlp.experts.expert_2.wo.weight"));
  REQUIRE_THROWS_AS(moe::io::load_switch_transformers<float>(wo, "mlp."), moe::io::TensorMismatchError);
  REQUIRE_THROWS_WITH(moe::io::load_switch_transformers<float>(wo, "mlp."),
                      "moe::io: file 'switch.safetensors': tensor 'mlp.experts.expert_2.wo.weight': "
                      "moe::io::load_switch_transformers(): expected shape [4, 5], got [4, 6]");
  // wi's d must match the router's d.
  REQUIRE_THROWS_WITH(moe::io::load_switch_transformers<float>(switch_file_of(switch_writer("", "mlp.experts.expert_0.wi.weight")), "mlp."),
                      "moe::io: file 'switch.safetensors': tensor 'mlp.experts.expert_0.wi.weight': "
                      "moe::io::load_switch_transformers(): expected shape [5, 4], got [5, 5]");
  SafetensorsWriter w = switch_writer("mlp.router.classifier.weight");
  std::vector<float> flat(12, 0.5f);
  w.add<float>("mlp.router.classifier.weight", {12}, std::span<const float>(flat));
  REQUIRE_THROWS_WITH(moe::io::load_switch_transformers<float>(switch_file_of(w), "mlp."),
                      Catch::EndsWith("moe::io::load_switch_transformers(): expected a 2-D tensor, got shape [12]"));
}

TEST_CASE("an invalid capacity names the loader", "[io][loader][switch][errors]") {
  const auto f = switch_file_of(switch_writer());
  REQUIRE_THROWS_WITH(moe::io::load_switch_transformers<float>(f, "mlp.", {moe::Capacity::fixed(-1)}),
                      "moe::io::load_switch_transformers(): Capacity::validate(): absolute capacity expected >= 0, got -1");
  REQUIRE_THROWS_WITH(moe::io::load_switch_transformers<float>(f, "mlp.", {moe::Capacity::from_factor(-1.5)}),
                      "moe::io::load_switch_transformers(): Capacity::validate(): factor expected finite and > 0, got -1.5");
}
