// Products with block-quantized weights (Q8_0, Q4_0, Q4_K): C = A B^T with A float activations
// [m, k] and B a quantized weight [n, k], as llama.cpp computes them: each row of A quantized
// to the weight format's 8-bit partner (Q8_0 for Q8_0 and Q4_0, Q8_K for Q4_K), integer dot
// products per block, the scales applied in float, blocks added in order. Element (i, j) of C
// is, bit for bit, reference::vec_dot_<format>(k, row j of B, quantized row i of A): the
// integer sums are exact whatever instructions form them, and every path applies the scales
// with the same float operations in the same order (docs/kernels.md, "Quantized products").
//
// Layout (QuantMatrix): the rows of B in panels of 16, each block of a panel stored as 4-byte
// groups of its 16 rows side by side (64 bytes: one AVX-512 register, two AVX2 ones), so one
// load feeds 16 (or 8) dot products and a broadcast 4 bytes of an activation row; scales in a
// separate array. The same layout serves every path, so a bank is packed once, at load, and
// holds no other copy: get_rows() gives GGUF's block bytes back exactly.
//
// Paths (quant_path<Arch>()): AVX512-VNNI (vpdpbusd on 16 lanes), AVX-VNNI (vpdpbusd on 8),
// AVX2 (vpmaddubsw + vpmaddwd on 8) and a portable scalar loop over the same layout. Nothing
// here knows of models.
#ifndef MOE_KERNELS_QUANT_GEMM_HPP
#define MOE_KERNELS_QUANT_GEMM_HPP

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include <Eigen/Core>
#include <xsimd/xsimd.hpp>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "moe/core/error.hpp"
#include "moe/core/thread_pool.hpp"
#include "moe/core/types.hpp"
#include "moe/kernels/arch.hpp"
#include "moe/kernels/quant_blocks.hpp"

namespace moe::kernels {

/// What the kernels need to know of a weight block format.
template <class Block>
struct quant_format;

template <>
struct quant_format<BlockQ8_0> {
  using activation_block = BlockQ8_0;  ///< the partner format activation rows are quantized to
  static constexpr Index elements = 32;       ///< elements per block
  static constexpr Index quant_bytes = 32;    ///< bytes of one row's quants in a block
  static constexpr Index scale_bytes = 2;     ///< bytes of one row's scales in a block
  static constexpr Index aux_per_block = 1;   ///< int32s per activation block (see QuantActivations)
  static constexpr const char* name = "Q8_0";
};
template <>
struct quant_format<BlockQ4_0> {
  using activation_block = BlockQ8_0;
  static constexpr Index elements = 32;
  static constexpr Index quant_bytes = 16;
  static constexpr Index scale_bytes = 2;
  static constexpr Index aux_per_block = 1;
  static constexpr const char* name = "Q4_0";
};
template <>
struct quant_format<BlockQ4_K> {
  using activation_block = BlockQ8_K;
  static constexpr Index elements = 256;
  static constexpr Index quant_bytes = 128;
  static constexpr Index scale_bytes = 2 + 2 + 8 + 8;  // d, dmin, 8 scales, 8 mins (6 bits each, a byte each)
  static constexpr Index aux_per_block = 8;             // sub-block sums of the quants
  static constexpr const char* name = "Q4_K";
};

/// A weight block format the quantized products take.
template <class Block>
concept QuantBlock = requires { quant_format<Block>::elements; };

/// Rows per panel of a QuantMatrix (16 int32 lanes of an AVX-512 register).
inline constexpr Index quant_panel_rows = 16;

/// A quantized weight [rows, cols] in the kernels' layout; see the top of this file. A row is
/// blocks_per_row() blocks: cols / block size, rounded up, the last block's elements past cols
/// zeros (a GGUF tensor's rows are whole blocks; a float checkpoint's need not be, and zeros
/// change neither the quantization of the other elements nor a product). Built from GGUF-layout blocks (from_blocks, set_rows) or from
/// float rows (quantize, quantize_rows, with the format's reference quantizer); get_rows()
/// and dequantize() give them back. Rows past the last whole panel are padded with zero
/// blocks, which the products never store.
template <QuantBlock Block>
class QuantMatrix {
 public:
  using block_type = Block;
  using format = quant_format<Block>;

  QuantMatrix() = default;
  /// rows x cols of zero blocks (scale 0, every element 0).
  QuantMatrix(Index rows, Index cols) { resize(rows, cols); }

  /// From rows * cols / elements blocks in GGUF's order (row after row).
  static QuantMatrix from_blocks(Index rows, Index cols, const Block* blocks) {
    QuantMatrix m(rows, cols);
    m.set_rows(0, rows, blocks);
    return m;
  }
  /// Quantizes w [rows, cols] row by row (kernels::quantize_row_*: ggml's reference quantizers).
  static QuantMatrix quantize(const ConstMatrixRef<float>& w) {
    QuantMatrix m(w.rows(), w.cols());
    m.quantize_rows(0, w);
    return m;
  }

  void resize(Index rows, Index cols) {
    constexpr const char* where = "kernels::QuantMatrix::resize()";
    moe::detail::require(rows >= 0, where, "rows", ">= 0", rows);
    moe::detail::require(cols >= 0, where, "cols", ">= 0", cols);
    rows_ = rows;
    cols_ = cols;
    blocks_ = (cols + format::elements - 1) / format::elements;
    panels_ = (rows + quant_panel_rows - 1) / quant_panel_rows;
    const auto cells = static_cast<std::size_t>(panels_ * blocks_ * quant_panel_rows);
    quants_.assign(cells * static_cast<std::size_t>(format::quant_bytes), zero_quant());
    scales_.assign(cells * static_cast<std::size_t>(format::scale_bytes), std::uint8_t{0});
  }

  [[nodiscard]] Index rows() const noexcept { return rows_; }
  [[nodiscard]] Index cols() const noexcept { return cols_; }
  [[nodiscard]] Index blocks_per_row() const noexcept { return blocks_; }
  [[nodiscard]] Index panels() const noexcept { return panels_; }
  /// Bytes held (quants and scales, padding rows included).
  [[nodiscard]] std::size_t bytes() const noexcept { return quants_.size() + scales_.size(); }
  /// Whether a row is whole blocks (no zero padding): what a GGUF tensor needs.
  [[nodiscard]] bool whole_blocks() const noexcept { return cols_ % format::elements == 0; }
  /// Bytes of the quants and scales of rows [0, rows) in GGUF's encoding (what a file holds).
  [[nodiscard]] std::size_t gguf_bytes() const noexcept {
    return static_cast<std::size_t>(rows_ * blocks_) * sizeof(Block);
  }

