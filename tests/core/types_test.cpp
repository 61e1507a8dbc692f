#include <moe/core/error.hpp>
#include <moe/core/types.hpp>

#include <catch2/catch.hpp>

TEST_CASE("require_shape names the function, the expectation and what came", "[core]") {
  moe::RowMatrix<float> m(2, 3);
  REQUIRE_NOTHROW(moe::detail::require_shape(m, 2, 3, "Foo::bar()", "x"));
  REQUIRE_THROWS_WITH(moe::detail::require_shape(m, 4, 3, "Foo::bar()", "x"),
                      "Foo::bar(): x expected shape [4, 3], got [2, 3]");
}
