// kernels::gemm: both kernels against a long double reference within the classical rounding
// bound, and the row-wise kernel's promise: a row's bits do not depend on the other rows.
// Weights of another element type (bf16): the product equals, bit for bit, the float product
// on the weights widened first, and agrees with the scalar twin.
#include <catch2/catch.hpp>

#include "support/kernel_sweep.hpp"
#include "support/random.hpp"

#include <cmath>
#include <limits>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "moe/kernels/gemm.hpp"
#include "moe/kernels/reference/gemm.hpp"
#include "moe/kernels/weight_types.hpp"

namespace {

using moe::GemmKernel;
using moe::Index;
using moe::Op;
using moe::RowMatrix;
using moe::bf16;
using moe::test::first_difference;
using moe::test::for_each_arch;

using moe::test::random_matrix;

/// Checks C = alpha op(A) op(B) + beta C0 elementwise against a long double sum, within the
/// bound for a k-term dot product in precision u: |error| <= (k + 2) u (|alpha| sum |a b| +
/// |beta c0|) (Higham, Accuracy and Stability, 3.1; the +2 covers the scaling and the add).
template <class S>
std::string check_against_reference(const RowMatrix<S>& c, const RowMatrix<S>& a, Op op_a, const RowMatrix<S>& b,
                                    Op op_b, S alpha, S beta, const RowMatrix<S>& c0) {
  const Index m = c.rows();
  const Index n = c.cols();
  const Index k = op_a == Op::none ? a.cols() : a.rows();
  const long double u = std::numeric_limits<S>::epsilon() / 2;
  for (Index r = 0; r < m; ++r)
    for (Index j = 0; j < n; ++j) {
      long double sum = 0;
      long double mag = 0;
      for (Index i = 0; i < k; ++i) {
        const long double av = op_a == Op::none ? a(r, i) : a(i, r);
        const long double bv = op_b == Op::none ? b(i, j) : b(j, i);
        sum += av * bv;
        mag += std::fabs(av * bv);
      }
      const long double base = beta == S(0) ? 0.0L : static_cast<long double>(beta) * c0(r, j);
      const long double want = static_cast<long double>(alpha) * sum + base;
      const long double bound = (k + 2) * u * (std::fabs(static_cast<long double>(alpha)) * mag + std::fabs(base));
      const long double err = std::fabs(static_cast<long double>(c(r, j)) - want);
      if (!(err <= bound)) {
        std::ostringstream os;
        os << "element (" << r << ", " << j << "): got " << static_cast<double>(c(r, j)) << ", want "
           << static_cast<double>(want) << ", error " << static_cast<double>(err) << " > bound "
           << static_cast<double>(bound);
        return os.str();
      }
    }
  return {};
}

const char* name(Op op) { return op == Op::none ? "N" : "T"; }
const char* name(GemmKernel kernel) { return kernel == GemmKernel::fast ? "fast" : "batch_invariant"; }

}  // namespace

