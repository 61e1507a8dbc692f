// Named parameters: the expert-name pattern and the zeroed copy a gradient accumulator is.
#include <moe/core/parameters.hpp>

#include <catch2/catch.hpp>

#include <string>
#include <vector>

namespace {

/// A policy with two named parameters, as every shipped policy lists them.
struct TwoParameters {
  moe::RowMatrix<double> weight = moe::RowMatrix<double>::Constant(2, 3, 1.5);
  moe::Vector<double> bias = moe::Vector<double>::Constant(4, -2.0);
  template <class F>
  void for_each_parameter(F&& f) {
    f(std::string("w"), weight);
    f(std::string("b"), bias);
  }
};

}  // namespace

TEST_CASE("expand_name puts the expert index where {e} stands", "[core][parameters]") {
  REQUIRE(moe::detail::expand_name("experts.{e}.w1.weight", 12) == "experts.12.w1.weight");
  REQUIRE(moe::detail::expand_name("gate.weight", 3) == "gate.weight");  // no pattern, unchanged
  REQUIRE(moe::detail::expand_name("{e}", 0) == "0");
}

TEST_CASE("zeros_like is a copy of the same shapes with every parameter zero", "[core][parameters]") {
  const TwoParameters p;
  const TwoParameters z = moe::zeros_like(p);
  REQUIRE(z.weight.rows() == 2);
  REQUIRE(z.weight.cols() == 3);
  REQUIRE(z.bias.size() == 4);
  REQUIRE(z.weight.isZero(0.0));
  REQUIRE(z.bias.isZero(0.0));
  REQUIRE(p.weight(1, 2) == 1.5);  // the original is untouched
  TwoParameters q;
  moe::zero_parameters(q);
  REQUIRE(q.weight.isZero(0.0));
  REQUIRE(q.bias.isZero(0.0));
}