  /// Rows [first, first + count) from count * blocks_per_row() GGUF-layout blocks (with cols
  /// not whole blocks, the elements past cols must be zeros: the products read them).
  void set_rows(Index first, Index count, const Block* blocks) {
    check_rows("kernels::QuantMatrix::set_rows()", first, count);
    for (Index r = 0; r < count; ++r)
      for (Index b = 0; b < blocks_; ++b) store(first + r, b, blocks[r * blocks_ + b]);
  }
  /// Rows [first, first + w.rows()) quantized from w [count, cols()].
  void quantize_rows(Index first, const ConstMatrixRef<float>& w) {
    constexpr const char* where = "kernels::QuantMatrix::quantize_rows()";
    moe::detail::require(w.cols() == cols_, where, "w columns", cols_, w.cols());
    check_rows(where, first, w.rows());
    std::vector<float> row(static_cast<std::size_t>(blocks_ * format::elements), 0.0f);
    std::vector<Block> out(static_cast<std::size_t>(blocks_));
    for (Index r = 0; r < w.rows(); ++r) {
      for (Index c = 0; c < cols_; ++c) row[static_cast<std::size_t>(c)] = w(r, c);
      quantize_row(row.data(), out.data(), row.size());
      for (Index b = 0; b < blocks_; ++b) store(first + r, b, out[static_cast<std::size_t>(b)]);
    }
  }
  /// Rows [first, first + count) as GGUF-layout blocks, byte for byte what set_rows took.
  void get_rows(Index first, Index count, Block* out) const {
    check_rows("kernels::QuantMatrix::get_rows()", first, count);
    for (Index r = 0; r < count; ++r)
      for (Index b = 0; b < blocks_; ++b) out[r * blocks_ + b] = load(first + r, b);
  }
  /// All rows as GGUF-layout blocks.
  [[nodiscard]] std::vector<Block> to_blocks() const {
    std::vector<Block> out(static_cast<std::size_t>(rows_ * blocks_));
    get_rows(0, rows_, out.data());
    return out;
  }
  /// The values the blocks stand for (the format's definition, dequantize_row_*).
  [[nodiscard]] RowMatrix<float> dequantize() const {
    RowMatrix<float> w(rows_, cols_);
    std::vector<Block> row(static_cast<std::size_t>(blocks_));
    std::vector<float> values(static_cast<std::size_t>(blocks_ * format::elements));
    for (Index r = 0; r < rows_; ++r) {
      get_rows(r, 1, row.data());
      dequantize_row(row.data(), values.data(), values.size());
      for (Index c = 0; c < cols_; ++c) w(r, c) = values[static_cast<std::size_t>(c)];
    }
    return w;
  }

  /// Quants of panel p, block b: format::quant_bytes / 4 groups of 64 bytes (16 rows x 4).
  [[nodiscard]] const std::uint8_t* panel_quants(Index p, Index b) const noexcept {
    return quants_.data() + static_cast<std::size_t>((p * blocks_ + b) * quant_panel_rows * format::quant_bytes);
  }
  /// Scales of panel p, block b (see store()).
  [[nodiscard]] const std::uint8_t* panel_scales(Index p, Index b) const noexcept {
    return scales_.data() + static_cast<std::size_t>((p * blocks_ + b) * quant_panel_rows * format::scale_bytes);
  }

 private:
  static constexpr std::uint8_t zero_quant() noexcept {
    return std::is_same_v<Block, BlockQ8_0> ? std::uint8_t{128} : std::uint8_t{0};
  }
  static void quantize_row(const float* x, Block* out, std::size_t n) {
    if constexpr (std::is_same_v<Block, BlockQ8_0>) {
      quantize_row_q8_0(x, out, n);
    } else if constexpr (std::is_same_v<Block, BlockQ4_0>) {
      quantize_row_q4_0(x, out, n);
    } else {
      quantize_row_q4_k(x, out, n);
    }
  }
  static void dequantize_row(const Block* b, float* out, std::size_t n) {
    if constexpr (std::is_same_v<Block, BlockQ8_0>) {
      dequantize_row_q8_0(b, out, n);
    } else if constexpr (std::is_same_v<Block, BlockQ4_0>) {
      dequantize_row_q4_0(b, out, n);
    } else {
      dequantize_row_q4_k(b, out, n);
    }
  }

  void check_rows(const char* where, Index first, Index count) const {
    if (first < 0 || count < 0 || first + count > rows_)
      moe::detail::throw_invalid(where, "rows", moe::detail::concat("within [0, ", rows_, ")"),
                                 moe::detail::concat("[", first, ", ", first + count, ")"));
  }

  std::uint8_t* quants(Index p, Index b) noexcept { return const_cast<std::uint8_t*>(panel_quants(p, b)); }
  std::uint8_t* scales(Index p, Index b) noexcept { return const_cast<std::uint8_t*>(panel_scales(p, b)); }

  // Within a panel-block: quant byte t of row l (the 4-byte group t / 4, byte t % 4) lies at
  // group * 64 + l * 4 + t % 4. Q8_0 keeps q + 128 (an unsigned byte: vpdpbusd's unsigned
  // operand); Q4_0 keeps GGUF's nibble bytes (byte t holds elements t and t + 16); Q4_K keeps
  // GGUF's qs (byte 32c + t holds elements 64c + t and 64c + 32 + t). Scales: Q8_0 and Q4_0
  // d[16] (fp16); Q4_K d[16], dmin[16] (fp16), then scale[8][16] and min[8][16] (bytes).
  void store(Index row, Index b, const Block& blk) noexcept {
    const Index p = row / quant_panel_rows, l = row % quant_panel_rows;
    std::uint8_t* q = quants(p, b);
    std::uint8_t* s = scales(p, b);
    const auto put_quant = [&](Index t, std::uint8_t v) { q[(t / 4) * 64 + l * 4 + t % 4] = v; };
    std::memcpy(s + l * 2, &blk.d, 2);
    if constexpr (std::is_same_v<Block, BlockQ8_0>) {
      for (Index t = 0; t < 32; ++t) put_quant(t, static_cast<std::uint8_t>(blk.qs[t] + 128));
    } else if constexpr (std::is_same_v<Block, BlockQ4_0>) {
      for (Index t = 0; t < 16; ++t) put_quant(t, blk.qs[t]);
    } else {
      std::memcpy(s + 32 + l * 2, &blk.dmin, 2);
      for (std::size_t j = 0; j < 8; ++j) {
        const ScaleMin sm = q4_k_scale_min(blk.scales, j);
        s[64 + static_cast<Index>(j) * 16 + l] = sm.scale;
        s[192 + static_cast<Index>(j) * 16 + l] = sm.min;
      }
      for (Index t = 0; t < 128; ++t) put_quant(t, blk.qs[t]);
    }
  }
  [[nodiscard]] Block load(Index row, Index b) const noexcept {
    const Index p = row / quant_panel_rows, l = row % quant_panel_rows;
    const std::uint8_t* q = panel_quants(p, b);
    const std::uint8_t* s = panel_scales(p, b);
    const auto get_quant = [&](Index t) { return q[(t / 4) * 64 + l * 4 + t % 4]; };
    Block blk{};
    std::memcpy(&blk.d, s + l * 2, 2);
    if constexpr (std::is_same_v<Block, BlockQ8_0>) {
      for (Index t = 0; t < 32; ++t) blk.qs[t] = static_cast<std::int8_t>(get_quant(t) - 128);
    } else if constexpr (std::is_same_v<Block, BlockQ4_0>) {
      for (Index t = 0; t < 16; ++t) blk.qs[t] = get_quant(t);
    } else {
      std::memcpy(&blk.dmin, s + 32 + l * 2, 2);
      std::uint8_t sc[8], mn[8];
      for (Index j = 0; j < 8; ++j) {
        sc[j] = s[64 + j * 16 + l];
        mn[j] = s[192 + j * 16 + l];
      }
      q4_k_pack_scale_min(sc, mn, blk.scales);
      for (Index t = 0; t < 128; ++t) blk.qs[t] = get_quant(t);
    }
    return blk;
  }

