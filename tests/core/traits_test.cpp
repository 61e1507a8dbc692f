// Capability traits: a policy's nested constant or type when it declares one, the default otherwise.
#include <moe/core/traits.hpp>

#include <catch2/catch.hpp>

#include <type_traits>

namespace {

struct Minimal {
  using scalar_type = float;
};
struct Dense {
  using scalar_type = double;
  static constexpr bool is_dense = true;
  static constexpr bool needs_token_ids = true;
  static constexpr bool needs_rng = true;
  static constexpr bool token_choice = false;
  static constexpr bool couples_gates = true;
  static constexpr bool needs_context = true;
  using weight_type = unsigned short;
  template <class L>
  static constexpr bool accepts_loss = std::is_same_v<L, int>;
};

}  // namespace

TEST_CASE("router_traits and expert_traits default what a policy does not declare", "[core][traits]") {
  using R = moe::router_traits<Minimal>;
  STATIC_REQUIRE_FALSE(R::is_dense);
  STATIC_REQUIRE_FALSE(R::needs_token_ids);
  STATIC_REQUIRE_FALSE(R::needs_rng);
  STATIC_REQUIRE(R::token_choice);
  STATIC_REQUIRE_FALSE(R::couples_gates);
  STATIC_REQUIRE_FALSE(R::accepts_loss<int>);
  STATIC_REQUIRE_FALSE(moe::expert_traits<Minimal>::needs_context);
  STATIC_REQUIRE(std::is_same_v<moe::expert_traits<Minimal>::weight_type, float>);
}

TEST_CASE("router_traits and expert_traits read what a policy declares", "[core][traits]") {
  using R = moe::router_traits<Dense>;
  STATIC_REQUIRE(R::is_dense);
  STATIC_REQUIRE(R::needs_token_ids);
  STATIC_REQUIRE(R::needs_rng);
  STATIC_REQUIRE_FALSE(R::token_choice);
  STATIC_REQUIRE(R::couples_gates);
  STATIC_REQUIRE(R::accepts_loss<int>);
  STATIC_REQUIRE_FALSE(R::accepts_loss<long>);
  STATIC_REQUIRE(moe::expert_traits<Dense>::needs_context);
  STATIC_REQUIRE(std::is_same_v<moe::expert_traits<Dense>::weight_type, unsigned short>);
}
