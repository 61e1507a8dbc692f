// GRU experts: forward against torch.nn.GRU's equations written as loops, one sequence at a
// time; backpropagation through time against central finite differences (double) for x and
// every tensor, on several shapes (H != d, several sequences, sequences of one token, the
// whole batch as one sequence); and the slabs it refuses (broken or partial sequences, the
// dense path).
#include <moe/core/traits.hpp>
#include <moe/expert/gru_experts.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <cstddef>
#include <string>
#include <vector>

#include "support/errors.hpp"
#include "support/finite_difference.hpp"
#include "support/gradient_check.hpp"
#include "support/random.hpp"

namespace gru_test {

using moe::Index;
using moe::RowMatrix;

/// A bank with N(0, 0.5^2) weights and biases (seeds seed .. seed + 3).
template <class S>
moe::GRUExperts<S> random_bank(Index E, Index d, Index H, unsigned seed) {
  moe::GRUExperts<S> bank(E, d, H);
  moe::test::fill(bank.weights_ih(), seed, 0.5);
  moe::test::fill(bank.weights_hh(), seed + 1, 0.5);
  moe::test::fill(bank.biases_ih(), seed + 2, 0.5);
  moe::test::fill(bank.biases_hh(), seed + 3, 0.5);
  return bank;
}

double sigmoid_ref(double a) { return 1.0 / (1.0 + std::exp(-a)); }

/// torch.nn.GRU on one sequence xs [L, d] from h = 0, expert e of bank, by loops: [L, H].
template <class S>
RowMatrix<double> gru_reference(const moe::GRUExperts<S>& bank, Index e, const RowMatrix<double>& xs) {
  const Index H = bank.hidden_size(), d = bank.input_dim();
  const auto wi = bank.weight_ih(e);
  const auto wh = bank.weight_hh(e);
  const auto bi = bank.bias_ih(e);
  const auto bh = bank.bias_hh(e);
  std::vector<double> h(std::size_t(H), 0.0), next(static_cast<std::size_t>(H));
  RowMatrix<double> out(xs.rows(), H);
  for (Index t = 0; t < xs.rows(); ++t) {
    for (Index j = 0; j < H; ++j) {
      double ir = double(bi(0, j)), iz = double(bi(0, H + j)), in = double(bi(0, 2 * H + j));
      for (Index c = 0; c < d; ++c) {
        ir += double(wi(j, c)) * xs(t, c);
        iz += double(wi(H + j, c)) * xs(t, c);
        in += double(wi(2 * H + j, c)) * xs(t, c);
      }
      double hr = double(bh(0, j)), hz = double(bh(0, H + j)), hn = double(bh(0, 2 * H + j));
      for (Index c = 0; c < H; ++c) {
        hr += double(wh(j, c)) * h[std::size_t(c)];
        hz += double(wh(H + j, c)) * h[std::size_t(c)];
        hn += double(wh(2 * H + j, c)) * h[std::size_t(c)];
      }
      const double r = sigmoid_ref(ir + hr), z = sigmoid_ref(iz + hz), n = std::tanh(in + r * hn);
      next[std::size_t(j)] = (1 - z) * n + z * h[std::size_t(j)];
    }
    h = next;
    for (Index j = 0; j < H; ++j) out(t, j) = h[std::size_t(j)];
  }
  return out;
}

/// A slab of whole sequences: the rows of `sequences` (each of length L) of input, in order.
struct Slab {
  std::vector<Index> tokens;
  RowMatrix<double> x;
};

Slab slab_of(const RowMatrix<double>& input, Index L, const std::vector<Index>& sequences) {
  Slab s;
  for (const Index b : sequences)
    for (Index p = 0; p < L; ++p) s.tokens.push_back(b * L + p);
  s.x.resize(Index(s.tokens.size()), input.cols());
  for (std::size_t i = 0; i < s.tokens.size(); ++i) s.x.row(Index(i)) = input.row(s.tokens[i]);
  return s;
}

}  // namespace gru_test

