// Gradient utilities on a layer's whole gradient set: zero_grad, grad_norm and clip_grad_norm
// (PyTorch's clip_grad_norm_: one factor max_norm / (norm + eps) when the norm exceeds max_norm).
#include <moe/train/gradient_utils.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <cstddef>

#include "support/tiny_layer.hpp"

TEST_CASE("zero_grad, grad_norm and clip_grad_norm act on the whole gradient set", "[train][clip]") {
  moe::test::TinyLayer layer = moe::test::tiny_layer();
  auto grads = layer.make_gradients();
  moe::test::random_gradients(grads, 7);
  double sq = 0.0;
  for (const auto& t : moe::test::snapshot(grads))
    for (double v : t) sq += v * v;
  const double norm = std::sqrt(sq);
  REQUIRE(moe::grad_norm(grads) == Approx(norm).epsilon(1e-14));

  SECTION("clipping scales every tensor by one factor, to max_norm exactly with eps = 0") {
    const auto before = moe::test::snapshot(grads);
    const double returned = moe::clip_grad_norm(grads, norm / 3.0, 0.0);
    REQUIRE(returned == Approx(norm).epsilon(1e-14));
    REQUIRE(moe::grad_norm(grads) == Approx(norm / 3.0).epsilon(1e-14));
    const auto after = moe::test::snapshot(grads);
    for (std::size_t i = 0; i < before.size(); ++i)
      for (std::size_t j = 0; j < before[i].size(); ++j) REQUIRE(after[i][j] == Approx(before[i][j] / 3.0).epsilon(1e-14));
  }
  SECTION("PyTorch's eps: the factor is max_norm / (norm + 1e-6)") {
    const double max_norm = 0.5;
    moe::clip_grad_norm(grads, max_norm);
    REQUIRE(moe::grad_norm(grads) == Approx(max_norm * norm / (norm + 1e-6)).epsilon(1e-14));
  }
  SECTION("a norm below max_norm leaves the gradients untouched") {
    const auto before = moe::test::snapshot(grads);
    REQUIRE(moe::clip_grad_norm(grads, 2.0 * norm) == Approx(norm).epsilon(1e-14));
    REQUIRE(moe::test::snapshot(grads) == before);
  }
  SECTION("zero_grad") {
    moe::zero_grad(grads);
    REQUIRE(moe::grad_norm(grads) == 0.0);
    REQUIRE(moe::clip_grad_norm(grads, 1.0) == 0.0);
  }
  SECTION("max_norm must be finite and non-negative") {
    REQUIRE_THROWS_WITH(moe::clip_grad_norm(grads, -1.0), "clip_grad_norm(): max_norm expected finite and >= 0, got -1");
  }
}
