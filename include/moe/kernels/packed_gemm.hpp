// Products with weights packed once, in the microkernel's panel layout: C = A B^T for a weight
// B [n, k] (the Hugging Face [out, in] orientation) that does not change between calls.
//
// A general GEMM packs both operands into panels on every call. Expert weights are constant
// between calls, so PackedMatrix packs them once (at construction or load) and packed_gemm
// streams them straight into a register-blocked microkernel; only the activations, a few
// percent of the traffic, are packed per call (into a fixed per-thread buffer).
//
// Every element of C is one chain of multiply-adds over the depth in order, starting from 0:
// c = 0; for p = 0, 1, ..., k-1: c = c + a[p] b[p] (fused where the architecture has FMA,
// packed_fused<S, Arch>). Blocks of the depth store the partial chain in C and pick it up
// again, which changes no bit. So an element depends on its row of A and its row of B only:
// a token gets the same bits in any batch and at any place in it (batch invariance for free),
// and the scalar twin reference::packed_gemm gives the same bits.
//
// bf16 weights (PackedMatrix<bf16>, depth in pairs) multiply activations rounded to bf16, two
// depth elements at a time, accumulating in float: with AVX512-BF16 one VDPBF16PS per 16
// columns and pair; elsewhere the same arithmetic in float FMAs (the products of two bf16 are
// exact in float, so both are c = round(c + a1 b1), then c = round(c + a0 b0)).
// docs/kernels.md, "Packed products".
#ifndef MOE_KERNELS_PACKED_GEMM_HPP
#define MOE_KERNELS_PACKED_GEMM_HPP

#include <moe/core/error.hpp>
#include <moe/core/thread_pool.hpp>
#include <moe/core/types.hpp>
#include <moe/kernels/arch.hpp>
#include <moe/kernels/weight_types.hpp>

#include <Eigen/Core>
#include <algorithm>
#include <array>
#include <bit>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>
#include <xsimd/xsimd.hpp>

#if defined(__AVX512F__) || defined(__AVX512BF16__)
#include <immintrin.h>
#endif

namespace moe::kernels {

/// Whether packed_gemm's multiply-add on Arch is one fused operation (AVX-512, FMA3) or a
/// multiply rounded before the add (SSE2, AVX, AVX2 without FMA).
template <class Arch>
inline constexpr bool packed_fused = std::is_base_of_v<xsimd::avx512f, Arch> ||
                                     std::is_base_of_v<xsimd::fma3<xsimd::avx2>, Arch> ||
                                     std::is_base_of_v<xsimd::fma3<xsimd::avx>, Arch>;

/// Whether packed_gemm runs bf16 weights with VDPBF16PS on Arch (an AVX-512 architecture in a
/// translation unit compiled for AVX512-BF16); otherwise with float FMAs, the same bits.
template <class Arch>
inline constexpr bool packed_bf16_native =
#if defined(__AVX512BF16__)
    std::is_base_of_v<xsimd::avx512f, Arch>;
#else
    false;
#endif

/// The packed layout and blocking for activations S and weights W on Arch.
///  - nr: columns of C per weight panel, two vectors (AVX-512 float: 32);
///  - mr: rows of A per register tile: 2 mr accumulators, plus two weight vectors and a
///    broadcast, fill the register file (32 vectors on AVX-512: 12; 16 elsewhere: 6);
///  - group: depth elements stored together in a panel (1; bf16: 2, one VDPBF16PS pair);
///  - kc: depth per block: a tile of A (mr x kc, 24 KiB) stays in L1 while the weight panels of
///    the block stream from L2 (kc x nr elements each: 64 KiB for float and for bf16 pairs);
///    a product of one tile of rows takes the whole depth in one block (decode streams the
///    weight in one sequential pass);
///  - nc: columns per block, kc x nc weights (512 KiB) kept in L2 across the tiles;
///  - mc: rows of A packed at a time, the per-thread buffer (mc x kc, 384 KiB on AVX-512).
/// Chosen by measurement on AMD Zen 5 (1 MiB L2, 48 KiB L1; docs/kernels.md).
template <class S, class W, class Arch>
struct PackedTile {
  static constexpr Index lanes = detail::lanes<S, Arch>;
  static constexpr Index nr = 2 * lanes;
  static constexpr Index mr = sizeof(typename xsimd::batch<S, Arch>::register_type) >= 64 ? 12 : 6;
  static constexpr Index group = std::is_same_v<W, bf16> ? 2 : 1;
  static constexpr Index kc = std::is_same_v<W, bf16> ? 1024 : 512;
  static constexpr Index nc = std::max<Index>(nr, (Index{512} << 10) / (kc * Index(sizeof(W))) / nr * nr);
  static constexpr Index mc = 16 * mr;
};

/// A weight B [n, k] in panels of nr rows: panel q holds rows [q nr, q nr + nr) (the last one
/// padded with zeros), depth-major, group consecutive depth elements per row together:
/// element (j, p) is at q kp nr + (p / g) nr g + (j % nr) g + p % g, kp = k rounded up to g
/// (the pad is zero). Built once by pack(); packing again with the same shape reuses the
/// storage. W is float, double or bf16.
template <class W>
class PackedMatrix {
 public:
  using element_type = W;