TEST_CASE("GRUExperts: sizes, names, accessors and checks", "[expert][gru]") {
  using moe::Index;
  static_assert(moe::expert_traits<moe::GRUExperts<float>>::needs_context);
  static_assert(moe::expert_traits<moe::GRUExperts<float>>::whole_slabs);
  static_assert(!moe::expert_traits<moe::GRUExperts<float>>::reads_other_tokens);
  moe::GRUExperts<float> bank(3, 5, 4);
  CHECK(bank.num_experts() == 3);
  CHECK(bank.input_dim() == 5);
  CHECK(bank.output_dim() == 4);
  CHECK(bank.hidden_cols() == 20);
  CHECK(bank.weights_ih().rows() == 36);
  CHECK(bank.weights_hh().cols() == 4);
  bank.weight_hh(2)(5, 1) = 3.0f;
  CHECK(bank.weights_hh()(2 * 12 + 5, 1) == 3.0f);
  bank.bias_ih(1)(0, 7) = 2.0f;
  CHECK(bank.biases_ih()(1, 7) == 2.0f);
  std::vector<std::string> names;
  bank.for_each_parameter([&](const std::string& name, const auto& block) {
    if (names.size() == 4) {
      CHECK(block.rows() == 12);
      CHECK(block.cols() == 5);
    }
    if (names.size() == 7) {
      CHECK(block.rows() == 1);
      CHECK(block.cols() == 12);
    }
    names.push_back(name);
  });
  REQUIRE(names.size() == 12);
  CHECK(names[4] == "experts.1.weight_ih");
  CHECK(names[5] == "experts.1.weight_hh");
  CHECK(names[6] == "experts.1.bias_ih");
  CHECK(names[7] == "experts.1.bias_hh");
  const moe::GRUExperts<float> zero = moe::zeros_like(bank);
  CHECK(zero.weights_hh().cwiseAbs().maxCoeff() == 0.0f);
  CHECK(zero.biases_ih().cwiseAbs().maxCoeff() == 0.0f);
  CHECK(zero.hidden_size() == 4);

  using moe::test::require_invalid;
  require_invalid([] { moe::GRUExperts<float>(0, 5, 4); }, {"GRUExperts::GRUExperts(): num_experts expected >= 1, got 0"});
  require_invalid([] { moe::GRUExperts<float>(2, 0, 4); }, {"GRUExperts::GRUExperts(): input_dim expected >= 1, got 0"});
  require_invalid([] { moe::GRUExperts<float>(2, 5, 0); }, {"GRUExperts::GRUExperts(): hidden_size expected >= 1, got 0"});
  require_invalid([&] { (void)bank.weight_ih(3); }, {"GRUExperts::weight_ih(): expert index expected in [0, 3), got 3"});
  bank.check_shapes();
  bank.biases_hh().resize(3, 11);
  require_invalid([&] { bank.check_shapes(); },
                  {"GRUExperts::check_shapes(): biases_hh() expected shape [3, 12], got [3, 11]"});
}

TEMPLATE_TEST_CASE("GRUExperts: each sequence of a slab through torch.nn.GRU's equations, as loops",
                   "[expert][gru]", float, double) {
  using S = TestType;
  using moe::Index;
  using moe::RowMatrix;
  const double tol = std::is_same_v<S, float> ? 2e-6 : 1e-13;
  struct Case {
    Index d, H, L, batch;
    std::vector<Index> sequences;  // the slab's sequences, in order
  };
  for (const Case& c : {Case{5, 4, 4, 3, {0, 2}}, Case{3, 7, 6, 2, {1}}, Case{6, 6, 1, 5, {0, 1, 3, 4}},
                        Case{4, 3, 9, 1, {0}}}) {
    INFO("d " << c.d << ", H " << c.H << ", L " << c.L << ", batch " << c.batch);
    const moe::GRUExperts<S> bank = gru_test::random_bank<S>(3, c.d, c.H, 40);
    const RowMatrix<double> input = moe::test::random_matrix(c.batch * c.L, c.d, 41);
    const gru_test::Slab slab = gru_test::slab_of(input, c.L, c.sequences);
    const RowMatrix<S> in = input.cast<S>(), x = slab.x.cast<S>();
    for (const Index length : {c.L, Index(0)}) {
      if (length == 0 && c.batch != 1) continue;  // sequence_length 0: the batch is one sequence
      moe::ForwardContext fctx;
      fctx.sequence_length = length;
      const moe::ExpertContext<S> ctx{fctx, in, slab.tokens};
      for (Index e = 0; e < 3; ++e) {
        RowMatrix<S> hidden(x.rows(), bank.hidden_cols()), y(x.rows(), c.H);
        bank.forward(e, x, hidden, y, ctx);
        for (std::size_t s = 0; s < c.sequences.size(); ++s) {
          const RowMatrix<double> want = gru_test::gru_reference(bank, e, slab.x.middleRows(Index(s) * c.L, c.L));
          CHECK(moe::test::relative_gap(y.middleRows(Index(s) * c.L, c.L), want) < tol);
        }
      }
    }
  }
}

