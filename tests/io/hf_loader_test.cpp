// Loaders refuse checkpoints that do not hold the layer they are asked for, naming the
// loader, the tensor, what was expected and what the file holds.
#include <moe/io/hf_loader.hpp>

#include <catch2/catch.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "support/safetensors_file.hpp"

namespace {

using moe::io::SafetensorsFile;
using moe::io::SafetensorsWriter;

void add_f32(SafetensorsWriter& w, const std::string& name, std::vector<std::int64_t> shape) {
  std::int64_t n = 1;
  for (auto s : shape) n *= s;
  std::vector<float> data(static_cast<size_t>(n), 0.01f);
  w.add<float>(name, std::move(shape), std::span<const float>(data));
}

/// A well-formed Mixtral layer: E = 4, d = 8, ff = 6, under "block_sparse_moe.".
SafetensorsWriter mixtral_writer(const std::string& skip = "", const std::string& reshape = "") {
  SafetensorsWriter w;
  const std::string p = "block_sparse_moe.";
  const auto put = [&](const std::string& name, std::vector<std::int64_t> shape) {
    if (name == skip) return;
    if (name == reshape) shape.back() += 1;
    add_f32(w, name, std::move(shape));
  };
  put(p + "gate.weight", {4, 8});
  for (int e = 0; e < 4; ++e) {
    const std::string q = p + "experts." + std::to_string(e) + ".";
    put(q + "w1.weight", {6, 8});
    put(q + "w3.weight", {6, 8});
    put(q + "w2.weight", {8, 6});
  }
  return w;
}

}  // namespace

TEST_CASE("a well-formed Mixtral layer loads with sizes read from its tensors", "[io][loader]") {
  const auto f = moe::test::in_memory(mixtral_writer());
  const auto layer = moe::io::load_mixtral<float>(f, "block_sparse_moe.", {2});
  REQUIRE(layer.num_experts() == 4);
  REQUIRE(layer.input_dim() == 8);
  REQUIRE(layer.experts().d_ff() == 6);
  REQUIRE(layer.router().k() == 2);
  REQUIRE(layer.experts().down_proj(3)(7, 5) == 0.01f);
}

TEST_CASE("a missing tensor names the loader, the tensor and the prefix", "[io][loader][errors]") {
  const auto f = moe::test::in_memory(mixtral_writer("block_sparse_moe.experts.2.w3.weight"));
  REQUIRE_THROWS_AS(moe::io::load_mixtral<float>(f, "block_sparse_moe.", {2}), moe::io::MissingTensorError);
  REQUIRE_THROWS_WITH(moe::io::load_mixtral<float>(f, "block_sparse_moe.", {2}),
                      "moe::io: file 'layer.safetensors': tensor 'block_sparse_moe.experts.2.w3.weight': "
                      "moe::io::load_mixtral(): expected this tensor (prefix 'block_sparse_moe.'), but the file has no "
                      "such name; close names: 'block_sparse_moe.experts.0.w3.weight', "
                      "'block_sparse_moe.experts.1.w3.weight', 'block_sparse_moe.experts.2.w1.weight'");
  // A wrong prefix fails on the first tensor; the name under the file's own prefix is suggested.
  REQUIRE_THROWS_WITH(moe::io::load_mixtral<float>(moe::test::in_memory(mixtral_writer()), "model.layers.0.block_sparse_moe.", {2}),
                      "moe::io: file 'layer.safetensors': tensor 'model.layers.0.block_sparse_moe.gate.weight': "
                      "moe::io::load_mixtral(): expected this tensor (prefix 'model.layers.0.block_sparse_moe.'), but "
                      "the file has no such name; close names: 'block_sparse_moe.gate.weight'");
}

