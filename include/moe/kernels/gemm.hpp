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
//
// The weight operand B may hold another element type W than the activations (bf16, ...;
// weight_types.hpp): both kernels then widen it to S as they go, Eigen's a panel at a time into
// a fixed per-thread buffer, the row-wise one a vector at a time, and run the S code on the
// widened values, so the result is the S product with B widened first, bit for bit.
#ifndef MOE_KERNELS_GEMM_HPP
#define MOE_KERNELS_GEMM_HPP

#include <moe/core/context.hpp>
#include <moe/core/error.hpp>
#include <moe/core/thread_pool.hpp>
#include <moe/core/types.hpp>
#include <moe/kernels/arch.hpp>
#include <moe/kernels/op.hpp>
#include <moe/kernels/weight_types.hpp>

#include <Eigen/Core>
#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>
#include <xsimd/xsimd.hpp>

namespace moe {
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
    use_thread_buffers();
  }

  /// The blocking of another product, given as its (kc, mc, nc): a part of that product run on
  /// its own with it is cut into the same panels (eigen_gemm_widened).
  struct Sizes {
    Index kc, mc, nc;
  };
  explicit ThreadBlocking(Sizes sizes) {
    this->m_kc = sizes.kc;
    this->m_mc = sizes.mc;
    this->m_nc = sizes.nc;
    use_thread_buffers();
  }

 private:
  void use_thread_buffers() {
    ThreadBuffers<S>& buffers = ThreadBuffers<S>::get();
    this->m_blockA = buffers.a.data();
    this->m_blockB = buffers.b.data();
  }
};

/// The calling thread's buffer for weight panels widened to S (eigen_gemm_widened), allocated
/// on first use at the fixed size of Eigen's packed weight panel, PackingCapacity kc x mc. Only
/// products with weights of another element type use it.
template <class S>
struct WideningBuffer {
  std::vector<S, Eigen::aligned_allocator<S>> panel;

