// Step 5 with a shared expert: y = routed sum + g(x) * shared(x), g = sigmoid(x w) or 1, and
// its backward against finite differences.
#include <moe/combine/shared_expert_combiner.hpp>
#include <moe/dispatch/dispatch_plan.hpp>
#include <moe/expert/swiglu_experts.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "support/finite_difference.hpp"
#include "support/gradient_check.hpp"
#include "support/random.hpp"

using moe::Index;
using moe::RowMatrix;

namespace {

using SharedBank = moe::SwiGLUExperts<double>;

struct SharedCase {
  moe::RoutingResult<double> routing;
  moe::DispatchPlan<double> plan;
  RowMatrix<double> x, y_perm;
};

SharedCase shared_case(Index T, Index d) {
  std::mt19937 rng(21);
  SharedCase c;
  c.routing = moe::test::random_routing(rng, T, 3, 2);
  moe::build_plan(c.routing, c.plan);
  c.x = moe::test::random_matrix(T, d, 22);
  c.y_perm = moe::test::random_matrix(c.plan.rows(), d, 23);
  return c;
}

template <class Combiner>
RowMatrix<double> combine(const Combiner& combiner, const SharedCase& c, moe::CombineScratch<double>& scratch) {
  const moe::ForwardContext fwd;
  RowMatrix<double> y(c.x.rows(), c.x.cols());
  combiner.combine(c.x, c.plan, c.y_perm, y, moe::CombineContext<double>{c.routing, fwd, scratch});
  return y;
}

}  // namespace

TEST_CASE("the shared expert adds shared(x), gated by sigmoid(x w) or not, to the routed sum", "[combine][shared]") {
  const Index T = 7, d = 5;
  const SharedCase c = shared_case(T, d);
  const SharedBank shared = moe::test::swiglu<double>(1, d, 3, 24);
  RowMatrix<double> hidden(T, shared.hidden_cols()), s(T, d);
  shared.forward(0, c.x, hidden, s);
  RowMatrix<double> routed = RowMatrix<double>::Zero(T, d);
  for (Index p = 0; p < c.plan.rows(); ++p)
    routed.row(c.plan.token[std::size_t(p)]) += c.plan.gate[std::size_t(p)] * c.y_perm.row(p);
  moe::CombineScratch<double> scratch;

  const moe::SharedExpertCombiner<SharedBank, moe::SharedGate::none> ungated(shared);
  CHECK((combine(ungated, c, scratch) - (routed + s)).cwiseAbs().maxCoeff() < 1e-13);

  moe::SharedExpertCombiner<SharedBank, moe::SharedGate::sigmoid> gated(shared);
  gated.gate_weight() = moe::test::random_matrix(d, 1, 25);
  const RowMatrix<double> y = combine(gated, c, scratch);
  for (Index t = 0; t < T; ++t) {
    const double g = 1.0 / (1.0 + std::exp(-c.x.row(t).dot(gated.gate_weight())));
    CHECK((y.row(t) - (routed.row(t) + g * s.row(t))).cwiseAbs().maxCoeff() < 1e-13);
  }
}

TEST_CASE("the shared expert's backward: dx, the gate weight and the shared bank match finite differences",
          "[combine][shared][backward]") {
  const Index T = 6, d = 4;
  SharedCase c = shared_case(T, d);
  moe::SharedExpertCombiner<SharedBank, moe::SharedGate::sigmoid> combiner(moe::test::swiglu<double>(1, d, 3, 26));
  combiner.gate_weight() = moe::test::random_matrix(d, 1, 27);
  const RowMatrix<double> G = moe::test::random_matrix(T, d, 28);
  const auto loss = [&] {
    moe::CombineScratch<double> s;
    return (combine(combiner, c, s).array() * G.array()).sum();
  };
  moe::CombineScratch<double> scratch;
  (void)combine(combiner, c, scratch);
  const moe::ForwardContext fwd;
  RowMatrix<double> dy_perm(c.plan.rows(), d), dx = RowMatrix<double>::Zero(T, d);
  std::vector<double> dgate(static_cast<std::size_t>(c.plan.rows()));
  auto grad = moe::zeros_like(combiner);
  combiner.backward(moe::CombinerBackward<double>{.x = c.x, .plan = c.plan, .y_perm = c.y_perm, .dy = G,
                                                  .dy_perm = dy_perm, .dgate_slot = dgate.data(), .dx = dx},
                    grad, moe::CombineContext<double>{c.routing, fwd, scratch});
  CHECK(moe::test::relative_gap(dx, moe::test::numeric_gradient(c.x, loss)) < 1e-7);
  CHECK(moe::test::relative_gap(dy_perm, moe::test::numeric_gradient(c.y_perm, loss)) < 1e-7);
  moe::test::check_parameter_gradients(combiner, grad, loss, 1e-7);
  std::size_t parameters = 0;
  combiner.for_each_parameter([&](const std::string&, const auto&) { ++parameters; });
  CHECK(parameters == 4);  // the shared bank's w1, w3, w2 and the gate weight
}

TEST_CASE("the shared expert bank must hold exactly one expert", "[combine][shared][errors]") {
  REQUIRE_THROWS_WITH((moe::SharedExpertCombiner<SharedBank, moe::SharedGate::none>(SharedBank(2, 4, 3))),
                      "SharedExpertCombiner::SharedExpertCombiner(): shared expert bank size expected 1, got 2");
}
