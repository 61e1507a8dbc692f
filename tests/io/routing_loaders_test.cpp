// The routing loaders (noisy top-k, expert choice, hash routing) on a small file in the
// "moe." layout: sizes and weights in place, and errors that name the loader and the tensor.
// Their golden cases: tests/conformance/routing_families_test.cpp.
#include <moe/io/routing_loaders.hpp>

#include <catch2/catch.hpp>

#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "support/safetensors_file.hpp"

namespace {

using moe::Index;
using moe::test::in_memory;

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

}  // namespace

TEST_CASE("the routing loaders read sizes and weights from the moe. layout", "[io][loader][routing]") {
  const auto f = in_memory(moe_writer());
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
  REQUIRE_THROWS_AS(moe::io::load_noisy_top_k<float>(in_memory(moe_writer("moe.noise.weight"))),
                    moe::io::MissingTensorError);
  REQUIRE_THROWS_WITH(moe::io::load_noisy_top_k<float>(in_memory(moe_writer("moe.noise.weight"))),
                      "moe::io: file 'layer.safetensors': tensor 'moe.noise.weight': moe::io::load_noisy_top_k(): "
                      "expected this tensor (prefix 'moe.'), but the file has no such name; close names: "
                      "'moe.gate.weight'");  // 4 edits, within max(2, 16 / 4)
  REQUIRE_THROWS_WITH(moe::io::load_noisy_top_k<float>(in_memory(moe_writer()), "moe.", {4}),
                      "moe::io::load_noisy_top_k(): NoisyTopKRouter::NoisyTopKRouter(): k expected in [1, "
                      "num_experts = 3], got 4");
  REQUIRE_THROWS_WITH(moe::io::load_expert_choice<float>(in_memory(moe_writer()), "moe.", {0.0}),
                      "moe::io::load_expert_choice(): ExpertChoiceRouter::ExpertChoiceRouter(): capacity_factor "
                      "expected finite and > 0, got 0");
  REQUIRE_THROWS_WITH(moe::io::load_expert_choice<float>(in_memory(moe_writer("moe.experts.1.w2.weight"))),
                      Catch::Contains("tensor 'moe.experts.1.w2.weight'"));

  REQUIRE_THROWS_AS(moe::io::load_hash<float>(in_memory(moe_writer("moe.hash_table"))), moe::io::MissingTensorError);
  REQUIRE_THROWS_WITH(moe::io::load_hash<float>(in_memory(moe_writer("moe.hash_table"))),
                      "moe::io: file 'layer.safetensors': tensor 'moe.hash_table': moe::io::load_hash(): expected "
                      "this tensor (prefix 'moe.'), but the file has no such name");  // no name within 3 edits or ending so
  REQUIRE_THROWS_AS(moe::io::load_hash<float>(in_memory(moe_writer("", {0, 3, 1}))), moe::io::TensorMismatchError);
  REQUIRE_THROWS_WITH(moe::io::load_hash<float>(in_memory(moe_writer("", {0, 3, 1}))),
                      "moe::io: file 'layer.safetensors': tensor 'moe.hash_table': moe::io::load_hash(): expected "
                      "entries in [0, 3), got 3 at index 1");
  REQUIRE_THROWS_WITH(moe::io::load_hash<float>(in_memory(moe_writer("moe.experts.0.w1.weight"))),
                      "moe::io: file 'layer.safetensors': tensor 'moe.experts.0.w1.weight': moe::io::load_hash(): "
                      "expected at least one expert under this name (prefix 'moe.'), but the file has none; close "
                      "names: 'moe.experts.0.w2.weight', 'moe.experts.0.w3.weight', 'moe.experts.1.w1.weight'");
  moe::io::SafetensorsWriter w = moe_writer("moe.hash_table");
  const std::vector<float> table = {0.0f, 1.0f};
  w.add<float>("moe.hash_table", {2}, std::span<const float>(table));
  REQUIRE_THROWS_WITH(moe::io::load_hash<float>(in_memory(w)),
                      "moe::io: file 'layer.safetensors': tensor 'moe.hash_table': moe::io::load_hash(): expected an "
                      "integer dtype (I64, I32, I16, I8, U8), got F32");
  moe::io::SafetensorsWriter w2 = moe_writer("moe.hash_table");
  const std::vector<std::int64_t> square = {0, 1, 2, 0};
  w2.add<std::int64_t>("moe.hash_table", {2, 2}, std::span<const std::int64_t>(square));
  REQUIRE_THROWS_WITH(moe::io::load_hash<float>(in_memory(w2)),
                      "moe::io: file 'layer.safetensors': tensor 'moe.hash_table': moe::io::load_hash(): expected a "
                      "non-empty 1-D tensor, got shape [2, 2]");
}