TEMPLATE_TEST_CASE("gemm matches a long double reference for every operand form and kernel", "[kernels][gemm]",
                   float, double) {
  using S = TestType;
  std::mt19937 rng(7);
  for_each_arch([&](auto arch) {
    using Arch = decltype(arch);
    const Index w = moe::kernels::detail::lanes<S, Arch>;
    // Rows on both sides of the 4-row blocks, the axpy/register switch (16) and the
    // fast kernel's row-wise limit (32); columns and depths around the vector width.
    // (alpha, beta) pairs taken in turn: overwrite, accumulate, scale both.
    const std::pair<S, S> scalings[] = {{S(1), S(0)}, {S(0.5), S(1)}, {S(-2), S(-0.25)}};
    std::size_t turn = 0;
    for (const Index m : {Index{0}, Index{1}, Index{3}, Index{5}, Index{16}, Index{17}, Index{33}, Index{70}})
      for (const Index n : {w > 1 ? w - 1 : Index{2}, 2 * w + 3})
        for (const Index k : {Index{0}, Index{1}, w + 1, Index{53}})
          for (const Op op_a : {Op::none, Op::transpose})
            for (const Op op_b : {Op::none, Op::transpose})
              for (const GemmKernel kernel : {GemmKernel::fast, GemmKernel::batch_invariant}) {
                  const auto [alpha, beta] = scalings[turn++ % 3];
                  const RowMatrix<S> a = op_a == Op::none ? random_matrix<S>(m, k, rng) : random_matrix<S>(k, m, rng);
                  const RowMatrix<S> b = op_b == Op::none ? random_matrix<S>(k, n, rng) : random_matrix<S>(n, k, rng);
                  RowMatrix<S> c0 = random_matrix<S>(m, n, rng);
                  // beta = 0 must not read C: start from NaN there.
                  if (beta == S(0)) c0.setConstant(std::numeric_limits<S>::quiet_NaN());
                  RowMatrix<S> c = c0;
                  moe::kernels::gemm<Arch>(c, a, op_a, b, op_b, alpha, beta, kernel);
                  INFO(Arch::name() << " m " << m << " n " << n << " k " << k << " " << name(op_a) << name(op_b) << " "
                                    << name(kernel) << " alpha " << alpha << " beta " << beta);
                  CHECK(check_against_reference(c, a, op_a, b, op_b, alpha, beta, c0).empty());
                }
  });
}

TEMPLATE_TEST_CASE("gemm is exact past its per-thread buffer sizes (Eigen blocks clamped, axpy in column blocks)",
                   "[kernels][gemm]", float, double) {
  using S = TestType;
  using Cap = moe::kernels::detail::PackingCapacity<S>;
  std::mt19937 rng(11);
  // Eigen's kernel: more output columns than Cap::mc (its lhs panel comes in blocks) and a depth
  // over Cap::kc; the row-wise axpy path (m <= 16): more columns than one accumulator block.
  struct Shape {
    Index m, n, k;
  };
  const Index axpy_block_16 = Cap::axpy_elements / 16;
  const Shape shapes[] = {{70, Cap::mc * 2 + 37, Cap::kc + 21}, {16, axpy_block_16 * 2 + 3, 9}, {5, axpy_block_16 + 1, 6}};
  for_each_arch([&](auto arch) {
    using Arch = decltype(arch);
    for (const Shape& sh : shapes)
      for (const Op op_a : {Op::none, Op::transpose})
        for (const Op op_b : {Op::none, Op::transpose}) {
          const RowMatrix<S> a = op_a == Op::none ? random_matrix<S>(sh.m, sh.k, rng) : random_matrix<S>(sh.k, sh.m, rng);
          const RowMatrix<S> b = op_b == Op::none ? random_matrix<S>(sh.k, sh.n, rng) : random_matrix<S>(sh.n, sh.k, rng);
          const RowMatrix<S> c0 = random_matrix<S>(sh.m, sh.n, rng);
          RowMatrix<S> c = c0;
          moe::kernels::gemm<Arch>(c, a, op_a, b, op_b, S(0.5), S(1));
          INFO(Arch::name() << " m " << sh.m << " n " << sh.n << " k " << sh.k << " " << name(op_a) << name(op_b));
          CHECK(check_against_reference(c, a, op_a, b, op_b, S(0.5), S(1), c0).empty());
        }
  });
}