  Index rows_ = 0;
  Index cols_ = 0;
  Index blocks_ = 0;
  Index panels_ = 0;
  std::vector<std::uint8_t, Eigen::aligned_allocator<std::uint8_t>> quants_;
  std::vector<std::uint8_t> scales_;
};

MOE_KERNELS_BEGIN_SIMD_CODE

namespace detail {

#if defined(__AVX512F__) && defined(__AVX512BW__)
/// quantize_row_q8_0 on 16 lanes, bit for bit (std::round's halves away from zero as a
/// truncation plus a step where the exact remainder is >= 1/2). Also writes each block's
/// scale as a float and -offset * (sum of its quants). false, with nothing promised about
/// the output, where the row has a non-finite value or a scale overflows fp16: the caller
/// then runs the scalar quantizer, which throws its error.
inline bool quantize_row_q8_0_avx512(const float* x, BlockQ8_0* out, float* scale, std::int32_t* aux, Index nb,
                                     std::int32_t offset) noexcept {
  const __m512 inf = _mm512_set1_ps(std::numeric_limits<float>::infinity());
  const __m512 half = _mm512_set1_ps(0.5f);
  const __m512i abs_mask = _mm512_set1_epi32(0x7FFFFFFF);
  for (Index b = 0; b < nb; ++b) {
    const __m512 v[2] = {_mm512_loadu_ps(x + 32 * b), _mm512_loadu_ps(x + 32 * b + 16)};
    const __m512 a0 = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v[0]), abs_mask));
    const __m512 a1 = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v[1]), abs_mask));
    if ((_mm512_cmp_ps_mask(a0, inf, _CMP_LT_OQ) & _mm512_cmp_ps_mask(a1, inf, _CMP_LT_OQ)) != 0xFFFF) return false;
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(a0, a1));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const std::uint16_t h = float_to_fp16(d);
    if ((h & 0x7C00u) == 0x7C00u) return false;
    out[b].d = h;
    scale[b] = fp16_to_float(h);
    __m512i sum = _mm512_setzero_si512();
    for (int i = 0; i < 2; ++i) {
      const __m512 p = _mm512_mul_ps(v[i], _mm512_set1_ps(id));
      const __m512 t = _mm512_roundscale_ps(p, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
      const __m512 rest = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(_mm512_sub_ps(p, t)), abs_mask));
      const __mmask16 up = _mm512_cmp_ps_mask(rest, half, _CMP_GE_OQ);
      const __m512 step = _mm512_castsi512_ps(_mm512_or_si512(
          _mm512_and_si512(_mm512_castps_si512(p), _mm512_set1_epi32(static_cast<int>(0x80000000u))),
          _mm512_castps_si512(_mm512_set1_ps(1.0f))));
      const __m512i q = _mm512_cvttps_epi32(_mm512_mask_add_ps(t, up, t, step));
      sum = _mm512_add_epi32(sum, q);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out[b].qs + 16 * i), _mm512_cvtepi32_epi8(q));
    }
    aux[b] = -offset * _mm512_reduce_add_epi32(sum);
  }
  return true;
}

/// quantize_row_q8_k on 16 lanes, bit for bit (nearbyint is the default rounding, to even);
/// also each block's scale and its eight sub-block sums. false as quantize_row_q8_0_avx512.
inline bool quantize_row_q8_k_avx512(const float* x, BlockQ8_K* out, float* scale, std::int32_t* aux,
                                     Index nb) noexcept {
  const __m512 inf = _mm512_set1_ps(std::numeric_limits<float>::infinity());
  const __m512i abs_mask = _mm512_set1_epi32(0x7FFFFFFF);
  for (Index b = 0; b < nb; ++b) {
    const float* v = x + 256 * b;
    __m512 amax_v = _mm512_setzero_ps();
    __mmask16 finite = 0xFFFF;
    for (int i = 0; i < 16; ++i) {
      const __m512 a = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(_mm512_loadu_ps(v + 16 * i)), abs_mask));
      finite &= _mm512_cmp_ps_mask(a, inf, _CMP_LT_OQ);
      amax_v = _mm512_max_ps(amax_v, a);
    }
    if (finite != 0xFFFF) return false;
    BlockQ8_K& o = out[b];
    const float amax = _mm512_reduce_max_ps(amax_v);
    if (amax == 0.0f) {
      o.d = 0.0f;
      std::memset(o.qs, 0, sizeof o.qs);
      std::memset(o.bsums, 0, sizeof o.bsums);
      scale[b] = 0.0f;
      for (int s = 0; s < 8; ++s) aux[b * 8 + s] = 0;
      continue;
    }
    float max = 0.0f;  // the first element of largest magnitude, with its sign
    for (int j = 0; j < 256; ++j)
      if (std::fabs(v[j]) == amax) {
        max = v[j];
        break;
      }
    const float iscale = -127.0f / max;
    const __m512i top = _mm512_set1_epi32(127);
    for (int i = 0; i < 16; ++i) {
      const __m512 p = _mm512_mul_ps(_mm512_set1_ps(iscale), _mm512_loadu_ps(v + 16 * i));
      const __m512i q = _mm512_min_epi32(
          _mm512_cvtps_epi32(_mm512_roundscale_ps(p, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)), top);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(o.qs + 16 * i), _mm512_cvtepi32_epi8(q));
      o.bsums[i] = static_cast<std::int16_t>(_mm512_reduce_add_epi32(q));
    }
    o.d = 1.0f / iscale;
    scale[b] = o.d;
    for (int s = 0; s < 8; ++s) aux[b * 8 + s] = std::int32_t{o.bsums[2 * s]} + std::int32_t{o.bsums[2 * s + 1]};
  }
  return true;
}
#endif

}  // namespace detail

