// The argument checks every API boundary uses, and the message format they promise.
#include <moe/core/error.hpp>
#include <moe/core/types.hpp>

#include <catch2/catch.hpp>

#include <stdexcept>

TEST_CASE("require_shape names the function, the expectation and what came", "[core]") {
  moe::RowMatrix<float> m(2, 3);
  REQUIRE_NOTHROW(moe::detail::require_shape(m, 2, 3, "Foo::bar()", "x"));
  REQUIRE_THROWS_WITH(moe::detail::require_shape(m, 4, 3, "Foo::bar()", "x"),
                      "Foo::bar(): x expected shape [4, 3], got [2, 3]");
}

TEST_CASE("require and throw_invalid read \"where: what expected E, got A\"", "[core]") {
  REQUIRE(moe::detail::concat("a", 1, ' ', 2.5) == "a1 2.5");
  REQUIRE_NOTHROW(moe::detail::require(true, "Foo::bar()", "k", ">= 1", 0));
  REQUIRE_THROWS_AS(moe::detail::require(false, "Foo::bar()", "k", ">= 1", 0), std::invalid_argument);
  REQUIRE_THROWS_WITH(moe::detail::require(false, "Foo::bar()", "k", ">= 1", 0), "Foo::bar(): k expected >= 1, got 0");
  REQUIRE_THROWS_WITH(moe::detail::throw_invalid("f()", "name", "\"a\"", "b"), "f(): name expected \"a\", got b");
}
