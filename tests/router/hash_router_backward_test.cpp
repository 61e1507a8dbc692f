// Hash routing has no parameters and its decision does not depend on x: backward adds nothing.
#include <moe/contracts/concepts.hpp>
#include <moe/core/parameters.hpp>
#include <moe/router/hash_router.hpp>

#include <catch2/catch.hpp>

#include <cstdint>
#include <vector>

TEST_CASE("hash routing's backward leaves dx and dlogits as they came, and it names no parameter",
          "[router][backward][hash]") {
  const auto router = moe::HashRouter<double>::balanced(10, 3, 4, 7);
  const moe::RowMatrix<double> x = moe::RowMatrix<double>::Random(5, 4);
  const std::vector<std::int64_t> ids = {0, 3, 9, 3, 1};
  moe::ForwardContext ctx;
  ctx.token_ids = ids;
  moe::RoutingResult<double> r;
  router.route(x, r, ctx);
  // Routing is the same for any x: the derivative of every gate with respect to x is 0.
  moe::RoutingResult<double> other;
  router.route(moe::RowMatrix<double>::Random(5, 4), other, ctx);
  CHECK(other.expert == r.expert);
  CHECK(other.gate == r.gate);

  moe::RowMatrix<double> dlogits = moe::RowMatrix<double>::Constant(5, 3, 0.5);
  moe::RowMatrix<double> dx = moe::RowMatrix<double>::Constant(5, 4, 2.0);
  const std::vector<double> dgate = {1.0, -2.0, 3.0, 0.25, 5.0};
  auto grad = moe::zeros_like(router);
  router.backward(moe::RouterBackward<double>{.x = x, .routing = r, .dgate = dgate.data(), .dlogits = dlogits, .dx = dx},
                  grad, moe::no_losses);
  CHECK(dx == moe::RowMatrix<double>::Constant(5, 4, 2.0));
  CHECK(dlogits == moe::RowMatrix<double>::Constant(5, 3, 0.5));
  int n = 0;
  router.for_each_parameter([&](const auto&, auto&&) { ++n; });
  CHECK(n == 0);
}