  PackedMatrix() = default;

  /// Packs b [n, k] (any Eigen matrix expression whose elements convert to W: a bf16 matrix
  /// from float rounds to nearest even) for panels of nr rows and depth groups of g.
  template <class Derived>
  void pack(const Eigen::MatrixBase<Derived>& b, Index nr, Index g = 1) {
    constexpr const char* where = "PackedMatrix::pack()";
    moe::detail::require(nr >= 1, where, "panel width nr", ">= 1", nr);
    moe::detail::require(g == 1 || g == 2, where, "depth group", "1 or 2", g);
    rows_ = b.rows();
    cols_ = b.cols();
    nr_ = nr;
    group_ = g;
    padded_cols_ = (cols_ + g - 1) / g * g;
    data_.resize(static_cast<std::size_t>(panels() * panel_stride()));
    for (Index q = 0; q < panels(); ++q) {
      W* panel = data_.data() + q * panel_stride();
      for (Index jj = 0; jj < nr_; ++jj) {
        const Index j = q * nr_ + jj;
        for (Index p = 0; p < padded_cols_; ++p) {
          W v = zero();
          if (j < rows_ && p < cols_) v = convert(b(j, p));
          panel[(p / g) * nr_ * g + jj * g + p % g] = v;
        }
      }
    }
  }

  [[nodiscard]] Index rows() const noexcept { return rows_; }
  [[nodiscard]] Index cols() const noexcept { return cols_; }
  /// The depth rounded up to the group (the packed depth).
  [[nodiscard]] Index padded_cols() const noexcept { return padded_cols_; }
  [[nodiscard]] Index nr() const noexcept { return nr_; }
  [[nodiscard]] Index group() const noexcept { return group_; }
  [[nodiscard]] bool empty() const noexcept { return data_.empty(); }
  [[nodiscard]] Index panels() const noexcept { return nr_ == 0 ? 0 : (rows_ + nr_ - 1) / nr_; }
  /// Elements per panel: padded_cols() nr().
  [[nodiscard]] Index panel_stride() const noexcept { return padded_cols_ * nr_; }
  /// Bytes of packed storage.
  [[nodiscard]] std::size_t bytes() const noexcept { return data_.size() * sizeof(W); }
  [[nodiscard]] const W* panel(Index q) const noexcept { return data_.data() + q * panel_stride(); }
  /// Element (j, p) of the packed weight, as stored.
  [[nodiscard]] W at(Index j, Index p) const noexcept {
    const Index q = j / nr_;
    return panel(q)[(p / group_) * nr_ * group_ + (j % nr_) * group_ + p % group_];
  }

 private:
  static W zero() noexcept {
    if constexpr (std::is_same_v<W, bf16>) {
      return bf16::from_bits(0);
    } else {
      return W(0);
    }
  }
  template <class T>
  static W convert(const T& v) noexcept {
    if constexpr (std::is_same_v<T, W>) {
      return v;
    } else if constexpr (std::is_same_v<W, bf16>) {
      return bf16(static_cast<float>(v));
    } else {
      return static_cast<W>(static_cast<float>(v));
    }
  }