/// Activation rows quantized to a weight format's partner (QuantMatrix<Block>'s products):
/// blocks[i * blocks_per_row + b] is row i's block b, and aux[(i * blocks_per_row + b) *
/// aux_per_block + ...] what the paths add per block: for Q8_0 weights -128 * (sum of the
/// block's quants) (the weights are stored as q + 128), for Q4_0 -8 * sum (their quants are
/// q + 8), for Q4_K the eight sub-block sums (bsums[2s] + bsums[2s + 1]).
template <QuantBlock Block>
struct QuantActivations {
  using activation_block = typename quant_format<Block>::activation_block;
  Index rows = 0;
  Index blocks_per_row = 0;
  std::vector<activation_block> blocks;
  std::vector<std::int32_t> aux;
  std::vector<float> scale;  ///< each block's scale as a float (the fp16 d widened, or Q8_K's d)

  /// Quantizes the rows of a [m, k] (finite values), each padded with zeros to whole blocks.
  /// Allocates only when a needs more blocks than reserved (kernels::quant_gemm quantizes at
  /// most quant_activation_blocks<Block> at once, reserved at a thread's first product).
  void quantize(const ConstMatrixRef<float>& a) {
    using F = quant_format<Block>;
    rows = a.rows();
    blocks_per_row = (a.cols() + F::elements - 1) / F::elements;
    const Index full = a.cols() / F::elements;
    const auto nb = static_cast<std::size_t>(rows * blocks_per_row);
    if (blocks.size() < nb) blocks.resize(nb);
    if (aux.size() < nb * F::aux_per_block) aux.resize(nb * F::aux_per_block);
    if (scale.size() < nb) scale.resize(nb);
    for (Index i = 0; i < rows; ++i) {
      const float* x = a.row(i).data();
      activation_block* out = blocks.data() + i * blocks_per_row;
      std::int32_t* ax = aux.data() + i * blocks_per_row * F::aux_per_block;
      float* sc = scale.data() + i * blocks_per_row;
      quantize_blocks(x, full, out, ax, sc);
      if (full < blocks_per_row) {
        // The last block's elements past k are zeros.
        float tail[F::elements] = {};
        const Index done = full * F::elements;
        std::copy(x + done, x + a.cols(), tail);
        for (Index j = done; j < a.cols(); ++j)
          if (!std::isfinite(x[j])) detail::require_finite(quantizer_name(), x, static_cast<std::size_t>(a.cols()));
        quantize_blocks(tail, 1, out + full, ax + full * F::aux_per_block, sc + full);
      }
    }
  }

  /// Room for `count` activation blocks without allocating.
  void reserve(std::size_t count) {
    blocks.reserve(count);
    aux.reserve(count * quant_format<Block>::aux_per_block);
    scale.reserve(count);
  }

 private:
  static constexpr const char* quantizer_name() noexcept {
    return std::is_same_v<activation_block, BlockQ8_0> ? "kernels::quantize_row_q8_0()" : "kernels::quantize_row_q8_k()";
  }

  /// n whole blocks of x into out, with their aux and scales.
  static void quantize_blocks(const float* x, Index n, activation_block* out, std::int32_t* ax, float* sc) {
    if (n == 0) return;
    if constexpr (std::is_same_v<activation_block, BlockQ8_0>) {
      constexpr std::int32_t offset = std::is_same_v<Block, BlockQ8_0> ? 128 : 8;
#if defined(__AVX512F__) && defined(__AVX512BW__)
      if (detail::quantize_row_q8_0_avx512(x, out, sc, ax, n, offset)) return;
#endif
      quantize_row_q8_0(x, out, static_cast<std::size_t>(n) * qk8_0);
      for (Index b = 0; b < n; ++b) {
        std::int32_t sum = 0;
        for (std::size_t j = 0; j < qk8_0; ++j) sum += out[b].qs[j];
        ax[b] = -offset * sum;
        sc[b] = fp16_to_float(out[b].d);
      }
    } else {
#if defined(__AVX512F__) && defined(__AVX512BW__)
      if (detail::quantize_row_q8_k_avx512(x, out, sc, ax, n)) return;
#endif
      quantize_row_q8_k(x, out, static_cast<std::size_t>(n) * qk_k);
      for (Index b = 0; b < n; ++b) {
        for (Index s = 0; s < 8; ++s)
          ax[b * 8 + s] = std::int32_t{out[b].bsums[2 * s]} + std::int32_t{out[b].bsums[2 * s + 1]};
        sc[b] = out[b].d;
      }
    }
  }
};

/// Activation blocks a thread quantizes at once in kernels::quant_gemm (about 300 KiB of
/// blocks): rows go in chunks of this many blocks, so the buffer is reserved once per thread
/// and never grows, whatever the shapes (unless one row alone needs more).
template <QuantBlock Block>
inline constexpr Index quant_activation_blocks = std::is_same_v<Block, BlockQ4_K> ? 1024 : 8192;

/// The code paths of the quantized products.
enum class QuantPath : std::uint8_t {
  scalar,   ///< portable loops over the packed layout
  avx2,     ///< vpmaddubsw + vpmaddwd, 8 lanes
  avxvnni,  ///< vpdpbusd on 8 lanes (AVX-VNNI)
  avx512vnni,  ///< vpdpbusd on 16 lanes (AVX512-VNNI)
};

namespace detail {
#if defined(__AVX2__) && defined(__F16C__)
inline constexpr bool built_avx2 = true;
#else
inline constexpr bool built_avx2 = false;
#endif
#if defined(__AVX2__) && defined(__F16C__) && defined(__AVXVNNI__)
inline constexpr bool built_avxvnni = true;
#else
inline constexpr bool built_avxvnni = false;
#endif
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
inline constexpr bool built_avx512vnni = true;
#else
inline constexpr bool built_avx512vnni = false;
#endif
}  // namespace detail

/// Whether this build can run a path (the compiler's target flags).
constexpr bool quant_path_available(QuantPath p) noexcept {
  return p == QuantPath::scalar || (p == QuantPath::avx2 && detail::built_avx2) ||
         (p == QuantPath::avxvnni && detail::built_avxvnni) || (p == QuantPath::avx512vnni && detail::built_avx512vnni);
}

/// The path the products take for Arch: VNNI on 16 lanes for an AVX-512 Arch where the build
/// has AVX512-VNNI, else (any AVX2 Arch, AVX-512 without VNNI included) AVX-VNNI or AVX2 where
/// built, else scalar.
template <class Arch = xsimd::default_arch>
constexpr QuantPath quant_path() noexcept {
  if constexpr (std::is_base_of_v<xsimd::avx512bw, Arch>) {
    if (quant_path_available(QuantPath::avx512vnni)) return QuantPath::avx512vnni;
  }
  if constexpr (std::is_base_of_v<xsimd::avx2, Arch>) {
    if (quant_path_available(QuantPath::avxvnni)) return QuantPath::avxvnni;
    if (quant_path_available(QuantPath::avx2)) return QuantPath::avx2;
  }
  return QuantPath::scalar;
}

