// load_multi_head: the golden-variety file (sizes, heads given or inferred, every weight
// against the file's tensor), a small in-memory layer whose forward follows the file's weights,
// and errors that name the loader, the tensor and what was expected. Its golden case:
// tests/conformance/variety_test.cpp.
#include <moe/io/multi_head_loader.hpp>

#include <catch2/catch.hpp>

#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "support/golden.hpp"
#include "support/safetensors_file.hpp"

namespace mh_loader_test {

using moe::Index;
using moe::io::SafetensorsFile;
using moe::io::SafetensorsWriter;

/// What to change in the small layer of mh_writer: d = 6, E = 3, ff = 4, d/h = `head_dim`.
struct Spec {
  std::string skip = "";        ///< a tensor left out
  Index head_dim = 3;           ///< the gate's and the experts' width (h = 6 / head_dim)
  Index head_cols = 6;          ///< head_proj's columns
  Index merge_rows = 6;         ///< merge_proj's rows
  Index expert2_w2_rows = -1;   ///< expert 2's w2 rows (-1: head_dim)
  Index expert0_w1_cols = -1;   ///< expert 0's w1 columns (-1: head_dim)
  bool head_1d = false;         ///< head_proj stored as a 1-D tensor
  bool head_integer = false;    ///< head_proj stored as I64
};

SafetensorsWriter mh_writer(const Spec& s = {}) {
  SafetensorsWriter w;
  const auto put = [&](const std::string& name, std::vector<std::int64_t> shape) {
    if (name == s.skip) return;
    std::int64_t n = 1;
    for (auto v : shape) n *= v;
    std::vector<float> data(static_cast<std::size_t>(n));
    for (std::size_t i = 0; i < data.size(); ++i) data[i] = 0.125f * float((i * 5 + name.size()) % 11) - 0.5f;
    w.add<float>(name, std::move(shape), std::span<const float>(data));
  };
  const Index dh = s.head_dim;
  if (s.head_integer) {
    const std::vector<std::int64_t> ids(36, 1);
    w.add<std::int64_t>("moe.head_proj.weight", {6, 6}, std::span<const std::int64_t>(ids));
  } else if (s.head_1d) {
    put("moe.head_proj.weight", {36});
  } else {
    put("moe.head_proj.weight", {6, s.head_cols});
  }
  put("moe.gate.weight", {3, dh});
  for (int e = 0; e < 3; ++e) {
    const std::string q = "moe.experts." + std::to_string(e) + ".";
    put(q + "w1.weight", {4, (e == 0 && s.expert0_w1_cols >= 0) ? s.expert0_w1_cols : dh});
    put(q + "w3.weight", {4, dh});
    put(q + "w2.weight", {(e == 2 && s.expert2_w2_rows >= 0) ? s.expert2_w2_rows : dh, 4});
  }
  put("moe.merge_proj.weight", {s.merge_rows, 6});
  return w;
}


}  // namespace mh_loader_test

TEMPLATE_TEST_CASE("load_multi_head reads the golden-variety file: sizes, heads, every weight",
                   "[io][loader][multi_head][variety]", float, double) {
  using S = TestType;
  const auto f = moe::io::SafetensorsFile::open(moe::test::golden_variety_dir() / "multi_head.safetensors");
  const std::string p = moe::test::meta(f, "prefix");
  const moe::Index h = std::stol(moe::test::meta(f, "num_heads")), d = std::stol(moe::test::meta(f, "d_model"));
  const moe::Index E = std::stol(moe::test::meta(f, "num_experts")), ff = std::stol(moe::test::meta(f, "d_ff"));
  const moe::Index k = std::stol(moe::test::meta(f, "top_k"));
  for (const moe::Index heads : {h, moe::Index(0)}) {  // given, and inferred from the gate's columns
    INFO("num_heads given as " << heads);
    const auto layer = moe::io::load_multi_head<S>(f, p, {heads, k, true});
    REQUIRE(layer.num_heads() == h);
    REQUIRE(layer.input_dim() == d);
    REQUIRE(layer.head_dim() == std::stol(moe::test::meta(f, "head_dim")));
    REQUIRE(layer.num_experts() == E);
    REQUIRE(layer.inner().experts().d_ff() == ff);
    REQUIRE(layer.inner().router().k() == k);
    REQUIRE(moe::test::equals_file(f, p + "head_proj.weight", layer.head_proj()));
    REQUIRE(moe::test::equals_file(f, p + "merge_proj.weight", layer.merge_proj()));
    REQUIRE(moe::test::equals_file(f, p + "gate.weight", layer.inner().router().weight()));
    for (moe::Index e = 0; e < E; ++e) {
      INFO("expert " << e);
      const std::string q = p + "experts." + std::to_string(e) + ".";
      REQUIRE(moe::test::equals_file(f, q + "w1.weight", layer.inner().experts().gate_proj(e)));
      REQUIRE(moe::test::equals_file(f, q + "w3.weight", layer.inner().experts().up_proj(e)));
      REQUIRE(moe::test::equals_file(f, q + "w2.weight", layer.inner().experts().down_proj(e)));
    }
  }
}

