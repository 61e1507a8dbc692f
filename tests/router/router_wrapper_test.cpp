// The forwarding base of router wrappers: sizes, parameters and traits of the wrapped router.
#include <moe/router/router_wrapper.hpp>

#include <catch2/catch.hpp>

#include <string>
#include <type_traits>
#include <vector>

using moe::Index;

namespace {

struct WrappedRouter {
  using scalar_type = double;
  static constexpr bool needs_token_ids = true;
  static constexpr bool token_choice = false;
  static constexpr bool couples_gates = true;
  template <class L>
  static constexpr bool accepts_loss = std::is_same_v<L, int>;
  moe::RowMatrix<double> weight = moe::RowMatrix<double>::Constant(3, 2, 1.0);
  Index num_experts() const { return 3; }
  Index input_dim() const { return 2; }
  template <class F>
  void for_each_parameter(F&& f) {
    f(std::string("gate.weight"), weight);
  }
  template <class F>
  void for_each_parameter(F&& f) const {
    f(std::string("gate.weight"), weight);
  }
};

/// A wrapper that changes nothing: everything it has comes from RouterWrapper.
struct PassThrough : moe::RouterWrapper<WrappedRouter> {
  using moe::RouterWrapper<WrappedRouter>::RouterWrapper;
};

}  // namespace

TEST_CASE("RouterWrapper forwards the wrapped router's traits, sizes and parameters", "[router][wrapper]") {
  STATIC_REQUIRE(std::is_same_v<PassThrough::scalar_type, double>);
  STATIC_REQUIRE(std::is_same_v<PassThrough::router_type, WrappedRouter>);
  using T = moe::router_traits<PassThrough>;
  STATIC_REQUIRE_FALSE(T::is_dense);
  STATIC_REQUIRE(T::needs_token_ids);
  STATIC_REQUIRE_FALSE(T::token_choice);
  STATIC_REQUIRE(T::couples_gates);
  STATIC_REQUIRE(T::accepts_loss<int>);
  STATIC_REQUIRE_FALSE(T::accepts_loss<long>);
  PassThrough w{WrappedRouter{}};
  CHECK(w.num_experts() == 3);
  CHECK(w.input_dim() == 2);
  w.router().weight(2, 1) = 4.0;  // router() is the wrapped router itself
  std::vector<std::string> names;
  w.for_each_parameter([&](const std::string& name, auto&& block) {
    names.push_back(name);
    block(0, 0) = 7.0;  // a writable view of the wrapped router's weight
  });
  CHECK(names == std::vector<std::string>{"gate.weight"});
  const PassThrough& cw = w;
  double seen = 0;
  cw.for_each_parameter([&](const std::string&, const auto& block) { seen = block(0, 0) + block(2, 1); });
  CHECK(seen == 11.0);
}
