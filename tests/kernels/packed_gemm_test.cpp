// kernels::packed_gemm: bit for bit its scalar twin on every architecture the build has, for
// float, double and bf16 weights, at sizes around the register tile and the cache blocks; a
// row's bits independent of the batch; the packed layout's definition; clear errors.
#include <catch2/catch.hpp>

#include "support/kernel_sweep.hpp"
#include "support/random.hpp"

#include <stdexcept>
#include <string>

#include "moe/kernels/packed_gemm.hpp"
#include "moe/kernels/reference/packed_gemm.hpp"
#include "moe/kernels/weight_types.hpp"

namespace {

using moe::Index;
using moe::RowMatrix;
using moe::bf16;
using moe::test::first_difference;
using moe::test::for_each_arch;
using moe::test::random_matrix;

/// Runs packed_gemm<Arch> on a [m, k] x [n, k] product and its twin; "" when the bits agree.
template <class Arch, class S, class W>
std::string compare_with_twin(Index m, Index n, Index k, std::mt19937& rng) {
  const RowMatrix<S> a = random_matrix<S>(m, k, rng);
  RowMatrix<W> b;
  if constexpr (std::is_same_v<W, bf16>) {
    b = random_matrix<float>(n, k, rng).template cast<bf16>();
  } else {
    b = random_matrix<S>(n, k, rng);
  }
  moe::kernels::PackedMatrix<W> packed;
  moe::kernels::pack_for<S, Arch>(packed, b);
  RowMatrix<S> c = RowMatrix<S>::Constant(m, n, S(7));  // overwritten, never read
  moe::kernels::packed_gemm<Arch>(c, a, packed);
  RowMatrix<S> want(m, n);
  moe::kernels::reference::packed_gemm<S, W>(want, a, b, moe::kernels::packed_fused<Arch>);
  return first_difference(c.data(), want.data(), m * n);
}

}  // namespace

TEMPLATE_TEST_CASE("packed_gemm equals its twin bit for bit around the tile and the blocks", "[kernels][packed]",
                   float, double) {
  using S = TestType;
  std::mt19937 rng(21);
  for_each_arch([&](auto arch) {
    using Arch = decltype(arch);
    using Tile = moe::kernels::PackedTile<S, S, Arch>;
    const std::string kname = moe::kernels::packed_kernel_name<S, S, Arch>();
    for (const Index m : {Index{1}, Index{2}, Tile::mr - 1, Tile::mr, Tile::mr + 1, 2 * Tile::mr + 5})
      for (const Index n : {Index{1}, Tile::nr - 1, Tile::nr, Tile::nr + 1, 3 * Tile::nr + 7})
        for (const Index k : {Index{1}, Index{5}, Tile::lanes + 1, Index{67}}) {
          INFO(kname << " m " << m << " n " << n << " k " << k);
          CHECK(compare_with_twin<Arch, S, S>(m, n, k, rng).empty());
        }
    // Past the blocks: depth over kc (the partial chain goes through C), columns over nc (the
    // weight block), rows over mc (the activation buffer).
    for (const auto& [m, n, k] : {std::array<Index, 3>{Tile::mr + 3, Tile::nc + Tile::nr + 5, 2 * Tile::kc + 9},
                                  std::array<Index, 3>{Tile::mc + Tile::mr + 1, Tile::nr + 1, Tile::kc + 1}}) {
      INFO(kname << " m " << m << " n " << n << " k " << k);
      CHECK(compare_with_twin<Arch, S, S>(m, n, k, rng).empty());
    }
  });
}

TEST_CASE("packed_gemm with bf16 weights equals its twin bit for bit", "[kernels][packed]") {
  std::mt19937 rng(22);
  for_each_arch([&](auto arch) {
    using Arch = decltype(arch);
    using Tile = moe::kernels::PackedTile<float, bf16, Arch>;
    const std::string kname = moe::kernels::packed_kernel_name<float, bf16, Arch>();
    WARN("bf16 packed kernel: " << kname);
    for (const Index m : {Index{1}, Index{3}, Tile::mr, Tile::mr + 1})
      for (const Index n : {Index{1}, Tile::nr - 1, Tile::nr, 2 * Tile::nr + 3})
        for (const Index k : {Index{1}, Index{2}, Index{7}, Index{64}}) {  // odd depths pad a pair
          INFO(kname << " m " << m << " n " << n << " k " << k);
          CHECK(compare_with_twin<Arch, float, bf16>(m, n, k, rng).empty());
        }
    for (const auto& [m, n, k] : {std::array<Index, 3>{Tile::mr + 3, Tile::nc + 5, 2 * Tile::kc + 3},
                                  std::array<Index, 3>{Tile::mc + 2, Tile::nr, Tile::kc + 2}}) {
      INFO(kname << " m " << m << " n " << n << " k " << k);
      CHECK(compare_with_twin<Arch, float, bf16>(m, n, k, rng).empty());
    }
  });
}

TEST_CASE("packed_gemm's twin is the dot product it claims", "[kernels][packed]") {
  // Small integers: every partial sum is exact, so the order cannot matter and the value is math.
  RowMatrix<float> a(2, 3);
  a << 1, 2, 3, -1, 0, 4;
  RowMatrix<float> b(2, 3);
  b << 1, 1, 1, 2, -3, 5;
  RowMatrix<float> want(2, 2);
  want << 6, 11, 3, 18;
  for (const bool fused : {false, true}) {
    RowMatrix<float> c(2, 2);
    moe::kernels::reference::packed_gemm<float>(c, a, b, fused);
    CHECK(c == want);
  }
  RowMatrix<float> c(2, 2);
  const RowMatrix<bf16> b16 = b.cast<bf16>();
  moe::kernels::reference::packed_gemm<float, bf16>(c, a, b16, true);
  CHECK(c == want);
  // Activations are rounded to bf16 (8 significant bits): 1 + 2^-10 becomes 1.
  RowMatrix<float> fine(1, 3);
  fine << 1.0f + 1.0f / 1024, 0, 0;
  RowMatrix<float> c1(1, 2);
  moe::kernels::reference::packed_gemm<float, bf16>(c1, fine, b16, true);
  CHECK(c1(0, 0) == 1.0f);
  CHECK(c1(0, 1) == 2.0f);
}