TEST_CASE("load_multi_head: heads from the config or the shapes, parameters under the file's names",
          "[io][loader][multi_head]") {
  using mh_loader_test::mh_writer;
  using moe::test::in_memory;
  const auto two = moe::io::load_multi_head<double>(in_memory(mh_writer()), "moe.", {2, 1, false});
  CHECK(two.num_heads() == 2);
  CHECK(two.head_dim() == 3);
  CHECK(two.inner().router().k() == 1);
  const auto three = moe::io::load_multi_head<float>(in_memory(mh_writer({.head_dim = 2})));  // h inferred: 6 / 2
  CHECK(three.num_heads() == 3);
  CHECK(three.inner().router().k() == 2);
  std::vector<std::string> names;
  three.for_each_parameter([&](const std::string& name, const auto&) { names.push_back(name); });
  CHECK(names == std::vector<std::string>{"head_proj.weight", "gate.weight", "experts.0.w1.weight",
                                          "experts.0.w3.weight", "experts.0.w2.weight", "experts.1.w1.weight",
                                          "experts.1.w3.weight", "experts.1.w2.weight", "experts.2.w1.weight",
                                          "experts.2.w3.weight", "experts.2.w2.weight", "merge_proj.weight"});
  // Under the file's names with the prefix: every parameter is a tensor of the file, same shape.
  const auto file = in_memory(mh_writer({.head_dim = 2}));
  three.for_each_parameter([&](const std::string& name, const auto& block) {
    INFO(name);
    REQUIRE(file.contains("moe." + name));
    CHECK(moe::test::equals_file(file, "moe." + name, block));
  });
}

TEST_CASE("load_multi_head names the loader, the tensor and what was expected", "[io][loader][multi_head][errors]") {
  using mh_loader_test::mh_writer;
  using mh_loader_test::Spec;
  using moe::io::load_multi_head;
  using moe::test::in_memory;
  const auto load = [](const Spec& s, moe::Index h = 0, moe::Index k = 2) {
    return load_multi_head<float>(in_memory(mh_writer(s)), "moe.", {h, k, true});
  };
  for (const char* missing : {"moe.head_proj.weight", "moe.gate.weight", "moe.merge_proj.weight",
                              "moe.experts.0.w1.weight", "moe.experts.1.w3.weight", "moe.experts.2.w2.weight"}) {
    INFO(missing);
    REQUIRE_THROWS_AS(load({.skip = missing}), moe::io::MissingTensorError);
    REQUIRE_THROWS_WITH(load({.skip = missing}),
                        Catch::Contains(missing) && Catch::Contains("moe::io::load_multi_head()"));
  }
  REQUIRE_THROWS_AS(load({.head_cols = 5}), moe::io::TensorMismatchError);
  REQUIRE_THROWS_WITH(load({.head_cols = 5}),
                      Catch::Contains("moe.head_proj.weight") && Catch::Contains("expected shape [6, 6], got [6, 5]"));
  REQUIRE_THROWS_WITH(load({.merge_rows = 4}),
                      Catch::Contains("moe.merge_proj.weight") && Catch::Contains("expected shape [6, 6], got [4, 6]"));
  REQUIRE_THROWS_WITH(load({.head_1d = true}),
                      Catch::Contains("moe.head_proj.weight") && Catch::Contains("expected a 2-D tensor, got shape [36]"));
  REQUIRE_THROWS_WITH(load({.head_integer = true}),
                      Catch::Contains("moe.head_proj.weight") && Catch::Contains("expected a floating dtype"));
  // d not divisible by the heads asked for; the gate not d / h wide for them; a gate width
  // that divides no d when h is inferred.
  REQUIRE_THROWS_AS(load({}, 4), moe::io::TensorMismatchError);
  REQUIRE_THROWS_WITH(load({}, 4), Catch::Contains("moe.head_proj.weight") &&
                                       Catch::Contains("expected d_model (its rows) divisible by num_heads = 4, got 6"));
  REQUIRE_THROWS_WITH(load({}, 3),
                      Catch::Contains("moe.gate.weight") && Catch::Contains("expected shape [3, 2], got [3, 3]"));
  REQUIRE_THROWS_WITH(load({.head_dim = 4}),
                      Catch::Contains("moe.gate.weight") &&
                          Catch::Contains("expected a number of columns that divides d_model = 6") &&
                          Catch::Contains("got 4"));
  // Experts: expert 0 sets ff and must be d / h wide; the others must match it.
  REQUIRE_THROWS_WITH(load({.expert0_w1_cols = 2}),
                      Catch::Contains("moe.experts.0.w1.weight") && Catch::Contains("expected shape [4, 3], got [4, 2]"));
  REQUIRE_THROWS_WITH(load({.expert2_w2_rows = 2}),
                      Catch::Contains("moe.experts.2.w2.weight") && Catch::Contains("expected shape [3, 4], got [2, 4]"));
  // Settings: k beyond E is the router's error under the loader's name; a negative h is refused.
  REQUIRE_THROWS_AS(load({}, 2, 4), std::invalid_argument);
  REQUIRE_THROWS_WITH(load({}, 2, 4), Catch::StartsWith("moe::io::load_multi_head(): ") && Catch::Contains("k"));
  REQUIRE_THROWS_WITH(load({}, -1), Catch::StartsWith("moe::io::load_multi_head(): MultiHeadConfig::num_heads") &&
                                        Catch::Contains("expected >= 0, got -1"));
  // A prefix that names nothing: the first tensor read is missing, with the prefix quoted.
  REQUIRE_THROWS_WITH(load_multi_head<double>(in_memory(mh_writer()), "model.moe."),
                      Catch::Contains("model.moe.head_proj.weight") && Catch::Contains("prefix 'model.moe.'"));
}