constexpr const char* quant_path_name(QuantPath p) noexcept {
  switch (p) {
    case QuantPath::scalar:
      return "scalar";
    case QuantPath::avx2:
      return "avx2-maddubs";
    case QuantPath::avxvnni:
      return "avx-vnni";
    case QuantPath::avx512vnni:
      return "avx512-vnni";
  }
  return "?";
}

/// "Q4_K avx512-vnni 8x16" and the like: the format, path and register tile, for reports.
template <QuantBlock Block, class Arch = xsimd::default_arch>
std::string quant_kernel_name();

namespace detail {

// The tiles' loops over rows and groups must unroll fully, so the accumulators stay in registers.
#define MOE_QUANT_UNROLL _Pragma("GCC unroll 16")

/// Rows of A per register tile, per format and path.
template <QuantBlock Block, QuantPath Path>
inline constexpr Index quant_mr = Path == QuantPath::avx512vnni ? (std::is_same_v<Block, BlockQ4_K> ? 4 : 8)
                                  : Path == QuantPath::scalar   ? 1
                                                                : (std::is_same_v<Block, BlockQ4_K> ? 2 : 4);
/// Weight rows per register tile.
template <QuantPath Path>
inline constexpr Index quant_nr = Path == QuantPath::avx512vnni ? 16 : (Path == QuantPath::scalar ? 16 : 8);

#ifndef MOE_QUANT_PREFETCH_BYTES
#define MOE_QUANT_PREFETCH_BYTES 4096
#endif
/// How far ahead of the block being read the AVX-512 tile prefetches the quants (the scales
/// 1/16 as far: they are 1/16 of the bytes for Q8_0 and Q4_0).
inline constexpr Index quant_prefetch_bytes = MOE_QUANT_PREFETCH_BYTES;

inline std::int32_t load_i32(const void* p) noexcept {
  std::int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

/// Scalar path: one panel of W, M rows of A; out[i][l] for the panel's 16 rows.
template <class Block>
void quant_tile_scalar(const QuantMatrix<Block>& w, Index panel, const QuantActivations<Block>& a, Index row0, Index m,
                       float* c, Index ldc, Index ncols) {
  using F = quant_format<Block>;
  const Index nb = w.blocks_per_row();
  for (Index i = row0; i < row0 + m; ++i) {
    const auto* ab = a.blocks.data() + i * nb;
    const std::int32_t* ax = a.aux.data() + i * nb * F::aux_per_block;
    for (Index l = 0; l < ncols; ++l) {
      float sum = 0.0f;
      for (Index b = 0; b < nb; ++b) {
        const std::uint8_t* q = w.panel_quants(panel, b);
        const std::uint8_t* s = w.panel_scales(panel, b);
        const auto quant = [&](Index t) { return std::int32_t{q[(t / 4) * 64 + l * 4 + t % 4]}; };
        std::uint16_t d16;
        std::memcpy(&d16, s + l * 2, 2);
        if constexpr (std::is_same_v<Block, BlockQ8_0>) {
          std::int32_t dot = ax[b];
          for (Index t = 0; t < 32; ++t) dot += quant(t) * std::int32_t{ab[b].qs[t]};
          sum += (fp16_to_float(d16) * fp16_to_float(ab[b].d)) * static_cast<float>(dot);
        } else if constexpr (std::is_same_v<Block, BlockQ4_0>) {
          std::int32_t dot = ax[b];
          for (Index t = 0; t < 16; ++t) {
            dot += (quant(t) & 15) * std::int32_t{ab[b].qs[t]};
            dot += (quant(t) >> 4) * std::int32_t{ab[b].qs[t + 16]};
          }
          sum += (fp16_to_float(d16) * fp16_to_float(ab[b].d)) * static_cast<float>(dot);
        } else {
          std::uint16_t dmin16;
          std::memcpy(&dmin16, s + 32 + l * 2, 2);
          std::int32_t scaled = 0, mins = 0;
          for (Index sb = 0; sb < 8; ++sb) {
            const Index chunk = sb / 2, shift = (sb % 2) * 4;
            std::int32_t dot = 0;
            for (Index t = 0; t < 32; ++t)
              dot += ((quant(32 * chunk + t) >> shift) & 15) * std::int32_t{ab[b].qs[32 * sb + t]};
            scaled += std::int32_t{s[64 + sb * 16 + l]} * dot;
            mins += std::int32_t{s[192 + sb * 16 + l]} * ax[b * 8 + sb];
          }
          sum += (fp16_to_float(d16) * ab[b].d) * static_cast<float>(scaled) -
                 (fp16_to_float(dmin16) * ab[b].d) * static_cast<float>(mins);
        }
      }
      c[(i - row0) * ldc + l] = sum;
    }
  }
}


#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)

/// AVX512-VNNI: M rows of A against a panel's 16 rows, one zmm of int32 per row.
template <class Block, int M>
void quant_tile_avx512vnni(const QuantMatrix<Block>& w, Index panel, const QuantActivations<Block>& a, Index row0,
                           float* c, Index ldc, Index ncols) {
  using F = quant_format<Block>;
  const Index nb = w.blocks_per_row();
  const auto* ab = a.blocks.data() + row0 * nb;
  const std::int32_t* ax = a.aux.data() + row0 * nb * F::aux_per_block;
  const float* as = a.scale.data() + row0 * nb;
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  __m512 acc[M];
  MOE_QUANT_UNROLL
  for (int i = 0; i < M; ++i) acc[i] = _mm512_setzero_ps();
  for (Index b = 0; b < nb; ++b) {
    const std::uint8_t* q = w.panel_quants(panel, b);
    const std::uint8_t* s = w.panel_scales(panel, b);
    {
      // Every cache line of this block's quants, and its scales, quant_prefetch_bytes ahead (past
      // the panel's end runs into the next panel, which the next tile reads: harmless).
      constexpr Index lines = quant_panel_rows * quant_format<Block>::quant_bytes / 64;
      MOE_QUANT_UNROLL
      for (Index l = 0; l < lines; ++l) _mm_prefetch(reinterpret_cast<const char*>(q) + quant_prefetch_bytes + 64 * l, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(s) + quant_prefetch_bytes / 16, _MM_HINT_T0);
    }
    const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s)));
    if constexpr (std::is_same_v<Block, BlockQ8_0> || std::is_same_v<Block, BlockQ4_0>) {
      // Two int32 chains per row (even and odd groups, or low and high nibbles) halve the
      // vpdpbusd latency a row waits on when M is small; integer sums, so the order is free.
      __m512i dot[M], dot2[M];
      MOE_QUANT_UNROLL
      for (int i = 0; i < M; ++i) {
        dot[i] = _mm512_set1_epi32(ax[i * nb + b]);
        dot2[i] = _mm512_setzero_si512();
      }
      if constexpr (std::is_same_v<Block, BlockQ8_0>) {
        MOE_QUANT_UNROLL
        for (int g = 0; g < 8; g += 2) {
          const __m512i v = _mm512_load_si512(q + g * 64);
          const __m512i v2 = _mm512_load_si512(q + g * 64 + 64);
          MOE_QUANT_UNROLL
          for (int i = 0; i < M; ++i) {
            dot[i] = _mm512_dpbusd_epi32(dot[i], v, _mm512_set1_epi32(load_i32(ab[i * nb + b].qs + 4 * g)));
            dot2[i] = _mm512_dpbusd_epi32(dot2[i], v2, _mm512_set1_epi32(load_i32(ab[i * nb + b].qs + 4 * g + 4)));
          }
        }
      } else {
        MOE_QUANT_UNROLL
        for (int g = 0; g < 4; ++g) {
          const __m512i v = _mm512_load_si512(q + g * 64);
          const __m512i lo = _mm512_and_si512(v, low4);
          const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
          MOE_QUANT_UNROLL
          for (int i = 0; i < M; ++i) {
            dot[i] = _mm512_dpbusd_epi32(dot[i], lo, _mm512_set1_epi32(load_i32(ab[i * nb + b].qs + 4 * g)));
            dot2[i] = _mm512_dpbusd_epi32(dot2[i], hi, _mm512_set1_epi32(load_i32(ab[i * nb + b].qs + 16 + 4 * g)));
          }
        }
      }
      MOE_QUANT_UNROLL
      for (int i = 0; i < M; ++i) dot[i] = _mm512_add_epi32(dot[i], dot2[i]);
      MOE_QUANT_UNROLL
      for (int i = 0; i < M; ++i) {
        const __m512 scale = _mm512_mul_ps(dw, _mm512_set1_ps(as[i * nb + b]));
        acc[i] = _mm512_add_ps(acc[i], _mm512_mul_ps(scale, _mm512_cvtepi32_ps(dot[i])));
      }
    } else {
      __m512i scaled[M];
      MOE_QUANT_UNROLL
      for (int i = 0; i < M; ++i) scaled[i] = _mm512_setzero_si512();
      MOE_QUANT_UNROLL
      for (int chunk = 0; chunk < 4; ++chunk) {
        __m512i lo_dot[M], hi_dot[M];
        MOE_QUANT_UNROLL
        for (int i = 0; i < M; ++i) lo_dot[i] = hi_dot[i] = _mm512_setzero_si512();
        MOE_QUANT_UNROLL
        for (int g = 0; g < 8; ++g) {
          const __m512i v = _mm512_load_si512(q + (chunk * 8 + g) * 64);
          const __m512i lo = _mm512_and_si512(v, low4);
          const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
          MOE_QUANT_UNROLL
          for (int i = 0; i < M; ++i) {
            const std::int8_t* aq = ab[i * nb + b].qs + 64 * chunk + 4 * g;
            lo_dot[i] = _mm512_dpbusd_epi32(lo_dot[i], lo, _mm512_set1_epi32(load_i32(aq)));
            hi_dot[i] = _mm512_dpbusd_epi32(hi_dot[i], hi, _mm512_set1_epi32(load_i32(aq + 32)));
          }
        }
        const __m512i sc_lo = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 64 + 32 * chunk)));
        const __m512i sc_hi =
            _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 64 + 32 * chunk + 16)));
        MOE_QUANT_UNROLL
        for (int i = 0; i < M; ++i)
          scaled[i] = _mm512_add_epi32(scaled[i], _mm512_add_epi32(_mm512_mullo_epi32(lo_dot[i], sc_lo),
                                                                   _mm512_mullo_epi32(hi_dot[i], sc_hi)));
      }
      __m512i mins[M];
      MOE_QUANT_UNROLL
      for (int i = 0; i < M; ++i) mins[i] = _mm512_setzero_si512();
      MOE_QUANT_UNROLL
      for (int sb = 0; sb < 8; ++sb) {
        const __m512i mn = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 192 + 16 * sb)));
        MOE_QUANT_UNROLL
        for (int i = 0; i < M; ++i)
          mins[i] = _mm512_add_epi32(mins[i], _mm512_mullo_epi32(mn, _mm512_set1_epi32(ax[(i * nb + b) * 8 + sb])));
      }
      const __m512 dmin = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + 32)));
      MOE_QUANT_UNROLL
      for (int i = 0; i < M; ++i) {
        const __m512 ad = _mm512_set1_ps(as[i * nb + b]);
        const __m512 t1 = _mm512_mul_ps(_mm512_mul_ps(dw, ad), _mm512_cvtepi32_ps(scaled[i]));
        const __m512 t2 = _mm512_mul_ps(_mm512_mul_ps(dmin, ad), _mm512_cvtepi32_ps(mins[i]));
        acc[i] = _mm512_add_ps(acc[i], _mm512_sub_ps(t1, t2));
      }
    }
  }
  const __mmask16 keep = ncols >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << ncols) - 1u);
  MOE_QUANT_UNROLL
  for (int i = 0; i < M; ++i) _mm512_mask_storeu_ps(c + i * ldc, keep, acc[i]);
}

