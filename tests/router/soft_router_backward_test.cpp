// SoftRouter's backward on its own: the shapes it refuses. Its gradients through the layer:
// tests/layer/dense_backward_test.cpp (the dense path's backward against finite differences).
#include <moe/contracts/concepts.hpp>
#include <moe/core/parameters.hpp>
#include <moe/router/soft_router.hpp>

#include <catch2/catch.hpp>

#include "support/random.hpp"

using moe::Index;
using moe::RowMatrix;
using moe::test::random_matrix;

TEST_CASE("SoftRouter::backward refuses shapes that do not match", "[router][soft][backward][errors]") {
  const moe::SoftRouter<double> router(random_matrix(3, 4, 60), 2);
  auto grad = moe::zeros_like(router);
  const RowMatrix<double> x = random_matrix(6, 3, 61);
  moe::RoutingResult<double> r;
  router.route(x, r);
  RowMatrix<double> ds = RowMatrix<double>::Zero(6, 4), dl = RowMatrix<double>::Zero(6, 4),
                    dx = RowMatrix<double>::Zero(6, 3), dl_bad = RowMatrix<double>::Zero(6, 3);
  const auto call = [&](Index sequence_length, moe::MatrixRef<double> dlogits) {
    moe::ForwardContext ctx;
    ctx.sequence_length = sequence_length;
    router.backward(moe::RouterBackward<double>{.x = x, .routing = r, .dscores = ds, .dlogits = dlogits, .dx = dx,
                                                .context = {ctx}},
                    grad, moe::no_losses);
  };
  REQUIRE_THROWS_WITH(call(4, dl),
                      "SoftRouter::backward(): ctx.sequence_length expected 0 or a divisor of the number of tokens 6, "
                      "got 4");
  REQUIRE_THROWS_WITH(call(3, dl_bad), "SoftRouter::backward(): dlogits expected shape [6, 4], got [6, 3]");
}