  Index rows_ = 0;
  Index cols_ = 0;
  Index nr_ = 0;
  Index group_ = 1;
  Index padded_cols_ = 0;
  std::vector<W, Eigen::aligned_allocator<W>> data_;
};

/// Packs b [n, k] for packed_gemm on Arch with activations S.
template <class S, class Arch = xsimd::default_arch, class W, class Derived>
void pack_for(PackedMatrix<W>& packed, const Eigen::MatrixBase<Derived>& b) {
  using Tile = PackedTile<S, W, Arch>;
  packed.pack(b, Tile::nr, Tile::group);
}

/// Bytes of PackedMatrix<W> holding an [n, k] weight packed for Arch (panels padded to nr
/// rows, the depth to the group).
template <class S, class W, class Arch = xsimd::default_arch>
constexpr std::size_t packed_bytes(Index n, Index k) {
  using Tile = PackedTile<S, W, Arch>;
  const Index panels = (n + Tile::nr - 1) / Tile::nr;
  const Index depth = (k + Tile::group - 1) / Tile::group * Tile::group;
  return static_cast<std::size_t>(panels * Tile::nr * depth) * sizeof(W);
}

/// Which microkernel packed_gemm<Arch> runs for activations S and weights W, for reports:
/// "fma avx512bw 12x32", "dpbf16 avx512bw 12x32", "fma-emulated-bf16 fma3+avx2 6x16", ...
template <class S, class W, class Arch = xsimd::default_arch>
std::string packed_kernel_name() {
  using Tile = PackedTile<S, W, Arch>;
  std::string op;
  if constexpr (std::is_same_v<W, bf16>) {
    op = packed_bf16_native<Arch> ? "dpbf16" : (packed_fused<Arch> ? "fma-bf16" : "muladd-bf16");
  } else {
    op = packed_fused<Arch> ? "fma" : "muladd";
  }
  return op + " " + Arch::name() + " " + std::to_string(Tile::mr) + "x" + std::to_string(Tile::nr);
}

namespace detail {

/// Elements of the per-thread packed-activation buffer: PackedTile mc x kc / group, the
/// largest over the architectures (AVX-512: 192 rows x 512; bf16 pairs: 192 x 512 uint32).
inline constexpr Index packed_activation_elements = Index{16} * 12 * 512;

/// The calling thread's buffer of packed activations, elements of T (S, or uint32 bf16 pairs),
/// allocated at its first packed product (or prepare_packed_threads) and never again.
template <class T>
struct PackedActivations {
  static T* get() {
    thread_local std::vector<T, Eigen::aligned_allocator<T>> buffer;
    if (buffer.empty()) buffer.resize(static_cast<std::size_t>(packed_activation_elements));
    return buffer.data();
  }
};

MOE_KERNELS_BEGIN_SIMD_CODE

/// c + a b: one fused operation where Arch has FMA, else a b rounded, then the add.
template <class Arch, class V>
inline V madd(const V& a, const V& b, const V& c) {
#if XSIMD_WITH_AVX512F
  if constexpr (std::is_base_of_v<xsimd::avx512f, Arch>) {
    if constexpr (std::is_same_v<typename V::value_type, float>) {
      return V(_mm512_fmadd_ps(a, b, c));
    } else {
      return V(_mm512_fmadd_pd(a, b, c));
    }
  } else
#endif
  if constexpr (packed_fused<Arch>) {
    return xsimd::fma(a, b, c);
  } else {
    const V prod = a * b;
    return prod + c;
  }
}

/// A float from the low (even depth element) or high (odd) half of a bf16 pair.
template <class Arch>
inline xsimd::batch<float, Arch> bf16_even(const xsimd::batch<std::uint32_t, Arch>& pairs) {
  return xsimd::bitwise_cast<xsimd::batch<float, Arch>>(pairs << 16);
}
template <class Arch>
inline xsimd::batch<float, Arch> bf16_odd(const xsimd::batch<std::uint32_t, Arch>& pairs) {
  return xsimd::bitwise_cast<xsimd::batch<float, Arch>>(pairs & xsimd::batch<std::uint32_t, Arch>(0xffff0000u));
}

/// Depth steps ahead at which the microkernel prefetches its weight panel (8 KiB for a float
/// panel of 32 columns): the panel streams from memory on a tile's first pass, and the
/// hardware prefetcher alone leaves decode at about 75 % of the bandwidth here (Zen 5: 34
/// against 46 GB/s for float weights at m = 1). Past the panel's end it touches the next
/// panel or nothing of use; a prefetch never faults.
inline constexpr Index prefetch_distance = 64;

/// Asks for the two cache lines `steps` depth steps of `step_bytes` past p. The address is
/// computed as an integer: it may lie past the panel's storage, where a pointer may not point.
inline void prefetch_weights(const void* p, Index steps, Index step_bytes) {
  const std::uintptr_t at = reinterpret_cast<std::uintptr_t>(p) + static_cast<std::uintptr_t>(steps * step_bytes);
  __builtin_prefetch(reinterpret_cast<const void*>(at));
  __builtin_prefetch(reinterpret_cast<const void*>(at + 64));
}

/// The register tile: C[R x nr] (cols of its nr valid) = its value (or 0 when first) plus the
/// chains over the kt depth elements of the block. x: the tile of A, [kt / g][R] (float, or
/// bf16 pairs as uint32); w: the panel at the block's depth, [kt / g][nr][g].
template <class Arch, class S, class W, Index R>
void packed_tile(const void* x_tile, const W* w, Index kt, S* c, Index ldc, Index cols, bool first) {
  using V = xsimd::batch<S, Arch>;
  using Tile = PackedTile<S, W, Arch>;
  constexpr Index L = Tile::lanes;
  constexpr Index nr = Tile::nr;
  V acc0[R];
  V acc1[R];
  alignas(64) S edge[R * nr];
  const bool full = cols == nr;
  if (first) {
#pragma GCC unroll 16
    for (Index r = 0; r < R; ++r) acc0[r] = acc1[r] = V(S(0));
  } else if (full) {
#pragma GCC unroll 16
    for (Index r = 0; r < R; ++r) {
      acc0[r] = V::load_unaligned(c + r * ldc);
      acc1[r] = V::load_unaligned(c + r * ldc + L);
    }
  } else {
#pragma GCC unroll 16
    for (Index r = 0; r < R; ++r) {
      std::fill(edge + r * nr, edge + (r + 1) * nr, S(0));
      std::copy(c + r * ldc, c + r * ldc + cols, edge + r * nr);
      acc0[r] = V::load_aligned(edge + r * nr);
      acc1[r] = V::load_aligned(edge + r * nr + L);
    }
  }
  if constexpr (std::is_same_v<W, bf16>) {
    static_assert(std::is_same_v<S, float>, "bf16 weights multiply float activations");
    const auto* x = static_cast<const std::uint32_t*>(x_tile);
    const Index pairs = kt / 2;
#if defined(__AVX512BF16__)
    if constexpr (packed_bf16_native<Arch>) {
      for (Index p = 0; p < pairs; ++p) {
        const W* wp = w + p * 2 * nr;
        prefetch_weights(wp, prefetch_distance, 2 * nr * Index(sizeof(W)));
        const auto b0 = (__m512bh)_mm512_load_si512(static_cast<const void*>(wp));
        const auto b1 = (__m512bh)_mm512_load_si512(static_cast<const void*>(wp + nr));
#pragma GCC unroll 16
        for (Index r = 0; r < R; ++r) {
          const auto a = (__m512bh)_mm512_set1_epi32(static_cast<int>(x[p * R + r]));
          acc0[r] = V(_mm512_dpbf16_ps(acc0[r], a, b0));
          acc1[r] = V(_mm512_dpbf16_ps(acc1[r], a, b1));
        }
      }
    } else
#endif
    {
      using U = xsimd::batch<std::uint32_t, Arch>;
      for (Index p = 0; p < pairs; ++p) {
        prefetch_weights(w + p * 2 * nr, prefetch_distance, 2 * nr * Index(sizeof(W)));
        const auto* wp = reinterpret_cast<const std::uint32_t*>(w + p * 2 * nr);
        const U u0 = U::load_aligned(wp);
        const U u1 = U::load_aligned(wp + L);
        const V w0e = bf16_even<Arch>(u0), w0o = bf16_odd<Arch>(u0);
        const V w1e = bf16_even<Arch>(u1), w1o = bf16_odd<Arch>(u1);
#pragma GCC unroll 16
        for (Index r = 0; r < R; ++r) {
          const U a(x[p * R + r]);
          const V ae = bf16_even<Arch>(a), ao = bf16_odd<Arch>(a);
          acc0[r] = madd<Arch>(ae, w0e, madd<Arch>(ao, w0o, acc0[r]));
          acc1[r] = madd<Arch>(ae, w1e, madd<Arch>(ao, w1o, acc1[r]));
        }
      }
    }
  } else {
    const S* x = static_cast<const S*>(x_tile);
    for (Index p = 0; p < kt; ++p) {
      prefetch_weights(w + p * nr, prefetch_distance, nr * Index(sizeof(S)));
      const V b0 = V::load_aligned(w + p * nr);
      const V b1 = V::load_aligned(w + p * nr + L);
#pragma GCC unroll 16
      for (Index r = 0; r < R; ++r) {
        const V a(x[p * R + r]);
        acc0[r] = madd<Arch>(a, b0, acc0[r]);
        acc1[r] = madd<Arch>(a, b1, acc1[r]);
      }
    }
  }
  if (full) {
#pragma GCC unroll 16
    for (Index r = 0; r < R; ++r) {
      acc0[r].store_unaligned(c + r * ldc);
      acc1[r].store_unaligned(c + r * ldc + L);
    }
  } else {
#pragma GCC unroll 16
    for (Index r = 0; r < R; ++r) {
      acc0[r].store_aligned(edge + r * nr);
      acc1[r].store_aligned(edge + r * nr + L);
      std::copy(edge + r * nr, edge + r * nr + cols, c + r * ldc);
    }
  }
}

MOE_KERNELS_END_SIMD_CODE

/// packed_tile for R rows, R chosen at run time from 1 to mr.
template <class Arch, class S, class W, std::size_t... R>
constexpr auto packed_tile_table(std::index_sequence<R...>) {
  using Fn = void (*)(const void*, const W*, Index, S*, Index, Index, bool);
  return std::array<Fn, sizeof...(R)>{&packed_tile<Arch, S, W, Index(R + 1)>...};
}

/// Packs rows [0, mt) of A (stride lda) at depth [p0, p0 + kt) into tiles of mr rows, tile t at
/// dst + t mr kt / g as [kt / g][rows of the tile]; depth past k (the bf16 pad) is zero. bf16
/// weights: each activation rounded to bf16, pairs (even, odd) in one uint32 (even low).
template <class S, class W, class T>
void pack_activations(const S* a, Index lda, Index mt, Index p0, Index kt, Index k, Index mr, T* dst) {
  for (Index r0 = 0; r0 < mt; r0 += mr) {
    const Index rows = std::min(mr, mt - r0);
    T* tile = dst + r0 * kt / (std::is_same_v<W, bf16> ? 2 : 1);
    for (Index r = 0; r < rows; ++r) {
      const S* row = a + (r0 + r) * lda;
      if constexpr (std::is_same_v<W, bf16>) {
        for (Index q = 0; q < kt / 2; ++q) {
          const Index p = p0 + 2 * q;
          const std::uint32_t lo = p < k ? bf16(row[p]).bits : 0u;
          const std::uint32_t hi = p + 1 < k ? bf16(row[p + 1]).bits : 0u;
          tile[q * rows + r] = lo | (hi << 16);
        }
      } else {
        for (Index p = 0; p < kt; ++p) tile[p * rows + r] = row[p0 + p];
      }
    }
  }
}

template <class Arch, class S, class W>
void packed_gemm(S* c, Index ldc, const S* a, Index lda, const PackedMatrix<W>& b, Index m) {
  using Tile = PackedTile<S, W, Arch>;
  using T = std::conditional_t<std::is_same_v<W, bf16>, std::uint32_t, S>;
  constexpr Index nr = Tile::nr;
  constexpr Index mr = Tile::mr;
  constexpr Index g = Tile::group;
  const Index n = b.rows();
  const Index k = b.cols();
  const Index kp = b.padded_cols();
  static constexpr auto tiles = packed_tile_table<Arch, S, W>(std::make_index_sequence<std::size_t(mr)>{});
  static_assert(Tile::mc * Tile::kc / g <= packed_activation_elements);
  T* xbuf = PackedActivations<T>::get();
  // One tile of rows (decode, a small slab): the whole depth in one block, so each panel, and
  // the weight with it, streams from memory in one sequential pass.
  const Index kc = m <= mr && m * kp / g <= packed_activation_elements ? kp : Tile::kc;
  for (Index p0 = 0; p0 < kp; p0 += kc) {
    const Index kt = std::min(kc, kp - p0);
    const bool first = p0 == 0;
    for (Index i0 = 0; i0 < m; i0 += Tile::mc) {
      const Index mt = std::min(Tile::mc, m - i0);
      pack_activations<S, W>(a + i0 * lda, lda, mt, p0, kt, k, mr, xbuf);
      for (Index j0 = 0; j0 < n; j0 += Tile::nc) {
        const Index j_end = std::min(n, j0 + Tile::nc);
        for (Index r0 = 0; r0 < mt; r0 += mr) {
          const Index rows = std::min(mr, mt - r0);
          const T* x_tile = xbuf + r0 * kt / g;
          S* c_rows = c + (i0 + r0) * ldc;
          for (Index j = j0; j < j_end; j += nr) {
            const W* w = b.panel(j / nr) + p0 * nr;
            tiles[static_cast<std::size_t>(rows - 1)](x_tile, w, kt, c_rows + j, ldc, std::min(nr, n - j), first);
          }
        }
      }
    }
  }
}

}  // namespace detail

/// C [m, n] = A [m, k] B^T for a weight B [n, k] packed by pack_for<S, Arch> (C is overwritten
/// and may not alias A). Each element is its depth chain in order (see the top of this file),
/// so a row of C depends on its row of A only, and the result is bit for bit
/// reference::packed_gemm(c, a, B, packed_fused<Arch>). Throws std::invalid_argument when the
/// shapes disagree or B was packed for another architecture's layout. No allocation after a
/// thread's first call.
template <class Arch = xsimd::default_arch, class W, class S = typename weight_traits<W>::compute_type>
void packed_gemm(MatrixRef<std::type_identity_t<S>> c, const ConstMatrixRef<std::type_identity_t<S>>& a,
                 const PackedMatrix<W>& b) {
  using Tile = PackedTile<S, W, Arch>;
  constexpr const char* where = "kernels::packed_gemm()";
  if (a.cols() != b.cols() || c.rows() != a.rows() || c.cols() != b.rows()) {
    moe::detail::throw_invalid(where, "operand shapes", "A [m, k] x packed B [n, k] -> C [m, n]",
                               moe::detail::concat("[", a.rows(), ", ", a.cols(), "] x [", b.rows(), ", ", b.cols(),
                                                   "] -> [", c.rows(), ", ", c.cols(), "]"));
  }
  if (b.nr() != Tile::nr || b.group() != Tile::group) {
    moe::detail::throw_invalid(where, "packed layout", moe::detail::concat("panels of ", Tile::nr, ", depth group ",
                                                                           Tile::group, " (", Arch::name(), ")"),
                               moe::detail::concat("panels of ", b.nr(), ", depth group ", b.group(),
                                                   " (packed for another architecture)"));
  }
  if (c.rows() == 0 || c.cols() == 0) return;
  if (a.cols() == 0) {
    c.setZero();
    return;
  }
  detail::packed_gemm<Arch, S, W>(c.data(), c.outerStride(), a.data(), a.outerStride(), b, a.rows());
}

/// Allocates the packed-activation buffers (detail::packed_activation_elements: 384 KiB each
/// for float) on the calling thread and, the first time a pool meets S, on each of its
/// threads: for S, and for float also the bf16 pairs. Called before products are spread over
/// a pool (LocalExecutor), so which thread takes which task never decides whether a call
/// allocates.
template <class S>
void prepare_packed_threads(ThreadPool* pool) {
  const auto setup = [](Index) {
    (void)detail::PackedActivations<S>::get();
    if constexpr (std::is_same_v<S, float>) (void)detail::PackedActivations<std::uint32_t>::get();
  };
  setup(0);
  if (pool != nullptr && pool->size() > 1)
    pool->setup_threads_once(moe::detail::thread_setup_key<detail::PackedActivations<S>>(), setup);
}

}  // namespace moe::kernels

#endif  // MOE_KERNELS_PACKED_GEMM_HPP
