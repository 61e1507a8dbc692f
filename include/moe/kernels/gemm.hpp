// Every matrix product in the library: C = alpha op(A) op(B) + beta C.
//
// Two kernels sit behind one function:
//  - Eigen's blocked GEMM (Goto's algorithm; OpenBLAS behind it when the project is built with
//    MOE_USE_BLAS, which defines EIGEN_USE_BLAS), called through its level-3 entry point with
//    packing buffers that each thread allocates once and keeps, so a steady-state forward or
//    backward does not touch the heap;
//  - a row-wise kernel (xsimd) in which every element of a row is computed by one fixed
//    sequence of operations, whatever the other rows are. It runs the decode case (at most
//    rowwise_max_rows rows: one pass over the weights, no packing) and, when the caller asks for
//    GemmKernel::batch_invariant, every product whose rows are tokens, so that a token gets the
//    same bits in any batch (docs/kernels.md, "Batch invariance").
#ifndef MOE_KERNELS_GEMM_HPP
#define MOE_KERNELS_GEMM_HPP

#include <moe/core/context.hpp>
#include <moe/core/error.hpp>
#include <moe/core/thread_pool.hpp>
#include <moe/core/types.hpp>
#include <moe/kernels/arch.hpp>

#include <Eigen/Core>
#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>
#include <xsimd/xsimd.hpp>

namespace moe {

/// Transposition of a gemm operand.
enum class Op : std::uint8_t { none, transpose };

namespace kernels {

/// Up to this many rows, gemm uses the row-wise kernel (decode, and the few rows per expert of
/// a small batch): it streams each weight once with no packing, where Eigen's GEMM copies the
/// whole weight into its panels first, which costs as much as the product below ~32 rows
/// (docs/kernels.md has the measurements).
inline constexpr Index rowwise_max_rows = 32;

namespace detail {

/// Sizes, in elements, of the per-thread buffers every product works in: fixed, so a thread
/// allocates them once, at its first product of scalar S (or at prepare_threads), and no later
/// shape or routing can make it allocate again. Eigen's blocking heuristic is kept and clamped
/// to them; the clamps only bind on shapes where Eigen would pack a whole operand at once.
template <class S>
struct PackingCapacity {
  using Traits = Eigen::internal::gebp_traits<S, S>;
  /// Depth of a packed panel (Eigen's kc; its heuristic gives 150 to 500 for a 32 KiB L1).
  static constexpr Index kc = 512;
  /// Rows of the packed lhs panel (Eigen's mc, a multiple of its micro-kernel's rows): Eigen
  /// would pack all rows (the weight's output dimension) at once; above this it packs them in
  /// blocks, repacking the other operand once per block (under 1 % of the product's work).
  static constexpr Index mc = (480 / Traits::mr) * Traits::mr;
  /// Packed rhs panel, kc x nc: Eigen's own bound, half of the 1.5 MiB it assumes for L2.
  static constexpr Index b_elements = (Index{3} << 19) / (2 * static_cast<Index>(sizeof(S)));
  /// Accumulators of rowwise_nn_axpy (rows x columns at a time).
  static constexpr Index axpy_elements = Index{1} << 16;
};

/// The calling thread's packing and accumulator buffers for scalar S, allocated on first use
/// at the fixed PackingCapacity sizes.
template <class S>
struct ThreadBuffers {
  std::vector<S, Eigen::aligned_allocator<S>> a, b, axpy;