TEMPLATE_TEST_CASE("gemm's row-wise kernel gives a row the same bits in any batch", "[kernels][gemm]", float,
                   double) {
  using S = TestType;
  std::mt19937 rng(11);
  for_each_arch([&](auto arch) {
    using Arch = decltype(arch);
    const Index m = 70;
    const Index k = 45;
    for (const Index n : {Index{37}, Index{64}})
      for (const Op op_b : {Op::none, Op::transpose}) {
        // A lives inside a wider matrix, so rows have an outer stride larger than k.
        const RowMatrix<S> wide = random_matrix<S>(m, k + 3, rng);
        const moe::ConstMatrixRef<S> a = wide.leftCols(k);
        const RowMatrix<S> b = op_b == Op::none ? random_matrix<S>(k, n, rng) : random_matrix<S>(n, k, rng);
        RowMatrix<S> full(m, n);
        moe::kernels::gemm<Arch>(full, a, Op::none, b, op_b, S(1), S(0), GemmKernel::batch_invariant);
        // Slices of every size class: single rows, the few-row (axpy) path, a 4-row block
        // boundary crossed at an odd offset, more than a 64-row panel's remainder.
        const std::vector<std::pair<Index, Index>> slices{{0, 1},  {69, 1}, {5, 3},  {13, 16},
                                                          {2, 17}, {30, 32}, {1, 45}, {3, 67}};
        for (const auto& [begin, rows] : slices)
          for (const GemmKernel kernel : {GemmKernel::batch_invariant, GemmKernel::fast}) {
            // fast promises batch invariance only where it runs the row-wise kernel.
            if (kernel == GemmKernel::fast && rows > moe::kernels::rowwise_max_rows) continue;
            RowMatrix<S> part(rows, n);
            moe::kernels::gemm<Arch>(part, a.middleRows(begin, rows), Op::none, b, op_b, S(1), S(0), kernel);
            INFO(Arch::name() << " n " << n << " op(B) " << name(op_b) << " rows [" << begin << ", "
                              << begin + rows << ") " << name(kernel));
            CHECK(first_difference(part.data(), full.middleRows(begin, rows).eval().data(), rows * n).empty());
          }
        // Rows reversed: each row computed at another position gives the same bits.
        const RowMatrix<S> reversed = a.colwise().reverse();
        RowMatrix<S> out(m, n);
        moe::kernels::gemm<Arch>(out, reversed, Op::none, b, op_b, S(1), S(0), GemmKernel::batch_invariant);
        const RowMatrix<S> back = out.colwise().reverse();
        CHECK(first_difference(back.data(), full.data(), m * n).empty());
      }
  });
}

TEST_CASE("gemm refuses operands whose shapes do not chain", "[kernels][gemm]") {
  const RowMatrix<float> a = RowMatrix<float>::Ones(3, 4);
  const RowMatrix<float> b = RowMatrix<float>::Ones(5, 6);
  RowMatrix<float> c(3, 6);
  CHECK_THROWS_WITH(moe::kernels::gemm(c, a, Op::none, b, Op::none, 1.0f, 0.0f),
                    Catch::Contains("kernels::gemm()") && Catch::Contains("[3, 4] x [5, 6] -> [3, 6]"));
  RowMatrix<float> wrong(4, 6);
  CHECK_THROWS_AS(moe::kernels::gemm(wrong, a, Op::transpose, b, Op::transpose, 1.0f, 0.0f), std::invalid_argument);
  // op(A) = A^T is [4, 3], op(B) = B^T... [6, 5]: 3 != 6.
  CHECK_THROWS_WITH(moe::kernels::gemm(wrong, a, Op::transpose, b, Op::transpose, 1.0f, 0.0f),
                    Catch::Contains("[4, 3] x [6, 5]"));
}

namespace {

/// Weights rounded to bf16, and the float matrix of exactly their values.
struct Bf16Weights {
  RowMatrix<bf16> stored;
  RowMatrix<float> widened;
};

Bf16Weights random_bf16_weights(Index rows, Index cols, std::mt19937& rng) {
  Bf16Weights w;
  w.stored = random_matrix<float>(rows, cols, rng).cast<bf16>();
  w.widened = w.stored.cast<float>();
  return w;
}

/// c against the scalar twin's c_ref: both are within (k + 2) u (|alpha| sum |a b| + |beta c0|)
/// of the exact result, so they differ by at most twice that.
std::string check_against_twin(const RowMatrix<float>& c, const RowMatrix<float>& c_ref, const RowMatrix<float>& a,
                               Op op_a, const moe::ConstMatrixRef<float>& b, Op op_b, float alpha, float beta,
                               const RowMatrix<float>& c0) {
  const Index k = op_a == Op::none ? a.cols() : a.rows();
  const double u = std::numeric_limits<float>::epsilon() / 2.0;
  for (Index r = 0; r < c.rows(); ++r)
    for (Index j = 0; j < c.cols(); ++j) {
      double mag = 0;
      for (Index i = 0; i < k; ++i)
        mag += std::fabs(static_cast<double>(op_a == Op::none ? a(r, i) : a(i, r)) *
                         static_cast<double>(op_b == Op::none ? b(i, j) : b(j, i)));
      const double base = beta == 0.0f ? 0.0 : std::fabs(static_cast<double>(beta) * c0(r, j));
      const double bound = 2.0 * static_cast<double>(k + 2) * u * (std::fabs(static_cast<double>(alpha)) * mag + base);
      const double err = std::fabs(static_cast<double>(c(r, j)) - static_cast<double>(c_ref(r, j)));
      if (!(err <= bound)) {
        std::ostringstream os;
        os << "element (" << r << ", " << j << "): kernel " << c(r, j) << ", twin " << c_ref(r, j) << ", difference "
           << err << " > bound " << bound;
        return os.str();
      }
    }
  return {};
}

}  // namespace