#endif

#if defined(__AVX2__) && defined(__F16C__)

/// int32 lanes += the 4-byte dot products of unsigned u with signed s (each at most 15 * 127 *
/// 4 in magnitude where the unsigned side is a nibble; Q8_0 goes through dot_q8 instead).
template <QuantPath Path>
inline __m256i dot_u8s8(__m256i acc, __m256i u, __m256i s) noexcept {
#if defined(__AVXVNNI__)
  if constexpr (Path == QuantPath::avxvnni) return _mm256_dpbusd_avx_epi32(acc, u, s);
#endif
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
}

/// AVX2 / AVX-VNNI: M rows of A against 8 rows (half h of a panel).
template <class Block, QuantPath Path, int M>
void quant_tile_avx2(const QuantMatrix<Block>& w, Index panel, int h, const QuantActivations<Block>& a, Index row0,
                     float* c, Index ldc, Index ncols) {
  using F = quant_format<Block>;
  const Index nb = w.blocks_per_row();
  const auto* ab = a.blocks.data() + row0 * nb;
  const std::int32_t* ax = a.aux.data() + row0 * nb * F::aux_per_block;
  const float* as = a.scale.data() + row0 * nb;
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  __m256 acc[M];
  MOE_QUANT_UNROLL
  for (int i = 0; i < M; ++i) acc[i] = _mm256_setzero_ps();
  for (Index b = 0; b < nb; ++b) {
    const std::uint8_t* q = w.panel_quants(panel, b) + 32 * h;
    const std::uint8_t* s = w.panel_scales(panel, b);
    const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 16 * h)));
    if constexpr (std::is_same_v<Block, BlockQ8_0> || std::is_same_v<Block, BlockQ4_0>) {
      __m256i dot[M];
      if constexpr (std::is_same_v<Block, BlockQ8_0>) {
        if constexpr (Path == QuantPath::avxvnni) {
          MOE_QUANT_UNROLL
          for (int i = 0; i < M; ++i) dot[i] = _mm256_set1_epi32(ax[i * nb + b]);
          MOE_QUANT_UNROLL
          for (int g = 0; g < 8; ++g) {
            const __m256i v = _mm256_load_si256(reinterpret_cast<const __m256i*>(q + g * 64));
            MOE_QUANT_UNROLL
            for (int i = 0; i < M; ++i)
              dot[i] = dot_u8s8<Path>(dot[i], v, _mm256_set1_epi32(load_i32(ab[i * nb + b].qs + 4 * g)));
          }
        } else {
          // vpmaddubsw saturates at 2 * 255 * 127: take the weights back to signed (q + 128 - 128),
          // and multiply |q| (unsigned, 128 included) by the activation with q's sign moved onto
          // it (activations lie in [-127, 127], so the sign always fits): both factors at most
          // 128 and 127.
          const __m256i bias = _mm256_set1_epi8(static_cast<char>(0x80));
          for (int i = 0; i < M; ++i) dot[i] = _mm256_setzero_si256();
          MOE_QUANT_UNROLL
          for (int g = 0; g < 8; ++g) {
            const __m256i v = _mm256_xor_si256(_mm256_load_si256(reinterpret_cast<const __m256i*>(q + g * 64)), bias);
            const __m256i magnitude = _mm256_abs_epi8(v);
            MOE_QUANT_UNROLL
            for (int i = 0; i < M; ++i) {
              const __m256i x = _mm256_set1_epi32(load_i32(ab[i * nb + b].qs + 4 * g));
              dot[i] = dot_u8s8<QuantPath::avx2>(dot[i], magnitude, _mm256_sign_epi8(x, v));
            }
          }
        }
      } else {
        MOE_QUANT_UNROLL
        for (int i = 0; i < M; ++i) dot[i] = _mm256_set1_epi32(ax[i * nb + b]);
        MOE_QUANT_UNROLL
        for (int g = 0; g < 4; ++g) {
          const __m256i v = _mm256_load_si256(reinterpret_cast<const __m256i*>(q + g * 64));
          const __m256i lo = _mm256_and_si256(v, low4);
          const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
          MOE_QUANT_UNROLL
          for (int i = 0; i < M; ++i) {
            dot[i] = dot_u8s8<Path>(dot[i], lo, _mm256_set1_epi32(load_i32(ab[i * nb + b].qs + 4 * g)));
            dot[i] = dot_u8s8<Path>(dot[i], hi, _mm256_set1_epi32(load_i32(ab[i * nb + b].qs + 16 + 4 * g)));
          }
        }
      }
      MOE_QUANT_UNROLL
      for (int i = 0; i < M; ++i) {
        const __m256 scale = _mm256_mul_ps(dw, _mm256_set1_ps(as[i * nb + b]));
        acc[i] = _mm256_add_ps(acc[i], _mm256_mul_ps(scale, _mm256_cvtepi32_ps(dot[i])));
      }
    } else {
      __m256i scaled[M];
      MOE_QUANT_UNROLL
      for (int i = 0; i < M; ++i) scaled[i] = _mm256_setzero_si256();
      MOE_QUANT_UNROLL
      for (int chunk = 0; chunk < 4; ++chunk) {
        __m256i lo_dot[M], hi_dot[M];
        MOE_QUANT_UNROLL
        for (int i = 0; i < M; ++i) lo_dot[i] = hi_dot[i] = _mm256_setzero_si256();
        MOE_QUANT_UNROLL
        for (int g = 0; g < 8; ++g) {
          const __m256i v = _mm256_load_si256(reinterpret_cast<const __m256i*>(q + (chunk * 8 + g) * 64));
          const __m256i lo = _mm256_and_si256(v, low4);
          const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
          MOE_QUANT_UNROLL
          for (int i = 0; i < M; ++i) {
            const std::int8_t* aq = ab[i * nb + b].qs + 64 * chunk + 4 * g;
            lo_dot[i] = dot_u8s8<Path>(lo_dot[i], lo, _mm256_set1_epi32(load_i32(aq)));
            hi_dot[i] = dot_u8s8<Path>(hi_dot[i], hi, _mm256_set1_epi32(load_i32(aq + 32)));
          }
        }
        const __m256i sc_lo = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(s + 64 + 32 * chunk + 8 * h)));
        const __m256i sc_hi =
            _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(s + 64 + 32 * chunk + 16 + 8 * h)));
        MOE_QUANT_UNROLL
        for (int i = 0; i < M; ++i)
          scaled[i] = _mm256_add_epi32(scaled[i], _mm256_add_epi32(_mm256_mullo_epi32(lo_dot[i], sc_lo),
                                                                   _mm256_mullo_epi32(hi_dot[i], sc_hi)));
      }
      __m256i mins[M];
      MOE_QUANT_UNROLL
      for (int i = 0; i < M; ++i) mins[i] = _mm256_setzero_si256();
      MOE_QUANT_UNROLL
      for (int sb = 0; sb < 8; ++sb) {
        const __m256i mn = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(s + 192 + 16 * sb + 8 * h)));
        MOE_QUANT_UNROLL
        for (int i = 0; i < M; ++i)
          mins[i] = _mm256_add_epi32(mins[i], _mm256_mullo_epi32(mn, _mm256_set1_epi32(ax[(i * nb + b) * 8 + sb])));
      }
      const __m256 dmin = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 32 + 16 * h)));
      MOE_QUANT_UNROLL
      for (int i = 0; i < M; ++i) {
        const __m256 ad = _mm256_set1_ps(as[i * nb + b]);
        const __m256 t1 = _mm256_mul_ps(_mm256_mul_ps(dw, ad), _mm256_cvtepi32_ps(scaled[i]));
        const __m256 t2 = _mm256_mul_ps(_mm256_mul_ps(dmin, ad), _mm256_cvtepi32_ps(mins[i]));
        acc[i] = _mm256_add_ps(acc[i], _mm256_sub_ps(t1, t2));
      }
    }
  }
  if (ncols >= 8) {
    MOE_QUANT_UNROLL
    for (int i = 0; i < M; ++i) _mm256_storeu_ps(c + i * ldc, acc[i]);
  } else {
    alignas(32) float tmp[8];
    MOE_QUANT_UNROLL
    for (int i = 0; i < M; ++i) {
      _mm256_store_ps(tmp, acc[i]);
      std::copy(tmp, tmp + ncols, c + i * ldc);
    }
  }
}

