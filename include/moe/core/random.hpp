// Counter-based randomness: a value is a pure function of (seed, step, token, lane), so
// results do not depend on thread count, call order or batch splits.
#ifndef MOE_CORE_RANDOM_HPP
#define MOE_CORE_RANDOM_HPP

#include <cmath>
#include <cstdint>
#include <numbers>

namespace moe {

/// A stateless generator keyed by (seed, step). `bits(token, lane)` hashes the counter
/// (token, lane) with the key through SplitMix64's finaliser, applied twice with distinct
/// constants; streams for different tokens or lanes are independent for practical purposes.
class CounterRng {
 public:
  constexpr CounterRng(std::uint64_t seed, std::uint64_t step) noexcept : key_(mix(seed ^ mix(step + 0x9E3779B97F4A7C15ULL))) {}

  /// 64 random bits for (token, lane).
  [[nodiscard]] constexpr std::uint64_t bits(std::uint64_t token, std::uint64_t lane) const noexcept {
    return mix(key_ ^ mix(token * 0xD1B54A32D192ED03ULL + lane * 0x8CB92BA72F3D8DD7ULL + 0x632BE59BD9B4E019ULL));
  }

  /// Uniform in [0, 1) with 53 random bits.
  [[nodiscard]] constexpr double uniform(std::uint64_t token, std::uint64_t lane) const noexcept {
    return static_cast<double>(bits(token, lane) >> 11) * 0x1.0p-53;
  }

  /// Uniform in [lo, hi).
  [[nodiscard]] constexpr double uniform(std::uint64_t token, std::uint64_t lane, double lo, double hi) const noexcept {
    return lo + (hi - lo) * uniform(token, lane);
  }

  /// Standard normal by Box-Muller from two uniforms of the pair of lanes (2 lane, 2 lane + 1).
  [[nodiscard]] double normal(std::uint64_t token, std::uint64_t lane) const noexcept {
    const double u1 = 1.0 - uniform(token, 2 * lane);  // (0, 1]: log is finite
    const double u2 = uniform(token, 2 * lane + 1);
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
  }

 private:
  static constexpr std::uint64_t mix(std::uint64_t z) noexcept {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }

  std::uint64_t key_;
};

}  // namespace moe

#endif  // MOE_CORE_RANDOM_HPP
