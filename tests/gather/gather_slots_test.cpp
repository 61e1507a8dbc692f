// Step 3 of the dense path: slots are D_b^T X_b per sequence b, and its backward is that
// product's two gradients.
#include <moe/gather/gather_slots.hpp>

#include <catch2/catch.hpp>

#include "support/finite_difference.hpp"
#include "support/random.hpp"

using moe::Index;
using moe::RowMatrix;

namespace {

/// B = 2 sequences of n = 3 tokens, d = 4, E = 2 experts of p = 2 slots.
moe::SlotLayout small_layout() {
  moe::SlotLayout l;
  l.num_sequences = 2;
  l.sequence_length = 3;
  l.num_experts = 2;
  l.slots_per_expert = 2;
  return l;
}

}  // namespace

TEST_CASE("gather_slots: slot i of sequence b is the sum over its tokens t of D(t, i) x(t)", "[gather][soft]") {
  const moe::SlotLayout l = small_layout();
  moe::RoutingResult<double> r;
  r.num_tokens = 6;
  r.num_experts = 2;
  r.scores = moe::test::random_matrix(6, 4, 2);
  const RowMatrix<double> x = moe::test::random_matrix(6, 4, 3);
  RowMatrix<double> slots(l.rows(), 4);
  moe::gather_slots(x, r, l, slots);
  for (Index b = 0; b < 2; ++b)
    for (Index i = 0; i < 4; ++i) {
      RowMatrix<double> want = RowMatrix<double>::Zero(1, 4);
      for (Index t = 0; t < 3; ++t) want += r.scores(b * 3 + t, i) * x.row(b * 3 + t);
      CHECK((slots.row(l.row(b, i)) - want).cwiseAbs().maxCoeff() < 1e-14);
    }
}

TEST_CASE("gather_slots_backward gives dL/dx and dL/dD of L = sum(slots * G)", "[gather][soft][backward]") {
  const moe::SlotLayout l = small_layout();
  moe::RoutingResult<double> r;
  r.num_tokens = 6;
  r.num_experts = 2;
  r.scores = moe::test::random_matrix(6, 4, 4);
  RowMatrix<double> x = moe::test::random_matrix(6, 4, 5);
  const RowMatrix<double> G = moe::test::random_matrix(l.rows(), 4, 6);
  const auto loss = [&] {
    RowMatrix<double> slots(l.rows(), 4);
    moe::gather_slots(x, r, l, slots);
    return (slots.array() * G.array()).sum();
  };
  RowMatrix<double> dx = RowMatrix<double>::Constant(6, 4, 99.0);  // overwritten, not added to
  RowMatrix<double> dscores(6, 4);
  moe::gather_slots_backward(x, r, l, G, dx, dscores);
  CHECK(moe::test::relative_gap(dx, moe::test::numeric_gradient(x, loss)) < 1e-8);
  CHECK(moe::test::relative_gap(dscores, moe::test::numeric_gradient(r.scores, loss)) < 1e-8);
}
