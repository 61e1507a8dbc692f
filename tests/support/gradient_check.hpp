// The parameter half of every gradient check: each analytic gradient against the central
// finite difference of the loss in the same parameter.
#ifndef MOE_TESTS_SUPPORT_GRADIENT_CHECK_HPP
#define MOE_TESTS_SUPPORT_GRADIENT_CHECK_HPP

#include <moe/core/parameters.hpp>
#include <moe/core/types.hpp>

#include <catch2/catch.hpp>

#include <cstddef>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "support/finite_difference.hpp"
#include "support/random.hpp"

namespace moe::test {

/// Pairs policy's parameters with grads' (a zeros_like copy, or a layer's Gradients) in
/// for_each_parameter order and checks: the same names, as many of each, and every analytic
/// gradient within tol (relative_gap) of the finite difference of loss in that parameter.
template <class Policy, class Grads>
void check_parameter_gradients(Policy& policy, const Grads& grads, const std::function<double()>& loss, double tol) {
  std::vector<std::pair<std::string, RowMatrix<double>>> analytic;
  grads.for_each_parameter([&](const std::string& name, const auto& block) { analytic.emplace_back(name, block); });
  std::size_t i = 0;
  policy.for_each_parameter([&](const std::string& name, auto&& block) {
    INFO("parameter " << i << " " << name);
    REQUIRE(i < analytic.size());
    CHECK(analytic[i].first == name);
    CHECK(relative_gap(analytic[i].second, numeric_gradient(block, loss, 1e-6, weights_changed(policy))) < tol);
    ++i;
  });
  CHECK(i == analytic.size());
}

/// Checks dx and every parameter gradient of expert e of a double bank for L = sum(y * G),
/// x and G N(0, 1) from seeds 11 and 12: expert e's parameters get the gradient, the other
/// experts' stay zero (the finite difference of their parameters is zero).
template <class Bank>
void check_expert_backward(Bank bank, Index e, double tol = 1e-7) {
  const Index n = 5, d = bank.input_dim();
  RowMatrix<double> x(n, d), G(n, bank.output_dim());
  fill(x, 11);
  fill(G, 12);
  const auto loss = [&] {
    RowMatrix<double> hidden(n, bank.hidden_cols()), y(n, bank.output_dim());
    bank.forward(e, x, hidden, y);
    return (y.array() * G.array()).sum();
  };
  RowMatrix<double> hidden(n, bank.hidden_cols()), y(n, bank.output_dim()), dx(n, d), scratch(n, bank.hidden_cols());
  bank.forward(e, x, hidden, y);
  Bank grad = moe::zeros_like(bank);
  bank.backward(e, x, hidden, G, dx, scratch, grad);
  CHECK(relative_gap(dx, numeric_gradient(x, loss)) < tol);
  check_parameter_gradients(bank, grad, loss, tol);
}

}  // namespace moe::test

#endif  // MOE_TESTS_SUPPORT_GRADIENT_CHECK_HPP