TEMPLATE_TEST_CASE("packed_gemm gives a row the same bits in any batch and at any place", "[kernels][packed]", float,
                   double) {
  using S = TestType;
  std::mt19937 rng(23);
  using Arch = xsimd::default_arch;
  using Tile = moe::kernels::PackedTile<S, S, Arch>;
  const Index n = 2 * Tile::nr + 3;
  const Index k = Tile::kc + 40;
  const RowMatrix<S> b = random_matrix<S>(n, k, rng);
  moe::kernels::PackedMatrix<S> packed;
  moe::kernels::pack_for<S, Arch>(packed, b);
  const RowMatrix<S> token = random_matrix<S>(1, k, rng);
  RowMatrix<S> alone(1, n);
  moe::kernels::packed_gemm<Arch>(alone, token, packed);
  for (const Index m : {Index{2}, Tile::mr + 1, Index{3} * Tile::mr + 2, Tile::mc + 7})
    for (const Index place : {Index{0}, m / 2, m - 1}) {
      RowMatrix<S> batch = random_matrix<S>(m, k, rng);
      batch.row(place) = token;
      RowMatrix<S> c(m, n);
      moe::kernels::packed_gemm<Arch>(c, batch, packed);
      INFO("batch " << m << " place " << place);
      CHECK(first_difference(c.row(place).data(), alone.data(), n).empty());
    }
}

TEST_CASE("PackedMatrix lays out panels as documented", "[kernels][packed]") {
  RowMatrix<float> b(5, 3);
  for (Index j = 0; j < 5; ++j)
    for (Index p = 0; p < 3; ++p) b(j, p) = static_cast<float>(10 * j + p + 1);
  moe::kernels::PackedMatrix<float> f;
  f.pack(b, 4);
  REQUIRE(f.panels() == 2);
  REQUIRE(f.panel_stride() == 12);
  // Panel 0, depth 1: rows 0..3; panel 1, depth 0: row 4 then the zero pad.
  CHECK(f.panel(0)[4] == 2.0f);
  CHECK(f.panel(0)[7] == 32.0f);
  CHECK(f.panel(1)[0] == 41.0f);
  CHECK(f.panel(1)[1] == 0.0f);
  for (Index j = 0; j < 5; ++j)
    for (Index p = 0; p < 3; ++p) CHECK(f.at(j, p) == b(j, p));
  moe::kernels::PackedMatrix<bf16> h;
  h.pack(b, 2, 2);  // from float: rounded to bf16; pairs of depth, the third padded
  REQUIRE(h.padded_cols() == 4);
  CHECK(static_cast<float>(h.panel(0)[0]) == 1.0f);   // (row 0, p 0)
  CHECK(static_cast<float>(h.panel(0)[1]) == 2.0f);   // (row 0, p 1)
  CHECK(static_cast<float>(h.panel(0)[2]) == 11.0f);  // (row 1, p 0)
  CHECK(static_cast<float>(h.panel(0)[4]) == 3.0f);   // (row 0, p 2)
  CHECK(h.panel(0)[5].bits == 0);                     // (row 0, pad)
  CHECK(static_cast<float>(h.at(4, 2)) == 43.0f);
  // Packing again with the same shape keeps the storage.
  const bf16* before = h.panel(0);
  h.pack(b * 2.0f, 2, 2);
  CHECK(h.panel(0) == before);
  CHECK(static_cast<float>(h.at(4, 2)) == 86.0f);
}

TEST_CASE("packed_gemm names what it expected on bad operands", "[kernels][packed]") {
  std::mt19937 rng(24);
  const RowMatrix<float> b = random_matrix<float>(8, 6, rng);
  moe::kernels::PackedMatrix<float> packed;
  moe::kernels::pack_for<float>(packed, b);
  const RowMatrix<float> a = random_matrix<float>(3, 5, rng);
  RowMatrix<float> c(3, 8);
  CHECK_THROWS_WITH(moe::kernels::packed_gemm(c, a, packed),
                    Catch::Contains("A [m, k] x packed B [n, k] -> C [m, n]") && Catch::Contains("[3, 5] x [8, 6]"));
  moe::kernels::PackedMatrix<float> other;
  other.pack(b, moe::kernels::PackedTile<float, float, xsimd::default_arch>::nr + 1);
  const RowMatrix<float> a6 = random_matrix<float>(3, 6, rng);
  CHECK_THROWS_WITH(moe::kernels::packed_gemm(c, a6, other), Catch::Contains("another architecture"));
  CHECK_THROWS_AS(other.pack(b, 0), std::invalid_argument);
  // Empty shapes: nothing to do, or zeros for an empty depth.
  RowMatrix<float> empty_depth = RowMatrix<float>::Constant(2, 3, 5.0f);
  moe::kernels::PackedMatrix<float> p0;
  moe::kernels::pack_for<float>(p0, RowMatrix<float>(3, 0));
  moe::kernels::packed_gemm(empty_depth, RowMatrix<float>(2, 0), p0);
  CHECK(empty_depth.isZero());
}