TEST_CASE("gemm with bf16 weights is the float product on the widened weights, bit for bit", "[kernels][gemm][bf16]") {
  std::mt19937 rng(13);
  for_each_arch([&](auto arch) {
    using Arch = decltype(arch);
    const Index w = moe::kernels::detail::lanes<float, Arch>;
    const std::pair<float, float> scalings[] = {{1.0f, 0.0f}, {0.5f, 1.0f}, {-2.0f, -0.25f}};
    std::size_t turn = 0;
    for (const Index m : {Index{0}, Index{1}, Index{3}, Index{5}, Index{16}, Index{17}, Index{33}, Index{70}})
      for (const Index n : {w > 1 ? w - 1 : Index{2}, 2 * w + 3})
        for (const Index k : {Index{0}, Index{1}, w + 1, Index{53}})
          for (const Op op_a : {Op::none, Op::transpose})
            for (const Op op_b : {Op::none, Op::transpose})
              for (const GemmKernel kernel : {GemmKernel::fast, GemmKernel::batch_invariant}) {
                const auto [alpha, beta] = scalings[turn % 3];
                // Every other product takes its weights as a view into a wider bank (outer
                // stride past the row), as the experts do.
                const Index pad = turn++ % 2 == 0 ? 0 : 3;
                const RowMatrix<float> a =
                    op_a == Op::none ? random_matrix<float>(m, k, rng) : random_matrix<float>(k, m, rng);
                const Index b_rows = op_b == Op::none ? k : n;
                const Index b_cols = op_b == Op::none ? n : k;
                const Bf16Weights bank = random_bf16_weights(b_rows, b_cols + pad, rng);
                const auto stored = bank.stored.leftCols(b_cols);
                const moe::ConstMatrixRef<float> widened = bank.widened.leftCols(b_cols);
                RowMatrix<float> c0 = random_matrix<float>(m, n, rng);
                if (beta == 0.0f) c0.setConstant(std::numeric_limits<float>::quiet_NaN());
                RowMatrix<float> c = c0;
                RowMatrix<float> c_float = c0;
                moe::kernels::gemm<Arch>(c, a, op_a, stored, op_b, alpha, beta, kernel);
                moe::kernels::gemm<Arch>(c_float, a, op_a, widened, op_b, alpha, beta, kernel);
                INFO(Arch::name() << " m " << m << " n " << n << " k " << k << " " << name(op_a) << name(op_b) << " "
                                  << name(kernel) << " alpha " << alpha << " beta " << beta << " pad " << pad);
                CHECK(first_difference(c.data(), c_float.data(), m * n).empty());
                // The twin on bf16 weights is the twin on widened ones, and the kernel is within
                // the rounding bound of it.
                RowMatrix<float> c_ref = c0;
                RowMatrix<float> c_ref_widened = c0;
                moe::kernels::reference::gemm<float, bf16>(c_ref, a, op_a, stored, op_b, alpha, beta);
                moe::kernels::reference::gemm<float>(c_ref_widened, a, op_a, widened, op_b, alpha, beta);
                CHECK(first_difference(c_ref.data(), c_ref_widened.data(), m * n).empty());
                CHECK(check_against_twin(c, c_ref, a, op_a, widened, op_b, alpha, beta, c0).empty());
              }
  });
}

