// The loss list of backward: weighted terms, kept in order, and what counts as a routing loss.
#include <moe/loss/load_balancing_loss.hpp>
#include <moe/loss/loss_list.hpp>
#include <moe/loss/z_loss.hpp>

#include <catch2/catch.hpp>

#include <string>
#include <type_traits>
#include <vector>

TEST_CASE("losses(weighted(...)...) keeps each loss and weight, visited in order", "[loss][list]") {
  const auto list = moe::losses(moe::weighted(moe::LoadBalancingLoss{moe::LoadBalancingLoss::Normalization::unit}, 0.3),
                                moe::weighted(moe::RouterZLoss{}, 0.2));
  STATIC_REQUIRE(decltype(list)::size() == 2);
  std::vector<std::string> seen;
  std::vector<double> weights;
  list.for_each([&](const auto& term) {
    using Loss = typename std::decay_t<decltype(term)>::loss_type;
    seen.push_back(std::is_same_v<Loss, moe::RouterZLoss> ? "z" : "aux");
    weights.push_back(term.weight);
  });
  CHECK(seen == std::vector<std::string>{"aux", "z"});
  CHECK(weights == std::vector<double>{0.3, 0.2});
  CHECK(std::get<0>(list.terms).loss.normalization == moe::LoadBalancingLoss::Normalization::unit);
  STATIC_REQUIRE(moe::losses().size() == 0);
}

TEST_CASE("loss list traits: weighted terms, lists and NoLosses, and RoutingLoss holds for the shipped losses",
          "[loss][list]") {
  STATIC_REQUIRE(moe::detail::is_weighted_loss<moe::WeightedLoss<moe::RouterZLoss, float>>);
  STATIC_REQUIRE_FALSE(moe::detail::is_weighted_loss<moe::RouterZLoss>);
  STATIC_REQUIRE(moe::detail::is_loss_list<decltype(moe::losses(moe::weighted(moe::RouterZLoss{}, 1.0f)))>);
  STATIC_REQUIRE(moe::detail::is_loss_list<moe::NoLosses>);
  STATIC_REQUIRE_FALSE(moe::detail::is_loss_list<moe::RouterZLoss>);
  STATIC_REQUIRE(moe::RoutingLoss<moe::RouterZLoss, float>);
  STATIC_REQUIRE(moe::RoutingLoss<moe::LoadBalancingLoss, double>);
  STATIC_REQUIRE_FALSE(moe::RoutingLoss<int, double>);
  STATIC_REQUIRE(std::is_same_v<decltype(moe::weighted(moe::RouterZLoss{}, 0.5f))::scalar_type, float>);
}
