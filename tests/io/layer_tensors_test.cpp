// What every loader shares: tensors under a layer prefix, checked (present, floating, shape)
// with messages naming the loader, and the per-expert recipe that checks before it allocates.
#include <moe/io/layer_tensors.hpp>

#include <catch2/catch.hpp>

#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "support/safetensors_file.hpp"

using moe::Index;
using moe::io::detail::ExpertTensor;
using moe::io::detail::LayerTensors;

namespace {

/// "L.w" [2, 3] holding 1..6, "L.e0.v" and "L.e1.v" [2] holding {10e, 10e + 1}, "L.ids" int64.
moe::io::SafetensorsFile layer_file() {
  moe::io::SafetensorsWriter w;
  const std::vector<float> m = {1, 2, 3, 4, 5, 6};
  w.add<float>("L.w", {2, 3}, std::span<const float>(m));
  for (int e = 0; e < 2; ++e) {
    const std::vector<double> v = {10.0 * e, 10.0 * e + 1};
    w.add<double>("L.e" + std::to_string(e) + ".v", {2}, std::span<const double>(v));
  }
  const std::vector<std::int64_t> ids = {0, 1};
  w.add<std::int64_t>("L.ids", {2}, std::span<const std::int64_t>(ids));
  return moe::test::in_memory(w, "l.safetensors");
}

}  // namespace

TEST_CASE("shape_string and expert_name", "[io][layer_tensors]") {
  CHECK(moe::io::detail::shape_string({}) == "[]");
  CHECK(moe::io::detail::shape_string({4, 2, 1}) == "[4, 2, 1]");
  CHECK(moe::io::detail::expert_name("experts.{e}.w1", 7) == "experts.7.w1");
  CHECK(moe::io::detail::expert_name("gate", 7) == "gate");
}

TEST_CASE("LayerTensors reads under its prefix and names the loader in every refusal", "[io][layer_tensors]") {
  const auto f = layer_file();
  const LayerTensors t(f, "L.", "moe::io::load_x");
  CHECK(t.name("w") == "L.w");
  CHECK(t.shape("w", 2) == std::vector<std::int64_t>{2, 3});
  CHECK(t.read<double>("w", {2, 3}) == std::vector<double>{1, 2, 3, 4, 5, 6});
  moe::RowMatrix<float> dst(3, 2);  // any block with as many elements, filled row-major
  t.read_into<float>("w", {2, 3}, dst);
  CHECK(dst(0, 1) == 2.0f);
  CHECK(dst(2, 0) == 5.0f);
  REQUIRE_THROWS_WITH(t.check("w", {3, 2}), "moe::io: file 'l.safetensors': tensor 'L.w': moe::io::load_x(): expected "
                                            "shape [3, 2], got [2, 3]");
  REQUIRE_THROWS_WITH(t.shape("w", 1), "moe::io: file 'l.safetensors': tensor 'L.w': moe::io::load_x(): expected a "
                                       "1-D tensor, got shape [2, 3]");
  REQUIRE_THROWS_WITH(t.info("ids"), "moe::io: file 'l.safetensors': tensor 'L.ids': moe::io::load_x(): expected a "
                                     "floating dtype (F32, F64, F16, BF16), got I64");
  REQUIRE_THROWS_AS(t.info("x"), moe::io::MissingTensorError);
  REQUIRE_THROWS_WITH(t.info("x"), Catch::StartsWith("moe::io: file 'l.safetensors': tensor 'L.x': moe::io::load_x(): "
                                                     "expected this tensor (prefix 'L.'), but the file has no such name"));
}

TEST_CASE("with_loader_name prefixes a constructor's invalid_argument with the loader", "[io][layer_tensors]") {
  CHECK(moe::io::detail::with_loader_name("load_x", [] { return 3; }) == 3);
  REQUIRE_THROWS_WITH(moe::io::detail::with_loader_name("load_x", []() -> int { throw std::invalid_argument("k bad"); }),
                      "load_x(): k bad");
}

TEST_CASE("read_experts checks every expert's tensors before it builds the bank", "[io][layer_tensors]") {
  const auto f = layer_file();
  const LayerTensors t(f, "L.", "moe::io::load_x");
  const std::vector<ExpertTensor> tensors = {{"e{e}.v", {2}}};
  int made = 0;
  const auto make = [&] {
    ++made;
    return moe::RowMatrix<double>(2, 2);
  };
  const auto row = [](moe::RowMatrix<double>& bank, Index e, std::size_t) { return bank.row(e); };
  const moe::RowMatrix<double> bank = moe::io::detail::read_experts<double>(t, 2, tensors, make, row);
  CHECK(made == 1);
  CHECK(bank(0, 1) == 1.0);
  CHECK(bank(1, 0) == 10.0);
  // Three experts claimed, two present: refused naming the missing one, the bank never built.
  REQUIRE_THROWS_WITH(moe::io::detail::read_experts<double>(t, 3, tensors, make, row),
                      Catch::Contains("tensor 'L.e2.v'"));
  CHECK(made == 1);
}