TEST_CASE("GRUExperts backward (through time) matches finite differences for x and every tensor",
          "[expert][gru][backward]") {
  using moe::Index;
  using moe::RowMatrix;
  struct Case {
    Index d, H, L, batch;
    std::vector<Index> sequences;
    Index sequence_length;  // the ForwardContext's: L, or 0 for one sequence
  };
  for (const Case& c : {Case{3, 5, 4, 3, {0, 1, 2}, 4}, Case{6, 2, 1, 4, {0, 2, 3}, 1}, Case{4, 4, 7, 1, {0}, 0},
                        Case{5, 3, 3, 4, {1, 3}, 3}}) {
    INFO("d " << c.d << ", H " << c.H << ", L " << c.L << ", sequences " << c.sequences.size());
    moe::GRUExperts<double> bank = gru_test::random_bank<double>(3, c.d, c.H, 50);
    const RowMatrix<double> input = moe::test::random_matrix(c.batch * c.L, c.d, 51);
    gru_test::Slab slab = gru_test::slab_of(input, c.L, c.sequences);
    const Index n = slab.x.rows();
    const RowMatrix<double> G = moe::test::random_matrix(n, c.H, 52);
    moe::ForwardContext fctx;
    fctx.sequence_length = c.sequence_length;
    const moe::ExpertContext<double> ctx{fctx, input, slab.tokens};
    const Index e = 1;
    const auto loss = [&] {
      RowMatrix<double> hidden(n, bank.hidden_cols()), y(n, c.H);
      bank.forward(e, slab.x, hidden, y, ctx);
      return (y.array() * G.array()).sum();
    };
    RowMatrix<double> hidden(n, bank.hidden_cols()), y(n, c.H), dx(n, c.d), dhidden(n, bank.hidden_cols());
    bank.forward(e, slab.x, hidden, y, ctx);
    moe::GRUExperts<double> grad = moe::zeros_like(bank);
    bank.backward(e, slab.x, hidden, G, dx, dhidden, grad, ctx);
    CHECK(moe::test::relative_gap(dx, moe::test::numeric_gradient(slab.x, loss)) < 1e-7);
    // Every tensor of every expert: expert e's against the finite difference, the others zero.
    moe::test::check_parameter_gradients(bank, grad, loss, 1e-7);
    // Gradients accumulate: a second backward doubles them.
    moe::GRUExperts<double> twice = grad;
    bank.backward(e, slab.x, hidden, G, dx, dhidden, twice, ctx);
    CHECK((twice.weights_hh() - 2.0 * grad.weights_hh()).cwiseAbs().maxCoeff() < 1e-12);
  }
}

TEST_CASE("GRUExperts refuses slabs that are not whole sequences, and the dense path", "[expert][gru][errors]") {
  using moe::Index;
  using moe::RowMatrix;
  using moe::test::require_invalid;
  const moe::GRUExperts<double> bank = gru_test::random_bank<double>(2, 3, 2, 60);
  const RowMatrix<double> input = moe::test::random_matrix(12, 3, 61);
  moe::ForwardContext fctx;
  fctx.sequence_length = 4;
  const auto run = [&](const std::vector<Index>& tokens, bool backward) {
    RowMatrix<double> x(Index(tokens.size()), 3);
    for (std::size_t i = 0; i < tokens.size(); ++i) x.row(Index(i)) = input.row(tokens[i]);
    const moe::ExpertContext<double> ctx{fctx, input, tokens};
    RowMatrix<double> hidden = RowMatrix<double>::Zero(x.rows(), 10), y(x.rows(), 2);
    if (!backward) {
      bank.forward(0, x, hidden, y, ctx);
    } else {
      RowMatrix<double> dx(x.rows(), 3), dh(x.rows(), 10);
      moe::GRUExperts<double> grad = moe::zeros_like(bank);
      bank.backward(0, x, hidden, RowMatrix<double>::Zero(x.rows(), 2), dx, dh, grad, ctx);
    }
  };
  // A token missing inside a sequence (a token router, or a capacity that dropped it).
  require_invalid([&] { run({0, 1, 3}, false); },
                  {"GRUExperts::forward(): slab row 2 (token 3) expected position 0 or the next token of sequence 0 "
                   "(position 2), got position 3 of sequence 0",
                   "SequenceRouter"});
  // A slab that starts inside a sequence.
  require_invalid([&] { run({5, 6, 7}, false); },
                  {"GRUExperts::forward(): slab row 0 (token 5) expected the first token of a sequence (position 0), "
                   "got position 1 of sequence 1"});
  // A sequence cut short at its end, then another sequence.
  require_invalid([&] { run({0, 1, 2, 8, 9, 10, 11}, false); },
                  {"GRUExperts::forward(): tokens of sequence 0 in the slab expected all 4, got 3"});
  require_invalid([&] { run({4, 5, 6, 7, 8, 9}, true); },
                  {"GRUExperts::backward(): tokens of sequence 2 in the slab expected all 4, got 2"});
  // A sequence's first token, then another sequence's second.
  require_invalid([&] { run({0, 1, 2, 3, 4, 9}, false); },
                  {"slab row 5 (token 9) expected position 0 or the next token of sequence 1 (position 1), got "
                   "position 1 of sequence 2"});
  // Whole sequences pass, in any subset.
  run({4, 5, 6, 7}, false);
  run({0, 1, 2, 3, 8, 9, 10, 11}, true);
  // The dense path: slots have no tokens.
  const moe::ExpertContext<double> dense{fctx, input};
  RowMatrix<double> x = input.topRows(4), hidden(4, 10), y(4, 2);
  require_invalid([&] { bank.forward(0, x, hidden, y, dense); },
                  {"GRUExperts::forward(): ExpertContext::tokens expected the token of each slab row (the sparse "
                   "path: a recurrence needs positions), got none"});
}