#endif

#undef MOE_QUANT_UNROLL

/// Calls f(std::integral_constant<int, M>) for M = m in [1, MR].
template <int MR, class F>
void with_rows(Index m, F&& f) {
  if constexpr (MR >= 1) {
    if (m == MR) {
      f(std::integral_constant<int, MR>{});
      return;
    }
    if constexpr (MR > 1) with_rows<MR - 1>(m, f);
  }
}

template <class Block, QuantPath Path>
void quant_gemm_path(float* c, Index ldc, const QuantActivations<Block>& a, const QuantMatrix<Block>& w) {
  const Index m = a.rows;
  constexpr Index mr = quant_mr<Block, Path>;
  for (Index p = 0; p < w.panels(); ++p) {
    const Index col0 = p * quant_panel_rows;
    const Index ncols = std::min(quant_panel_rows, w.rows() - col0);
    for (Index r = 0; r < m; r += mr) {
      const Index rows = std::min(mr, m - r);
      float* out = c + r * ldc + col0;
      if constexpr (Path == QuantPath::scalar) {
        quant_tile_scalar(w, p, a, r, rows, out, ldc, ncols);
      }
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
      if constexpr (Path == QuantPath::avx512vnni)
        with_rows<static_cast<int>(mr)>(rows, [&](auto M) { quant_tile_avx512vnni<Block, M()>(w, p, a, r, out, ldc, ncols); });
#endif
#if defined(__AVX2__) && defined(__F16C__)
      if constexpr (Path == QuantPath::avx2 || Path == QuantPath::avxvnni) {
        for (int h = 0; h < 2 && 8 * h < ncols; ++h)
          with_rows<static_cast<int>(mr)>(rows, [&](auto M) {
            quant_tile_avx2<Block, Path, M()>(w, p, h, a, r, out + 8 * h, ldc, std::min<Index>(8, ncols - 8 * h));
          });
      }
#endif
    }
  }
}