TEST_CASE("missing-tensor suggestions: typos first, then names ending alike", "[io][loader][errors]") {
  // Typos (within max(2, length / 4) edits) come first, nearest first; then names sharing at
  // least two trailing components ("gate.weight"), nearest in edits first; "weight" alone is
  // too generic to suggest anything, a specific last component ("phi") is enough.
  SafetensorsWriter w;
  for (const char* n : {"model.layers.0.mlp.gate.weight", "model.layers.1.mlp.gate.weight",
                        "model.layers.1.mlp.experts.0.w1.weight", "model.layers.1.mlp.gate.wieght", "phi"})
    add_f32(w, n, {1});
  const auto f = moe::test::in_memory(w);
  CHECK(f.close_names("model.layers.1.block_sparse_moe.gate.weight") ==
        std::vector<std::string>{"model.layers.1.mlp.gate.weight", "model.layers.0.mlp.gate.weight"});
  CHECK(f.close_names("model.layers.1.mlp.gate.weight.") ==
        std::vector<std::string>{"model.layers.1.mlp.gate.weight", "model.layers.0.mlp.gate.weight",
                                 "model.layers.1.mlp.gate.wieght"});
  CHECK(f.close_names("x.y.other.weight").empty());
  CHECK(f.close_names("soft_moe.phi") == std::vector<std::string>{"phi"});
  REQUIRE_THROWS_WITH(moe::io::load_olmoe<float>(f, "model.layers.1.block_sparse_moe.", {1}),
                      Catch::Contains("close names: 'model.layers.1.mlp.gate.weight', 'model.layers.0.mlp.gate.weight'"));
}

TEST_CASE("a tensor of the wrong shape names the expected and the actual shape", "[io][loader][errors]") {
  const auto f = moe::test::in_memory(mixtral_writer("", "block_sparse_moe.experts.1.w2.weight"));
  REQUIRE_THROWS_AS(moe::io::load_mixtral<float>(f, "block_sparse_moe.", {2}), moe::io::TensorMismatchError);
  REQUIRE_THROWS_WITH(moe::io::load_mixtral<float>(f, "block_sparse_moe.", {2}),
                      "moe::io: file 'layer.safetensors': tensor 'block_sparse_moe.experts.1.w2.weight': "
                      "moe::io::load_mixtral(): expected shape [8, 6], got [8, 7]");
}

TEST_CASE("a tensor of a non-floating dtype is refused", "[io][loader][errors]") {
  SafetensorsWriter w = mixtral_writer("block_sparse_moe.gate.weight");
  std::vector<std::int64_t> ids(32, 1);
  w.add<std::int64_t>("block_sparse_moe.gate.weight", {4, 8}, std::span<const std::int64_t>(ids));
  REQUIRE_THROWS_WITH(moe::io::load_mixtral<float>(moe::test::in_memory(w), "block_sparse_moe.", {2}),
                      Catch::Contains("moe::io::load_mixtral(): expected a floating dtype (F32, F64, F16, BF16), got I64"));
}

TEST_CASE("router settings the checkpoint cannot satisfy name the loader", "[io][loader][errors]") {
  const auto f = moe::test::in_memory(mixtral_writer());
  REQUIRE_THROWS_WITH(moe::io::load_mixtral<float>(f, "block_sparse_moe.", {5}),
                      "moe::io::load_mixtral(): TopKRouter::TopKRouter(): k expected in [1, num_experts = 4], got 5");
  REQUIRE_THROWS_AS(moe::io::load_mixtral<float>(f, "block_sparse_moe.", {0}), std::invalid_argument);
}

TEST_CASE("DeepSeek-V3 group settings are checked against the checkpoint's expert count", "[io][loader][errors]") {
  SafetensorsWriter w;
  add_f32(w, "mlp.gate.weight", {6, 4});
  add_f32(w, "mlp.gate.e_score_correction_bias", {6});
  for (int e = 0; e < 6; ++e)
    for (const char* n : {"gate_proj", "up_proj"}) add_f32(w, "mlp.experts." + std::to_string(e) + "." + n + ".weight", {3, 4});
  for (int e = 0; e < 6; ++e) add_f32(w, "mlp.experts." + std::to_string(e) + ".down_proj.weight", {4, 3});
  for (const char* n : {"gate_proj", "up_proj"}) add_f32(w, std::string("mlp.shared_experts.") + n + ".weight", {5, 4});
  add_f32(w, "mlp.shared_experts.down_proj.weight", {4, 5});
  const auto f = moe::test::in_memory(w);
  moe::io::DeepSeekV3Config c;
  c.top_k = 2;
  c.n_group = 3;
  c.topk_group = 2;
  REQUIRE_NOTHROW(moe::io::load_deepseek_v3<double>(f, "mlp.", c));
  c.n_group = 4;
  REQUIRE_THROWS_WITH(moe::io::load_deepseek_v3<double>(f, "mlp.", c),
                      "moe::io::load_deepseek_v3(): SigmoidGroupLimited::validate(): n_group dividing num_experts "
                      "expected a divisor of 6, got 4");
}