  static ThreadBuffers& get() {
    thread_local ThreadBuffers buffers;
    if (buffers.a.empty()) {
      using Cap = PackingCapacity<S>;
      buffers.a.resize(static_cast<std::size_t>(Cap::kc * Cap::mc));
      buffers.b.resize(static_cast<std::size_t>(Cap::b_elements));
      buffers.axpy.resize(static_cast<std::size_t>(Cap::axpy_elements));
    }
    return buffers;
  }
};

/// Eigen's level-3 blocking in the calling thread's ThreadBuffers: Eigen's heuristic, clamped to
/// PackingCapacity, so a product never allocates whatever its shape.
template <class S>
class ThreadBlocking : public Eigen::internal::level3_blocking<S, S> {
 public:
  /// Blocking for a row-major [rows, cols] destination with inner dimension depth, chosen as
  /// Eigen chooses it for `dst.noalias() = lhs * rhs` (the product is run transposed).
  ThreadBlocking(Index rows, Index cols, Index depth) {
    using Cap = PackingCapacity<S>;
    this->m_mc = cols;
    this->m_nc = rows;
    this->m_kc = depth;
    Eigen::internal::computeProductBlockingSizes<S, S, 1, Index>(this->m_kc, this->m_mc, this->m_nc, 1);
    this->m_kc = std::min(this->m_kc, Cap::kc);
    this->m_mc = std::min(this->m_mc, Cap::mc);
    if (this->m_kc * this->m_nc > Cap::b_elements) {
      constexpr Index nr = Cap::Traits::nr;
      this->m_nc = std::max(nr, Cap::b_elements / this->m_kc / nr * nr);
    }
    ThreadBuffers<S>& buffers = ThreadBuffers<S>::get();
    this->m_blockA = buffers.a.data();
    this->m_blockB = buffers.b.data();
  }
};

/// c += alpha op(a) op(b) with Eigen's GEMM. Storage orders are template parameters there.
template <int LhsOrder, int RhsOrder, class S>
void eigen_gemm(S* c, Index ldc, const S* a, Index lda, const S* b, Index ldb, Index m, Index n, Index k,
                S alpha) {
  ThreadBlocking<S> blocking(m, n, k);
  Eigen::internal::general_matrix_matrix_product<Index, S, LhsOrder, false, S, RhsOrder, false, Eigen::RowMajor,
                                                 1>::run(m, n, k, a, lda, b, ldb, c, 1, ldc, alpha, blocking);
}

/// Writes one finished element: c = alpha acc (beta = 0) or beta c + alpha acc.
template <class S>
inline void store(S& c, S acc, S alpha, S beta) {
  c = beta == S(0) ? alpha * acc : beta * c + alpha * acc;
}

MOE_KERNELS_BEGIN_SIMD_CODE

/// The end of one row-wise dot product: the lanes' sum, then the scalar tail in order. Every
/// element of C = A B^T goes through exactly this, whichever block computed its lanes.
template <class Arch, class S>
inline S finish_dot(const xsimd::batch<S, Arch>& acc, const S* a, const S* b, Index from, Index k) {
  S s = xsimd::hadd(acc);
  for (Index i = from; i < k; ++i) s += a[i] * b[i];
  return s;
}

/// C = alpha A B^T + beta C with B given as [n, k] rows (the Hugging Face [out, in] weight):
/// element (r, j) = dot(A row r, B row j), accumulated lane-wise over k in order, then
/// finish_dot. Blocks of 4 x 4 elements share loads; a leftover element runs the same
/// operations alone, so no element's bits depend on its neighbours.
template <class Arch, class S>
void rowwise_nt(S* c, Index ldc, const S* a, Index lda, const S* b, Index ldb, Index m, Index n, Index k, S alpha,
                S beta) {
  using V = xsimd::batch<S, Arch>;
  constexpr Index W = lanes<S, Arch>;
  const Index kv = k - k % W;
  constexpr Index panel = 64;  // rows of A kept in L2 while B streams past
  const auto one = [&](Index r, Index j) {
    const S* ar = a + r * lda;
    const S* bj = b + j * ldb;
    V acc(S(0));
    for (Index i = 0; i < kv; i += W) acc = xsimd::fma(V::load_unaligned(ar + i), V::load_unaligned(bj + i), acc);
    store(c[r * ldc + j], finish_dot<Arch>(acc, ar, bj, kv, k), alpha, beta);
  };
  for (Index r0 = 0; r0 < m; r0 += panel) {
    const Index r_end = std::min(m, r0 + panel);
    for (Index j = 0; j < n; j += 4) {
      if (j + 4 > n) {
        for (Index r = r0; r < r_end; ++r)
          for (Index jj = j; jj < n; ++jj) one(r, jj);
        continue;
      }
      Index r = r0;
      for (; r + 4 <= r_end; r += 4) {
        V acc[4][4];
        for (auto& row : acc)
          for (auto& v : row) v = V(S(0));
        for (Index i = 0; i < kv; i += W) {
          V av[4];
          for (Index rr = 0; rr < 4; ++rr) av[rr] = V::load_unaligned(a + (r + rr) * lda + i);
          for (Index jj = 0; jj < 4; ++jj) {
            const V bv = V::load_unaligned(b + (j + jj) * ldb + i);
            for (Index rr = 0; rr < 4; ++rr) acc[rr][jj] = xsimd::fma(av[rr], bv, acc[rr][jj]);
          }
        }
        for (Index rr = 0; rr < 4; ++rr)
          for (Index jj = 0; jj < 4; ++jj)
            store(c[(r + rr) * ldc + j + jj],
                  finish_dot<Arch>(acc[rr][jj], a + (r + rr) * lda, b + (j + jj) * ldb, kv, k), alpha, beta);
      }
      for (; r < r_end; ++r)
        for (Index jj = j; jj < j + 4; ++jj) one(r, jj);
    }
  }
}

/// Rows up to which rowwise_nn streams B row by row (below).
inline constexpr Index axpy_max_rows = 16;

/// rowwise_nn_axpy on columns [0, n) of c and b (a column block): the m rows of accumulators
/// in acc [m, n] take one fused multiply-add per element of each row of B.
template <class Arch, class S>
void axpy_columns(S* c, Index ldc, const S* a, Index lda, const S* b, Index ldb, Index m, Index n, Index k,
                  S alpha, S beta, S* acc) {
  using V = xsimd::batch<S, Arch>;
  constexpr Index W = lanes<S, Arch>;
  const Index nv = n - n % W;
  std::fill(acc, acc + m * n, S(0));
  Index i = 0;
  for (; i + 4 <= k; i += 4) {  // four rows of B per pass: the accumulators move a quarter as often
    const S* b0 = b + i * ldb;
    const S* b1 = b0 + ldb;
    const S* b2 = b1 + ldb;
    const S* b3 = b2 + ldb;
    for (Index r = 0; r < m; ++r) {
      S* ar = acc + r * n;
      const S* arow = a + r * lda + i;
      const V a0(arow[0]), a1(arow[1]), a2(arow[2]), a3(arow[3]);
      for (Index j = 0; j < nv; j += W) {
        V v = V::load_unaligned(ar + j);
        v = xsimd::fma(a0, V::load_unaligned(b0 + j), v);
        v = xsimd::fma(a1, V::load_unaligned(b1 + j), v);
        v = xsimd::fma(a2, V::load_unaligned(b2 + j), v);
        v = xsimd::fma(a3, V::load_unaligned(b3 + j), v);
        v.store_unaligned(ar + j);
      }
      for (Index j = nv; j < n; ++j) {
        S v = ar[j];
        v = xsimd::fma(arow[0], b0[j], v);
        v = xsimd::fma(arow[1], b1[j], v);
        v = xsimd::fma(arow[2], b2[j], v);
        v = xsimd::fma(arow[3], b3[j], v);
        ar[j] = v;
      }
    }
  }
  for (; i < k; ++i) {
    const S* bi = b + i * ldb;
    for (Index r = 0; r < m; ++r) {
      S* ar = acc + r * n;
      const S air = a[r * lda + i];
      const V av(air);
      for (Index j = 0; j < nv; j += W)
        xsimd::fma(av, V::load_unaligned(bi + j), V::load_unaligned(ar + j)).store_unaligned(ar + j);
      for (Index j = nv; j < n; ++j) ar[j] = xsimd::fma(air, bi[j], ar[j]);
    }
  }
  for (Index r = 0; r < m; ++r)
    for (Index j = 0; j < n; ++j) store(c[r * ldc + j], acc[r * n + j], alpha, beta);
}

/// rowwise_nn for a few rows (decode): the same per-element operations as the register-blocked
/// loop below, in the order that reads B once, row after row, as memory streams it. The
/// accumulators live in the thread's fixed ThreadBuffers, so columns go in blocks of
/// PackingCapacity::axpy_elements / m (4096 or more, whole batches; an element's operations do
/// not depend on its block).
template <class Arch, class S>
void rowwise_nn_axpy(S* c, Index ldc, const S* a, Index lda, const S* b, Index ldb, Index m, Index n, Index k,
                     S alpha, S beta) {
  constexpr Index W = lanes<S, Arch>;
  const Index block = std::max(W, PackingCapacity<S>::axpy_elements / m / W * W);
  S* acc = ThreadBuffers<S>::get().axpy.data();
  for (Index j0 = 0; j0 < n; j0 += block) {
    axpy_columns<Arch>(c + j0, ldc, a, lda, b + j0, ldb, m, std::min(block, n - j0), k, alpha, beta, acc);
  }
}

/// C = alpha A B + beta C with B given as [k, n] rows: element (r, j) accumulates
/// a(r, i) b(i, j) for i = 0, 1, ... in order with one fused multiply-add each (lanes of a batch
/// are independent, so any grouping of rows and columns gives the same bits); the columns past
/// the last full batch run the scalar form of the same loop.
template <class Arch, class S>
void rowwise_nn(S* c, Index ldc, const S* a, Index lda, const S* b, Index ldb, Index m, Index n, Index k, S alpha,
                S beta) {
  using V = xsimd::batch<S, Arch>;
  constexpr Index W = lanes<S, Arch>;
  const Index nv = n - n % W;
  const Index nv2 = n - n % (2 * W);
  constexpr Index panel = 64;
  if (m <= axpy_max_rows) {
    rowwise_nn_axpy<Arch>(c, ldc, a, lda, b, ldb, m, n, k, alpha, beta);
    return;
  }
  const auto finish = [&](Index r, Index j, const V& acc) {
    alignas(64) S lane[W];
    acc.store_unaligned(lane);
    for (Index l = 0; l < W; ++l) store(c[r * ldc + j + l], lane[l], alpha, beta);
  };
  for (Index r0 = 0; r0 < m; r0 += panel) {
    const Index r_end = std::min(m, r0 + panel);
    for (Index j = 0; j < nv2; j += 2 * W) {
      Index r = r0;
      for (; r + 4 <= r_end; r += 4) {
        V acc[4][2];
        for (auto& row : acc)
          for (auto& v : row) v = V(S(0));
        for (Index i = 0; i < k; ++i) {
          const V b0 = V::load_unaligned(b + i * ldb + j);
          const V b1 = V::load_unaligned(b + i * ldb + j + W);
          for (Index rr = 0; rr < 4; ++rr) {
            const V av(a[(r + rr) * lda + i]);
            acc[rr][0] = xsimd::fma(av, b0, acc[rr][0]);
            acc[rr][1] = xsimd::fma(av, b1, acc[rr][1]);
          }
        }
        for (Index rr = 0; rr < 4; ++rr) {
          finish(r + rr, j, acc[rr][0]);
          finish(r + rr, j + W, acc[rr][1]);
        }
      }
      for (; r < r_end; ++r) {
        V acc0(S(0)), acc1(S(0));
        for (Index i = 0; i < k; ++i) {
          const V av(a[r * lda + i]);
          acc0 = xsimd::fma(av, V::load_unaligned(b + i * ldb + j), acc0);
          acc1 = xsimd::fma(av, V::load_unaligned(b + i * ldb + j + W), acc1);
        }
        finish(r, j, acc0);
        finish(r, j + W, acc1);
      }
    }
    for (Index j = nv2; j < nv; j += W) {
      for (Index r = r0; r < r_end; ++r) {
        V acc(S(0));
        for (Index i = 0; i < k; ++i) acc = xsimd::fma(V(a[r * lda + i]), V::load_unaligned(b + i * ldb + j), acc);
        finish(r, j, acc);
      }
    }
    for (Index j = nv; j < n; ++j) {
      for (Index r = r0; r < r_end; ++r) {
        S s(0);
        for (Index i = 0; i < k; ++i) s = xsimd::fma(a[r * lda + i], b[i * ldb + j], s);
        store(c[r * ldc + j], s, alpha, beta);
      }
    }
  }
}

MOE_KERNELS_END_SIMD_CODE

}  // namespace detail

/// C = alpha op(A) op(B) + beta C, every operand a row-major view (ConstMatrixRef / MatrixRef:
/// unit inner stride, any outer stride). beta = 0 overwrites C without reading it. Shapes are
/// checked: op(A) is [m, k], op(B) is [k, n], C is [m, n]; k = 0 gives beta C.
///
/// Kernel choice: op(A) = A (its rows are C's rows) with at most rowwise_max_rows rows, or any
/// row count under GemmKernel::batch_invariant, runs the row-wise kernel; everything else runs
/// Eigen's GEMM. Neither depends on the thread count, and C may not alias A or B.
template <class Arch = xsimd::default_arch, class S>
void gemm(MatrixRef<std::type_identity_t<S>> c, const ConstMatrixRef<std::type_identity_t<S>>& a, Op op_a,
          const ConstMatrixRef<std::type_identity_t<S>>& b, Op op_b, S alpha, S beta,
          GemmKernel kernel = GemmKernel::fast) {
  const Index m = op_a == Op::none ? a.rows() : a.cols();
  const Index k = op_a == Op::none ? a.cols() : a.rows();
  const Index kb = op_b == Op::none ? b.rows() : b.cols();
  const Index n = op_b == Op::none ? b.cols() : b.rows();
  if (k != kb || c.rows() != m || c.cols() != n) {
    moe::detail::throw_invalid("kernels::gemm()", "operand shapes", "op(A) [m, k] x op(B) [k, n] -> C [m, n]",
                               moe::detail::concat("[", m, ", ", k, "] x [", kb, ", ", n, "] -> [", c.rows(), ", ",
                                                   c.cols(), "]"));
  }
  if (m == 0 || n == 0) return;
  if (k == 0) {
    if (beta == S(0)) {
      c.setZero();
    } else {
      c *= beta;
    }
    return;
  }
  const bool rowwise = op_a == Op::none && (kernel == GemmKernel::batch_invariant || m <= rowwise_max_rows);
  if (rowwise) {
    if (op_b == Op::transpose) {
      detail::rowwise_nt<Arch>(c.data(), c.outerStride(), a.data(), a.outerStride(), b.data(), b.outerStride(), m, n, k,
                               alpha, beta);
    } else {
      detail::rowwise_nn<Arch>(c.data(), c.outerStride(), a.data(), a.outerStride(), b.data(), b.outerStride(), m, n, k,
                               alpha, beta);
    }
    return;
  }
  if (beta == S(0)) {
    c.setZero();
  } else if (beta != S(1)) {
    c *= beta;
  }
  constexpr int R = Eigen::RowMajor;
  constexpr int C = Eigen::ColMajor;
  const S* pa = a.data();
  const S* pb = b.data();
  const Index la = a.outerStride();
  const Index lb = b.outerStride();
  if (op_a == Op::none && op_b == Op::none) {
    detail::eigen_gemm<R, R>(c.data(), c.outerStride(), pa, la, pb, lb, m, n, k, alpha);
  } else if (op_a == Op::none) {
    detail::eigen_gemm<R, C>(c.data(), c.outerStride(), pa, la, pb, lb, m, n, k, alpha);
  } else if (op_b == Op::none) {
    detail::eigen_gemm<C, R>(c.data(), c.outerStride(), pa, la, pb, lb, m, n, k, alpha);
  } else {
    detail::eigen_gemm<C, C>(c.data(), c.outerStride(), pa, la, pb, lb, m, n, k, alpha);
  }
}

/// Allocates the per-thread buffers gemm works in (detail::ThreadBuffers, fixed sizes: about
/// 1.9 MiB for float, twice that for double) on the calling thread and, the first time a pool
/// meets S, on each of its threads. Called before the library spreads products over a pool
/// (run_experts, MoELayer::backward), so that whether a call allocates never depends on which
/// thread happens to take which task.
template <class S>
void prepare_threads(ThreadPool* pool) {
  (void)detail::ThreadBuffers<S>::get();
  if (pool != nullptr && pool->size() > 1)
    pool->setup_threads_once(moe::detail::thread_setup_key<detail::ThreadBuffers<S>>(),
                             [](Index) { (void)detail::ThreadBuffers<S>::get(); });
}

}  // namespace kernels
}  // namespace moe

#endif  // MOE_KERNELS_GEMM_HPP
