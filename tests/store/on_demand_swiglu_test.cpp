// OnDemandSwiGLU: a shape-only bank whose gradient holds the slices a backward ran through.
#include <moe/core/parameters.hpp>
#include <moe/store/on_demand_swiglu.hpp>

#include <catch2/catch.hpp>

#include <string>
#include <vector>

TEST_CASE("the shape bank reports sizes, refuses to compute and names its gradient slices", "[store][bank]") {
  moe::store::OnDemandSwiGLU<float> bank(8, 16, 24, {"e.{e}.w1", "e.{e}.w3", "e.{e}.w2"});
  CHECK(bank.num_experts() == 8);
  CHECK(bank.input_dim() == 16);
  CHECK(bank.hidden_cols() == 72);
  moe::RowMatrix<float> x(1, 16), h(1, 72), y(1, 16);
  CHECK_THROWS_AS(bank.forward(0, x, h, y), std::logic_error);
  std::vector<std::string> names;
  bank.for_each_parameter([&](const std::string& n, const auto&) { names.push_back(n); });
  CHECK(names.empty());
  auto grad = moe::zeros_like(bank);
  grad.slice(5).down_proj(0).setOnes();
  grad.slice(2);
  CHECK(grad.find_slice(3) == nullptr);
  CHECK(grad.find_slice(5)->down_proj(0).sum() == 16 * 24);
  grad.for_each_parameter([&](const std::string& n, const auto& b) { names.push_back(n + ":" + std::to_string(b.rows())); });
  CHECK(names == std::vector<std::string>{"e.2.w1:24", "e.2.w3:24", "e.2.w2:16", "e.5.w1:24", "e.5.w3:24", "e.5.w2:16"});
  CHECK_THROWS_WITH(grad.slice(8), "OnDemandSwiGLU::slice(): expert index expected in [0, 8), got 8");
}
