// arch_name, and the per-architecture instantiation the kernels are designed for.
#include <catch2/catch.hpp>

#include <cstring>
#include <string>
#include <vector>

#include "moe/kernels/kernels.hpp"

// What a user does to compile a kernel for one architecture in its own translation unit
// (built with that architecture's flags): explicit instantiation of the out-of-class
// operator(). SSE2 is the x86-64 baseline, so this TU can always hold it.
#if XSIMD_WITH_SSE2
template void moe::kernels::SoftmaxRows<xsimd::sse2>::operator()<float>(float*, moe::Index,
                                                                        moe::Index,
                                                                        moe::Index) const;
template void moe::kernels::WeightedScatterAdd<xsimd::sse2>::operator()<double>(
    const double*, moe::Index, const moe::Index*, const double*, moe::Index, moe::Index, double*,
    moe::Index) const;
#endif

TEST_CASE("arch_name names the architecture", "[kernels][arch]") {
  static_assert(std::string_view(moe::kernels::arch_name<xsimd::default_arch>()) ==
                xsimd::default_arch::name());
  REQUIRE(std::string(moe::kernels::arch_name()) == xsimd::default_arch::name());
#if XSIMD_WITH_SSE2
  REQUIRE(std::string(moe::kernels::arch_name<xsimd::sse2>()) == "sse2");
#endif
#if XSIMD_WITH_AVX2
  REQUIRE(std::string(moe::kernels::arch_name<xsimd::avx2>()) == "avx2");
#endif
  WARN("kernels default to " << moe::kernels::arch_name());
}

TEST_CASE("the free functions run the default architecture's functor", "[kernels][arch]") {
  std::vector<float> a{1, 2, 3, 4, 5, -1, 0};
  std::vector<float> b = a;
  moe::kernels::softmax_rows(a.data(), 1, 7, 7);
  moe::kernels::SoftmaxRows<xsimd::default_arch>{}(b.data(), 1, 7, 7);
  REQUIRE(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}
