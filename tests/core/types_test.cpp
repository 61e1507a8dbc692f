// The basic types: row-major tokens, the Scalar concept and ensure_shape's no-reallocation rule.
#include <moe/core/types.hpp>

#include <catch2/catch.hpp>

#include <type_traits>

TEST_CASE("tokens are rows of a row-major matrix, Scalar is float or double", "[core]") {
  STATIC_REQUIRE(moe::RowMatrix<float>::IsRowMajor);
  STATIC_REQUIRE(std::is_same_v<moe::Index, Eigen::Index>);
  STATIC_REQUIRE(moe::Scalar<float>);
  STATIC_REQUIRE(moe::Scalar<double>);
  STATIC_REQUIRE_FALSE(moe::Scalar<int>);
  STATIC_REQUIRE_FALSE(moe::Scalar<long double>);
  moe::RowMatrix<double> m(2, 3);
  m << 1, 2, 3, 4, 5, 6;
  REQUIRE(m.data()[1] == 2);  // row-major: (0, 1) follows (0, 0)
  REQUIRE(m.data()[3] == 4);
}

TEST_CASE("ensure_shape keeps the buffer when the shape is unchanged and resizes otherwise", "[core]") {
  moe::RowMatrix<float> m(4, 5);
  m.setConstant(7.0f);
  const float* before = m.data();
  moe::detail::ensure_shape(m, 4, 5);
  REQUIRE(m.data() == before);
  REQUIRE(m(3, 4) == 7.0f);  // contents untouched
  moe::detail::ensure_shape(m, 2, 3);
  REQUIRE(m.rows() == 2);
  REQUIRE(m.cols() == 3);
  moe::Vector<double> v;
  moe::detail::ensure_shape(v, 6, 1);
  REQUIRE(v.size() == 6);
}
