// load_soft_moe on a small file in the "moe." layout: every tensor where the layer reads it,
// and the files it refuses. Its golden cases: tests/conformance/soft_moe_family_test.cpp.
#include <moe/io/soft_moe_loader.hpp>

#include <catch2/catch.hpp>

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "support/safetensors_file.hpp"

using moe::Index;

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

moe::io::SafetensorsFile soft_file_of(const SafetensorsWriter& w) { return moe::test::in_memory(w, "soft.safetensors"); }

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