template <QuantBlock Block>
inline QuantActivations<Block>& thread_activations() {
  thread_local QuantActivations<Block> buffer = [] {
    QuantActivations<Block> b;
    b.reserve(static_cast<std::size_t>(quant_activation_blocks<Block>));
    return b;
  }();
  return buffer;
}

}  // namespace detail

/// C = A B^T on the given path (tests run each path the build has; products use quant_path).
/// A is [m, k] float (finite), B [n, k] quantized, C [m, n] (row-major, not aliasing A).
/// Throws std::invalid_argument for disagreeing shapes, a path this build cannot run, or a
/// non-finite activation (the quantizer's error).
template <QuantBlock Block>
void quant_gemm_on(QuantPath path, MatrixRef<float> c, const ConstMatrixRef<float>& a, const QuantMatrix<Block>& b) {
  constexpr const char* where = "kernels::quant_gemm()";
  if (a.cols() != b.cols() || c.rows() != a.rows() || c.cols() != b.rows())
    moe::detail::throw_invalid(where, "operand shapes", "A [m, k] x quantized B [n, k] -> C [m, n]",
                               moe::detail::concat("[", a.rows(), ", ", a.cols(), "] x [", b.rows(), ", ", b.cols(),
                                                   "] -> [", c.rows(), ", ", c.cols(), "]"));
  if (!quant_path_available(path))
    moe::detail::throw_invalid(where, "path", "one this build has (kernels::quant_path_available)",
                               quant_path_name(path));
  if (c.rows() == 0 || c.cols() == 0) return;
  auto& act = detail::thread_activations<Block>();
  const Index ldc = c.outerStride();
  // Rows in chunks whose quantized blocks fit the thread's reserved buffer.
  const Index per_row = std::max<Index>(1, b.blocks_per_row());
  const Index chunk = std::max<Index>(1, quant_activation_blocks<Block> / per_row);
  for (Index r0 = 0; r0 < a.rows(); r0 += chunk) {
    const Index rows = std::min(chunk, a.rows() - r0);
    act.quantize(a.middleRows(r0, rows));
    float* out = c.data() + r0 * ldc;
    switch (path) {
      case QuantPath::scalar:
        detail::quant_gemm_path<Block, QuantPath::scalar>(out, ldc, act, b);
        break;
      case QuantPath::avx2:
        if constexpr (quant_path_available(QuantPath::avx2)) detail::quant_gemm_path<Block, QuantPath::avx2>(out, ldc, act, b);
        break;
      case QuantPath::avxvnni:
        if constexpr (quant_path_available(QuantPath::avxvnni))
          detail::quant_gemm_path<Block, QuantPath::avxvnni>(out, ldc, act, b);
        break;
      case QuantPath::avx512vnni:
        if constexpr (quant_path_available(QuantPath::avx512vnni))
          detail::quant_gemm_path<Block, QuantPath::avx512vnni>(out, ldc, act, b);
        break;
    }
  }
}

/// Reserves the quantized-activation buffers (detail::thread_activations: about 350 KiB per
/// format) on the calling thread and on each thread of `pool`, so no product allocates
/// whichever thread runs it (LocalExecutor calls it before spreading a quantized bank's
/// experts over a pool).
template <QuantBlock Block>
void prepare_quant_threads(ThreadPool* pool) {
  const auto setup = [](Index) { (void)detail::thread_activations<Block>(); };
  setup(0);
  if (pool != nullptr && pool->size() > 1)
    pool->setup_threads_once(moe::detail::thread_setup_key<QuantActivations<Block>>(), setup);
}

/// C = A B^T with quantized B on Arch's path (quant_path<Arch>()). Each element of C is bit
/// for bit reference::quant_gemm's, whatever the path, the batch or the row's place in it.
/// No allocation after a thread's largest call.
template <class Arch = xsimd::default_arch, QuantBlock Block>
void quant_gemm(MatrixRef<float> c, const ConstMatrixRef<float>& a, const QuantMatrix<Block>& b) {
  quant_gemm_on(quant_path<Arch>(), c, a, b);
}

template <QuantBlock Block, class Arch>
std::string quant_kernel_name() {
  constexpr QuantPath p = quant_path<Arch>();
  return std::string(quant_format<Block>::name) + " " + quant_path_name(p) + " " +
         std::to_string(detail::quant_mr<Block, p>) + "x" + std::to_string(detail::quant_nr<p>);
}

MOE_KERNELS_END_SIMD_CODE

}  // namespace moe::kernels

#endif  // MOE_KERNELS_QUANT_GEMM_HPP