TEST_CASE("gemm with bf16 weights stays exact past its buffer sizes, in fixed per-thread buffers",
          "[kernels][gemm][bf16]") {
  using Cap = moe::kernels::detail::PackingCapacity<float>;
  std::mt19937 rng(17);
  struct Shape {
    Index m, n, k;
  };
  // Eigen's kernel: more output columns than Cap::mc and a depth over Cap::kc (the widened panel
  // comes in several blocks each way), and more rows than one packed rhs panel holds at that
  // depth; the row-wise axpy path: more columns than one accumulator block.
  const Index axpy_block_16 = Cap::axpy_elements / 16;
  const Shape shapes[] = {{70, Cap::mc * 2 + 37, Cap::kc + 21},
                          {Cap::b_elements / Cap::kc + 20, 45, Cap::kc + 3},
                          {16, axpy_block_16 * 2 + 3, 9},
                          {5, axpy_block_16 + 1, 6}};
  moe::kernels::prepare_threads<float, bf16>(nullptr);
  const float* panel = moe::kernels::detail::WideningBuffer<float>::get().panel.data();
  CHECK(moe::kernels::detail::WideningBuffer<float>::get().panel.size() ==
        static_cast<std::size_t>(Cap::kc * Cap::mc));
  for_each_arch([&](auto arch) {
    using Arch = decltype(arch);
    for (const Shape& sh : shapes)
      for (const Op op_a : {Op::none, Op::transpose})
        for (const Op op_b : {Op::none, Op::transpose})
          for (const GemmKernel kernel : {GemmKernel::fast, GemmKernel::batch_invariant}) {
            const RowMatrix<float> a =
                op_a == Op::none ? random_matrix<float>(sh.m, sh.k, rng) : random_matrix<float>(sh.k, sh.m, rng);
            const Bf16Weights b = op_b == Op::none ? random_bf16_weights(sh.k, sh.n, rng)
                                                   : random_bf16_weights(sh.n, sh.k, rng);
            const RowMatrix<float> c0 = random_matrix<float>(sh.m, sh.n, rng);
            RowMatrix<float> c = c0;
            RowMatrix<float> c_float = c0;
            moe::kernels::gemm<Arch>(c, a, op_a, b.stored, op_b, 0.5f, 1.0f, kernel);
            moe::kernels::gemm<Arch>(c_float, a, op_a, b.widened, op_b, 0.5f, 1.0f, kernel);
            INFO(Arch::name() << " m " << sh.m << " n " << sh.n << " k " << sh.k << " " << name(op_a) << name(op_b)
                              << " " << name(kernel));
            CHECK(first_difference(c.data(), c_float.data(), sh.m * sh.n).empty());
            if (kernel == GemmKernel::fast) {
              RowMatrix<float> c_ref = c0;
              moe::kernels::reference::gemm<float, bf16>(c_ref, a, op_a, b.stored, op_b, 0.5f, 1.0f);
              CHECK(check_against_twin(c, c_ref, a, op_a, b.widened, op_b, 0.5f, 1.0f, c0).empty());
            }
          }
  });
  // The widened panels went through the buffer prepare_threads set up, never a bigger one.
  CHECK(moe::kernels::detail::WideningBuffer<float>::get().panel.data() == panel);
  CHECK(moe::kernels::detail::WideningBuffer<float>::get().panel.size() ==
        static_cast<std::size_t>(Cap::kc * Cap::mc));
}

TEST_CASE("gemm with bf16 weights refuses shapes that do not chain", "[kernels][gemm][bf16]") {
  const RowMatrix<float> a = RowMatrix<float>::Ones(3, 4);
  const RowMatrix<bf16> b = RowMatrix<float>::Ones(5, 6).cast<bf16>();
  RowMatrix<float> c(3, 6);
  CHECK_THROWS_WITH(moe::kernels::gemm(c, a, Op::none, b, Op::none, 1.0f, 0.0f),
                    Catch::Contains("kernels::gemm()") && Catch::Contains("[3, 4] x [5, 6] -> [3, 6]"));
}
