// The activation kernels against their twins within an ulp bound, and their defining
// properties (saturation, symmetry, zeros) without an oracle.
#include <catch2/catch.hpp>

#include "support/kernel_sweep.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "moe/kernels/activations.hpp"
#include "moe/kernels/reference/activations.hpp"

namespace {

using moe::Index;
using moe::test::AlignedVector;
using moe::test::first_difference;
using moe::test::for_each_arch;
using moe::test::sweep_sizes;

// Tolerance against the twin, in units of eps * max(1, |ref|). Kernel and twin evaluate the
// same expression in the same order; only the transcendental differs (xsimd versus std::,
// each within about 1 ulp), measured at <= 2 eps for float and double on sse2, avx2, avx512.
// So 4. The one exception is double GeluErf: xsimd 8.1's double erf errs by up to 34 ulp near
// |x| = 2.2 (measured against std::erf), so it gets 64.
template <class S>
S allowed_error(S want, S ulps) {
  return ulps * std::numeric_limits<S>::epsilon() * std::max(S(1), std::abs(want));
}

// Uniform values in [-10, 10] with saturating and signed-zero inputs mixed in, at positions
// that land in both the SIMD body and the scalar tail.
template <class S>
AlignedVector<S> activation_inputs(std::mt19937& rng, Index size) {
  AlignedVector<S> x(static_cast<std::size_t>(size));
  moe::test::fill_uniform(x, rng, S(-10), S(10));
  const S specials[] = {S(0), S(-0.0), S(30), S(-30), S(1e4), S(-1e4)};
  for (std::size_t i = 0; i < x.size(); i += 5) x[i] = specials[(i / 5) % 6];
  return x;
}

template <class S, class Kernel, class Reference>
void check_against_reference(const char* name, Kernel kernel, Reference reference, S ulps) {
  std::mt19937 rng(17);
  for_each_arch([&]<class Arch>(Arch) {
    for (const Index n : sweep_sizes<S, Arch>()) {
      for (const Index offset : {Index{0}, Index{1}}) {
        CAPTURE(name, Arch::name(), n, offset);
        const AlignedVector<S> x = activation_inputs<S>(rng, offset + n);
        AlignedVector<S> got = x;
        AlignedVector<S> want = x;
        kernel.template operator()<Arch>(got.data() + offset, n);
        reference(want.data() + offset, n);
        for (std::size_t i = 0; i < x.size(); ++i) {
          CAPTURE(i, x[i], got[i], want[i]);
          REQUIRE(std::abs(got[i] - want[i]) <= allowed_error(want[i], ulps));
        }
      }
    }
  });
}

}  // namespace

TEMPLATE_TEST_CASE("activations match their references within the ulp bound",
                   "[kernels][activations]", float, double) {
  using S = TestType;
  namespace k = moe::kernels;
  namespace ref = moe::kernels::reference;
  const S gelu_erf_ulps = std::is_same_v<S, double> ? S(64) : S(4);
  check_against_reference<S>(
      "sigmoid", []<class Arch>(S* x, Index n) { k::Sigmoid<Arch>{}(x, n); },
      [](S* x, Index n) { ref::sigmoid(x, n); }, S(4));
  check_against_reference<S>(
      "silu", []<class Arch>(S* x, Index n) { k::Silu<Arch>{}(x, n); },
      [](S* x, Index n) { ref::silu(x, n); }, S(4));
  check_against_reference<S>(
      "gelu_erf", []<class Arch>(S* x, Index n) { k::GeluErf<Arch>{}(x, n); },
      [](S* x, Index n) { ref::gelu_erf(x, n); }, gelu_erf_ulps);
  check_against_reference<S>(
      "gelu_tanh", []<class Arch>(S* x, Index n) { k::GeluTanh<Arch>{}(x, n); },
      [](S* x, Index n) { ref::gelu_tanh(x, n); }, S(4));
}

