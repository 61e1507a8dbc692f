// The xsimd architecture the kernels default to, and its printable name.
#ifndef MOE_KERNELS_ARCH_HPP
#define MOE_KERNELS_ARCH_HPP

#include <xsimd/xsimd.hpp>

#include "moe/core/types.hpp"

// GCC 12.1 and 12.2 (PR 105593) raise -W(maybe-)uninitialized inside their own AVX-512
// intrinsics (the self-initialised _mm512_undefined_*) once xsimd inlines them into user code,
// which breaks -Werror builds with -march=native. The warning is checked along the inlining
// chain, so each kernel header silences it around its own definitions, and nowhere else.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ == 12
#define MOE_KERNELS_BEGIN_SIMD_CODE                                \
  _Pragma("GCC diagnostic push")                                   \
  _Pragma("GCC diagnostic ignored \"-Wuninitialized\"")            \
  _Pragma("GCC diagnostic ignored \"-Wmaybe-uninitialized\"")
#define MOE_KERNELS_END_SIMD_CODE _Pragma("GCC diagnostic pop")
#else
#define MOE_KERNELS_BEGIN_SIMD_CODE
#define MOE_KERNELS_END_SIMD_CODE
#endif

namespace moe::kernels {

/// Name of an xsimd architecture ("avx512bw", "fma3+avx2", "sse2", ...), so benchmarks and
/// examples can print which code path ran.
template <class Arch = xsimd::default_arch>
constexpr const char* arch_name() {
  return Arch::name();
}

namespace detail {

/// Lanes of one batch of S on Arch, as a signed index so loop bounds need no casts.
template <class S, class Arch>
inline constexpr Index lanes = static_cast<Index>(xsimd::batch<S, Arch>::size);

}  // namespace detail

}  // namespace moe::kernels

#endif  // MOE_KERNELS_ARCH_HPP
