// Linear experts y = x W_e^T: forward as loops, backward against finite differences, and a
// frozen bank: no parameter listed, no gradient, dx still right.
#include <moe/expert/linear_experts.hpp>

#include <catch2/catch.hpp>

#include "support/errors.hpp"
#include "support/gradient_check.hpp"
#include "support/random.hpp"

using moe::Index;
using moe::RowMatrix;

TEST_CASE("LinearExperts: y = x W_e^T, as loops", "[expert][linear]") {
  moe::LinearExperts<double> bank(2, 5, 3);
  moe::test::fill(bank.weights(), 1);
  RowMatrix<double> x(4, 5), y(4, 3), hidden(4, 0);
  moe::test::fill(x, 2);
  bank.forward(1, x, hidden, y);
  for (Index t = 0; t < 4; ++t)
    for (Index o = 0; o < 3; ++o) {
      double want = 0;
      for (Index i = 0; i < 5; ++i) want += x(t, i) * bank.weights()(3 + o, i);
      CHECK(y(t, o) == Approx(want).epsilon(1e-13));
    }
  CHECK(bank.hidden_cols() == 0);
}

TEST_CASE("LinearExperts backward matches finite differences", "[expert][linear][backward]") {
  moe::LinearExperts<double> bank(2, 6, 4);
  moe::test::fill(bank.weights(), 3);
  moe::test::check_expert_backward(bank, 0);
  moe::test::check_expert_backward(bank, 1);
}

TEST_CASE("a frozen LinearExperts lists no parameter and gets no gradient, but passes dx", "[expert][linear][backward]") {
  moe::LinearExperts<double> bank(1, 5, 5);
  moe::test::fill(bank.weights(), 4);
  bank.set_trainable(false);
  Index listed = 0;
  bank.for_each_parameter([&](const std::string&, const auto&) { ++listed; });
  CHECK(listed == 0);
  RowMatrix<double> x(3, 5), dy(3, 5), dx(3, 5), none(3, 0);
  moe::test::fill(x, 5);
  moe::test::fill(dy, 6);
  moe::LinearExperts<double> grad = bank;
  grad.weights().setZero();
  bank.backward(0, x, none, dy, dx, none, grad);
  CHECK(grad.weights().cwiseAbs().maxCoeff() == 0.0);
  const RowMatrix<double> want = dy * bank.weights();  // dx = dy W
  CHECK(moe::test::relative_gap(dx, want) < 1e-14);
}

TEST_CASE("LinearExperts names what it refuses", "[expert][linear][errors]") {
  moe::test::require_invalid([] { moe::LinearExperts<float>(1, 0, 3); },
                             {"LinearExperts::LinearExperts(): d_in expected >= 1, got 0"});
  moe::LinearExperts<float> bank(2, 4, 3);
  moe::test::require_invalid([&] { (void)bank.weight(-1); },
                             {"LinearExperts::weight(): expert index expected in [0, 2), got -1"});
}