TEMPLATE_TEST_CASE("Relu matches the reference bit for bit, NaN and -0 included",
                   "[kernels][activations]", float, double) {
  using S = TestType;
  std::mt19937 rng(19);
  for_each_arch([&]<class Arch>(Arch) {
    for (const Index n : sweep_sizes<S, Arch>()) {
      for (const Index offset : {Index{0}, Index{1}}) {
        CAPTURE(Arch::name(), n, offset);
        AlignedVector<S> got = activation_inputs<S>(rng, offset + n);
        got[got.size() - 1] = std::numeric_limits<S>::quiet_NaN();
        AlignedVector<S> want = got;
        moe::kernels::Relu<Arch>{}(got.data() + offset, n);
        moe::kernels::reference::relu(want.data() + offset, n);
        REQUIRE(first_difference(got.data(), want.data(), static_cast<Index>(got.size())) == "");
      }
    }
  });
  std::vector<S> x{-2, 3, 0, -0.0, std::numeric_limits<S>::quiet_NaN()};
  moe::kernels::relu(x.data(), 5);
  REQUIRE(x[0] == S(0));
  REQUIRE(x[1] == S(3));
  REQUIRE(x[2] == S(0));
  REQUIRE(x[3] == S(0));
  REQUIRE(std::isnan(x[4]));
}

TEMPLATE_TEST_CASE("SiluMul matches the reference and allows out to alias an input",
                   "[kernels][activations]", float, double) {
  using S = TestType;
  std::mt19937 rng(23);
  for_each_arch([&]<class Arch>(Arch) {
    for (const Index n : sweep_sizes<S, Arch>()) {
      for (const Index offset : {Index{0}, Index{1}}) {
        CAPTURE(Arch::name(), n, offset);
        const AlignedVector<S> gate = activation_inputs<S>(rng, offset + n);
        AlignedVector<S> up = activation_inputs<S>(rng, offset + n);
        std::shuffle(up.begin(), up.end(), rng);
        AlignedVector<S> got(gate.size(), S(0));
        AlignedVector<S> want(gate.size(), S(0));
        const S* g = gate.data() + offset;
        const S* u = up.data() + offset;
        moe::kernels::SiluMul<Arch>{}(g, u, got.data() + offset, n);
        moe::kernels::reference::silu_mul(g, u, want.data() + offset, n);
        for (std::size_t i = 0; i < got.size(); ++i) {
          CAPTURE(i, got[i], want[i]);
          // silu(gate)'s error (4 eps * max(1, |silu|)) is scaled by |up|.
          const S scale = std::max(S(1), std::abs(up[i]));
          REQUIRE(std::abs(got[i] - want[i]) <=
                  allowed_error(want[i], S(4)) * scale);
        }
        AlignedVector<S> in_gate = gate;  // out aliases gate
        moe::kernels::SiluMul<Arch>{}(in_gate.data() + offset, u, in_gate.data() + offset, n);
        AlignedVector<S> in_up = up;  // out aliases up
        moe::kernels::SiluMul<Arch>{}(g, in_up.data() + offset, in_up.data() + offset, n);
        REQUIRE(first_difference(in_gate.data() + offset, got.data() + offset, n) == "");
        REQUIRE(first_difference(in_up.data() + offset, got.data() + offset, n) == "");
      }
    }
  });
}

TEMPLATE_TEST_CASE("sigmoid saturates without overflow", "[kernels][activations]", float,
                   double) {
  using S = TestType;
  for_each_arch([&]<class Arch>(Arch) {
    CAPTURE(Arch::name());
    for (const Index n : sweep_sizes<S, Arch>()) {
      std::vector<S> x(static_cast<std::size_t>(n));
      for (Index i = 0; i < n; ++i) x[i] = (i % 2 == 0) ? S(1e4) : S(-1e4);
      moe::kernels::Sigmoid<Arch>{}(x.data(), n);
      for (Index i = 0; i < n; ++i) {
        CAPTURE(n, i, x[i]);
        REQUIRE(std::isfinite(x[i]));
        REQUIRE(x[i] == ((i % 2 == 0) ? S(1) : S(0)));
      }
    }
  });
  std::vector<S> half{0};
  moe::kernels::sigmoid(half.data(), 1);
  REQUIRE(half[0] == S(0.5));
}