  static WideningBuffer& get() {
    thread_local WideningBuffer buffer;
    if (buffer.panel.empty()) {
      using Cap = PackingCapacity<S>;
      buffer.panel.resize(static_cast<std::size_t>(Cap::kc * Cap::mc));
    }
    return buffer;
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

/// c += alpha op(a) op(widen(b)) with Eigen's GEMM, for weights b of element type W != S.
/// Eigen runs a row-major product transposed, so B (our [k, n] or [n, k] operand) is its lhs:
/// it packs B in panels of mc of our columns by kc of the depth, in that loop order, and adds
/// each panel's product into C. This runs the same loop one panel at a time: widen the panel
/// into WideningBuffer, then hand Eigen exactly that part of the product with the blocking the
/// whole product would have had. Eigen then packs the same values into the same panels, and
/// every element of C receives the same sequence of updates as in eigen_gemm on widened B.
/// (Under EIGEN_USE_BLAS each part is one BLAS call: accurate, but not the BLAS's whole-product
/// bits.)
template <int LhsOrder, int RhsOrder, class S, class W>
void eigen_gemm_widened(S* c, Index ldc, const S* a, Index lda, const W* b, Index ldb, Index m, Index n, Index k,
                        S alpha) {
  static_assert(weight_traits<W>::block == 1, "gemm widens weights element by element: no block formats yet");
  const ThreadBlocking<S> whole(m, n, k);
  const Index kc = whole.kc();
  const Index mc = std::min(n, whole.mc());
  const typename ThreadBlocking<S>::Sizes sizes{kc, whole.mc(), whole.nc()};
  S* panel = WideningBuffer<S>::get().panel.data();
  for (Index i2 = 0; i2 < n; i2 += mc) {
    const Index mt = std::min(i2 + mc, n) - i2;
    for (Index k2 = 0; k2 < k; k2 += kc) {
      const Index kt = std::min(k2 + kc, k) - k2;
      Index ldp = 0;
      if constexpr (RhsOrder == Eigen::RowMajor) {  // op(B) = B, [k, n]: rows k2.., columns i2..
        for (Index i = 0; i < kt; ++i) weight_traits<W>::widen(b + (k2 + i) * ldb + i2, panel + i * mt, mt);
        ldp = mt;
      } else {  // op(B) = B^T, B [n, k]: rows i2.., columns k2..
        for (Index j = 0; j < mt; ++j) weight_traits<W>::widen(b + (i2 + j) * ldb + k2, panel + j * kt, kt);
        ldp = kt;
      }
      const S* a_part = LhsOrder == Eigen::RowMajor ? a + k2 : a + k2 * lda;
      ThreadBlocking<S> blocking(sizes);
      Eigen::internal::general_matrix_matrix_product<Index, S, LhsOrder, false, S, RhsOrder, false, Eigen::RowMajor,
                                                     1>::run(m, mt, kt, a_part, lda, panel, ldp, c + i2, 1, ldc, alpha,
                                                             blocking);
    }
  }
}

/// Writes one finished element: c = alpha acc (beta = 0) or beta c + alpha acc.
template <class S>
inline void store(S& c, S acc, S alpha, S beta) {
  c = beta == S(0) ? alpha * acc : beta * c + alpha * acc;
}

MOE_KERNELS_BEGIN_SIMD_CODE

/// One batch of weights from p as V's scalar: a plain load for W = S (the code is then exactly
/// the S kernel's), else the W values widened into a stack array and loaded from there.
template <class V, class W>
inline V load_weights(const W* p) {
  using S = typename V::value_type;
  if constexpr (std::is_same_v<W, S>) {
    return V::load_unaligned(p);
  } else {
    static_assert(weight_traits<W>::block == 1, "gemm widens weights element by element: no block formats yet");
    alignas(V::arch_type::alignment()) S lane[V::size];
    weight_traits<W>::widen(p, lane, static_cast<Index>(V::size));
    return V::load_aligned(lane);
  }
}

/// One weight as S: *p for W = S, else widened.
template <class S, class W>
inline S weight_at(const W* p) {
  if constexpr (std::is_same_v<W, S>) {
    return *p;
  } else {
    return widen(*p);
  }
}

/// The end of one row-wise dot product: the lanes' sum, then the scalar tail in order. Every
/// element of C = A B^T goes through exactly this, whichever block computed its lanes.
template <class Arch, class S, class Wt>
inline S finish_dot(const xsimd::batch<S, Arch>& acc, const S* a, const Wt* b, Index from, Index k) {
  S s = xsimd::hadd(acc);
  for (Index i = from; i < k; ++i) s += a[i] * weight_at<S>(b + i);
  return s;
}

/// C = alpha A B^T + beta C with B given as [n, k] rows (the Hugging Face [out, in] weight):
/// element (r, j) = dot(A row r, B row j), accumulated lane-wise over k in order, then
/// finish_dot. Blocks of 4 x 4 elements share loads; a leftover element runs the same
/// operations alone, so no element's bits depend on its neighbours.
template <class Arch, class S, class Wt>
void rowwise_nt(S* c, Index ldc, const S* a, Index lda, const Wt* b, Index ldb, Index m, Index n, Index k, S alpha,
                S beta) {
  using V = xsimd::batch<S, Arch>;
  constexpr Index W = lanes<S, Arch>;
  const Index kv = k - k % W;
  constexpr Index panel = 64;  // rows of A kept in L2 while B streams past
  const auto one = [&](Index r, Index j) {
    const S* ar = a + r * lda;
    const Wt* bj = b + j * ldb;
    V acc(S(0));
    for (Index i = 0; i < kv; i += W) acc = xsimd::fma(V::load_unaligned(ar + i), load_weights<V>(bj + i), acc);
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
            const V bv = load_weights<V>(b + (j + jj) * ldb + i);
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
template <class Arch, class S, class Wt>
void axpy_columns(S* c, Index ldc, const S* a, Index lda, const Wt* b, Index ldb, Index m, Index n, Index k,
                  S alpha, S beta, S* acc) {
  using V = xsimd::batch<S, Arch>;
  constexpr Index W = lanes<S, Arch>;
  const Index nv = n - n % W;
  std::fill(acc, acc + m * n, S(0));
  Index i = 0;
  for (; i + 4 <= k; i += 4) {  // four rows of B per pass: the accumulators move a quarter as often
    const Wt* b0 = b + i * ldb;
    const Wt* b1 = b0 + ldb;
    const Wt* b2 = b1 + ldb;
    const Wt* b3 = b2 + ldb;
    for (Index r = 0; r < m; ++r) {
      S* ar = acc + r * n;
      const S* arow = a + r * lda + i;
      const V a0(arow[0]), a1(arow[1]), a2(arow[2]), a3(arow[3]);
      for (Index j = 0; j < nv; j += W) {
        V v = V::load_unaligned(ar + j);
        v = xsimd::fma(a0, load_weights<V>(b0 + j), v);
        v = xsimd::fma(a1, load_weights<V>(b1 + j), v);
        v = xsimd::fma(a2, load_weights<V>(b2 + j), v);
        v = xsimd::fma(a3, load_weights<V>(b3 + j), v);
        v.store_unaligned(ar + j);
      }
      for (Index j = nv; j < n; ++j) {
        S v = ar[j];
        v = xsimd::fma(arow[0], weight_at<S>(b0 + j), v);
        v = xsimd::fma(arow[1], weight_at<S>(b1 + j), v);
        v = xsimd::fma(arow[2], weight_at<S>(b2 + j), v);
        v = xsimd::fma(arow[3], weight_at<S>(b3 + j), v);
        ar[j] = v;
      }
    }
  }
  for (; i < k; ++i) {
    const Wt* bi = b + i * ldb;
    for (Index r = 0; r < m; ++r) {
      S* ar = acc + r * n;
      const S air = a[r * lda + i];
      const V av(air);
      for (Index j = 0; j < nv; j += W)
        xsimd::fma(av, load_weights<V>(bi + j), V::load_unaligned(ar + j)).store_unaligned(ar + j);
      for (Index j = nv; j < n; ++j) ar[j] = xsimd::fma(air, weight_at<S>(bi + j), ar[j]);
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
template <class Arch, class S, class Wt>
void rowwise_nn_axpy(S* c, Index ldc, const S* a, Index lda, const Wt* b, Index ldb, Index m, Index n, Index k,
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
template <class Arch, class S, class Wt>
void rowwise_nn(S* c, Index ldc, const S* a, Index lda, const Wt* b, Index ldb, Index m, Index n, Index k, S alpha,
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
          const V b0 = load_weights<V>(b + i * ldb + j);
          const V b1 = load_weights<V>(b + i * ldb + j + W);
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
          acc0 = xsimd::fma(av, load_weights<V>(b + i * ldb + j), acc0);
          acc1 = xsimd::fma(av, load_weights<V>(b + i * ldb + j + W), acc1);
        }
        finish(r, j, acc0);
        finish(r, j + W, acc1);
      }
    }
    for (Index j = nv2; j < nv; j += W) {
      for (Index r = r0; r < r_end; ++r) {
        V acc(S(0));
        for (Index i = 0; i < k; ++i) acc = xsimd::fma(V(a[r * lda + i]), load_weights<V>(b + i * ldb + j), acc);
        finish(r, j, acc);
      }
    }
    for (Index j = nv; j < n; ++j) {
      for (Index r = r0; r < r_end; ++r) {
        S s(0);
        for (Index i = 0; i < k; ++i) s = xsimd::fma(a[r * lda + i], weight_at<S>(b + i * ldb + j), s);
        store(c[r * ldc + j], s, alpha, beta);
      }
    }
  }
}

MOE_KERNELS_END_SIMD_CODE

}  // namespace detail

namespace detail {

/// gemm for weights b of element type W (W = S: the S product, and the code is exactly that).
template <class Arch, class S, class W>
void gemm(MatrixRef<S> c, const ConstMatrixRef<S>& a, Op op_a, const ConstMatrixRef<W>& b, Op op_b, S alpha, S beta,
          GemmKernel kernel) {
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
      rowwise_nt<Arch>(c.data(), c.outerStride(), a.data(), a.outerStride(), b.data(), b.outerStride(), m, n, k, alpha,
                       beta);
    } else {
      rowwise_nn<Arch>(c.data(), c.outerStride(), a.data(), a.outerStride(), b.data(), b.outerStride(), m, n, k, alpha,
                       beta);
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
  const W* pb = b.data();
  const Index la = a.outerStride();
  const Index lb = b.outerStride();
  const auto run = [&]<int LhsOrder, int RhsOrder>() {
    if constexpr (std::is_same_v<W, S>) {
      eigen_gemm<LhsOrder, RhsOrder>(c.data(), c.outerStride(), pa, la, pb, lb, m, n, k, alpha);
    } else {
      eigen_gemm_widened<LhsOrder, RhsOrder>(c.data(), c.outerStride(), pa, la, pb, lb, m, n, k, alpha);
    }
  };
  if (op_a == Op::none && op_b == Op::none) {
    run.template operator()<R, R>();
  } else if (op_a == Op::none) {
    run.template operator()<R, C>();
  } else if (op_b == Op::none) {
    run.template operator()<C, R>();
  } else {
    run.template operator()<C, C>();
  }
}

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
  detail::gemm<Arch, S, S>(c, a, op_a, b, op_b, alpha, beta, kernel);
}

/// The same product with a weight operand B of another element type W (a row-major matrix or
/// view of W: RowMatrix<bf16>, a block of one, ConstMatrixRef<bf16>), whose weight_traits
/// widen it to S: C = alpha op(A) op(widen(B)) + beta C, the same bits as gemm on B widened to
/// S first (same kernel choice, same kernels; docs/kernels.md, "Weight element types"). A thread
/// also keeps a widened-panel buffer for S (detail::WideningBuffer), which
/// prepare_threads<S, W> sets up.
template <class Arch = xsimd::default_arch, class S, class BDerived>
  requires(!std::same_as<typename BDerived::Scalar, S> && WeightFor<typename BDerived::Scalar, S>)
void gemm(MatrixRef<std::type_identity_t<S>> c, const ConstMatrixRef<std::type_identity_t<S>>& a, Op op_a,
          const Eigen::MatrixBase<BDerived>& b, Op op_b, S alpha, S beta, GemmKernel kernel = GemmKernel::fast) {
  using W = typename BDerived::Scalar;
  const ConstMatrixRef<W> weights(b.derived());
  detail::gemm<Arch, S, W>(c, a, op_a, weights, op_b, alpha, beta, kernel);
}

/// Allocates the per-thread buffers gemm works in (detail::ThreadBuffers, fixed sizes: about
/// 1.9 MiB for float, twice that for double; with weights of another element type W, also
/// detail::WideningBuffer, 0.9 MiB for float) on the calling thread and, the first time a pool
/// meets S (and W), on each of its threads. Called before the library spreads products over a
/// pool (run_experts, MoELayer::backward), so that whether a call allocates never depends on
/// which thread happens to take which task.
template <class S, class W = S>
void prepare_threads(ThreadPool* pool) {
  (void)detail::ThreadBuffers<S>::get();
  if (pool != nullptr && pool->size() > 1)
    pool->setup_threads_once(moe::detail::thread_setup_key<detail::ThreadBuffers<S>>(),
                             [](Index) { (void)detail::ThreadBuffers<S>::get(); });
  if constexpr (!std::is_same_v<W, S>) {
    static_assert(WeightFor<W, S>, "prepare_threads<S, W>: W must be a weight element that widens to S");
    (void)detail::WideningBuffer<S>::get();
    if (pool != nullptr && pool->size() > 1)
      pool->setup_threads_once(moe::detail::thread_setup_key<detail::WideningBuffer<S>>(),
                               [](Index) { (void)detail::WideningBuffer<S>::get(); });
  }
}

}  // namespace kernels
}  // namespace moe

#endif  // MOE_KERNELS_GEMM_HPP