TEMPLATE_TEST_CASE("silu and gelu vanish at zero, gelu_erf(x) - gelu_erf(-x) = x",
                   "[kernels][activations]", float, double) {
  using S = TestType;
  const S eps = std::numeric_limits<S>::epsilon();
  for_each_arch([&]<class Arch>(Arch) {
    CAPTURE(Arch::name());
    const Index n = sweep_sizes<S, Arch>().back();
    std::vector<S> zeros(static_cast<std::size_t>(n), S(0));
    std::vector<S> silu = zeros, gelu_erf = zeros, gelu_tanh = zeros;
    moe::kernels::Silu<Arch>{}(silu.data(), n);
    moe::kernels::GeluErf<Arch>{}(gelu_erf.data(), n);
    moe::kernels::GeluTanh<Arch>{}(gelu_tanh.data(), n);
    REQUIRE(silu == zeros);
    REQUIRE(gelu_erf == zeros);
    REQUIRE(gelu_tanh == zeros);

    std::mt19937 rng(29);
    std::vector<S> x(static_cast<std::size_t>(n));
    moe::test::fill_uniform(x, rng, S(-6), S(6));
    std::vector<S> pos = x, neg = x;
    for (S& v : neg) v = -v;
    moe::kernels::GeluErf<Arch>{}(pos.data(), n);
    moe::kernels::GeluErf<Arch>{}(neg.data(), n);
    // 0.5x(1 + erf) + 0.5x(1 - erf) = x; the erf errors cancel only up to their own size
    // (64 ulp of 1 in double, see allowed_error) times |x|, plus rounding of the sum.
    const S ulps = std::is_same_v<S, double> ? S(64) : S(4);
    for (std::size_t i = 0; i < x.size(); ++i) {
      CAPTURE(x[i], pos[i], neg[i]);
      REQUIRE(std::abs((pos[i] - neg[i]) - x[i]) <= ulps * eps * std::max(S(1), std::abs(x[i])));
    }

    // Far from zero GELU is the identity on the right and zero on the left.
    std::vector<S> far{S(20), S(-20)};
    std::vector<S> far_tanh = far;
    moe::kernels::GeluErf<Arch>{}(far.data(), 2);
    moe::kernels::GeluTanh<Arch>{}(far_tanh.data(), 2);
    REQUIRE(far[0] == S(20));
    REQUIRE(std::abs(far[1]) <= eps);
    REQUIRE(far_tanh[0] == S(20));
    REQUIRE(std::abs(far_tanh[1]) <= eps);
  });
}

TEMPLATE_TEST_CASE("activations of infinities and NaN agree with the references",
                   "[kernels][activations]", float, double) {
  using S = TestType;
  const S inf = std::numeric_limits<S>::infinity();
  const S nan = std::numeric_limits<S>::quiet_NaN();
  // Same result, NaN counting as equal to NaN: the saturating clamps in front of xsimd's
  // transcendentals must not change what the formula gives at the extremes.
  const auto same = [](S a, S b) { return (std::isnan(a) && std::isnan(b)) || a == b; };
  namespace k = moe::kernels;
  namespace ref = moe::kernels::reference;
  for_each_arch([&]<class Arch>(Arch) {
    const Index n = sweep_sizes<S, Arch>().back();
    std::vector<S> x(static_cast<std::size_t>(n));
    const S specials[] = {inf, -inf, nan, S(1e30), S(-1e30), S(0)};
    for (Index i = 0; i < n; ++i) x[i] = specials[i % 6];
    const auto check = [&](const char* name, auto kernel, auto reference) {
      std::vector<S> got = x, want = x;
      kernel(got.data(), n);
      reference(want.data(), n);
      for (Index i = 0; i < n; ++i) {
        CAPTURE(name, Arch::name(), x[i], got[i], want[i]);
        REQUIRE(same(got[i], want[i]));
      }
    };
    check("sigmoid", k::Sigmoid<Arch>{}, [](S* p, Index m) { ref::sigmoid(p, m); });
    check("silu", k::Silu<Arch>{}, [](S* p, Index m) { ref::silu(p, m); });
    check("relu", k::Relu<Arch>{}, [](S* p, Index m) { ref::relu(p, m); });
    check("gelu_erf", k::GeluErf<Arch>{}, [](S* p, Index m) { ref::gelu_erf(p, m); });
    check("gelu_tanh", k::GeluTanh<Arch>{}, [](S* p, Index m) { ref::gelu_tanh(p, m); });
  });
}
