// The packed copies of a bank's projections (kernels::PackedMatrix), kept next to the
// checkpoint-layout weights and rebuilt when those change (docs/experts.md#packed-weights).
#ifndef MOE_EXPERT_PACKED_CACHE_HPP
#define MOE_EXPERT_PACKED_CACHE_HPP

#include <moe/core/types.hpp>
#include <moe/kernels/packed_gemm.hpp>
#include <moe/kernels/weight_types.hpp>

#include <atomic>
#include <bit>
#include <cstdint>
#include <string>
#include <mutex>
#include <stdexcept>
#include <type_traits>
#include <utility>
#include <vector>
#include <xsimd/xsimd.hpp>

namespace moe {

/// The element type an expert bank's forward products read its weights in.
///  - native: the bank's scalar (float or double), packed once; exact gradients.
///  - bf16: rounded to bf16 when packed, activations rounded to bf16 in each product, float
///    accumulation (VDPBF16PS on AVX512-BF16): about twice the float speed, inference only
///    (backward throws), errors measured in docs/experts.md#packed-weights. Float banks only.
enum class ComputeType { native, bf16 };

/// Packed copies of a bank's projections: `count` matrices (expert e's projections at indices
/// the bank chooses), packed for one architecture's layout, in S or bf16.
///
/// The bank's non-const accessors (and its weights_changed()) call invalidate(); its forward
/// calls get<Arch>(), which packs
/// every matrix from the bank's current weights the first time after an invalidate, under a
/// lock, and after that only reads: forwards may run on many threads at once (they do in a
/// layer), and a non-const access to the bank must not overlap them, as for any C++ object.
/// The layout is the first Arch that asks; a forward for an architecture with another layout
/// gets nullptr and runs the unpacked product (kernels::gemm) instead. Copies and moves start
/// unpacked (the copy packs at its first forward); the packed matrices are not parameters.
template <class S>
class PackedCache {
 public:
  PackedCache() = default;
  PackedCache(const PackedCache& other) : compute_(other.compute_) {}
  PackedCache(PackedCache&& other) noexcept : compute_(other.compute_) {}
  PackedCache& operator=(const PackedCache& other) {
    if (this != &other) {
      compute_ = other.compute_;
      invalidate();
    }
    return *this;
  }
  PackedCache& operator=(PackedCache&& other) noexcept { return *this = static_cast<const PackedCache&>(other); }
  ~PackedCache() = default;

  /// The weights changed: the next get() packs again (into the same storage, no allocation
  /// when the shapes are the same).
  void invalidate() noexcept { valid_.store(false, std::memory_order_release); }

  [[nodiscard]] ComputeType compute() const noexcept { return compute_; }
  void set_compute(ComputeType c) {
    static_assert(std::is_same_v<S, float> || std::is_same_v<S, double>);
    if (c == ComputeType::bf16 && !std::is_same_v<S, float>)
      throw std::invalid_argument("PackedCache::set_compute(): ComputeType::bf16 expected a float bank, got double");
    compute_ = c;
    invalidate();
  }

  /// The packed matrices for Arch, source(i) giving matrix i [n, k] (an Eigen expression in the
  /// product's B^T orientation) when they must be packed; nullptr when the cache holds another
  /// architecture's layout. P is S for ComputeType::native, bf16 for ComputeType::bf16.
  template <class P, class Arch = xsimd::default_arch, class Source>
  const kernels::PackedMatrix<P>* get(Index count, Source&& source) const {
    using Tile = kernels::PackedTile<S, P, Arch>;
    if (!valid_.load(std::memory_order_acquire)) {
      const std::lock_guard<std::mutex> lock(mutex_);
      if (!valid_.load(std::memory_order_relaxed)) {
        if constexpr (std::is_same_v<P, bf16>) {
          native_.clear();
        } else {
          half_.clear();
        }
        auto& mats = storage<P>();
        mats.resize(static_cast<std::size_t>(count));
        for (Index i = 0; i < count; ++i) mats[static_cast<std::size_t>(i)].pack(source(i), Tile::nr, Tile::group);
        nr_ = Tile::nr;
        group_ = Tile::group;
        packed_bf16_ = std::is_same_v<P, bf16>;
        valid_.store(true, std::memory_order_release);
      }
    }
    if (nr_ != Tile::nr || group_ != Tile::group || packed_bf16_ != std::is_same_v<P, bf16>) return nullptr;
    return storage<P>().data();
  }

  /// Debug builds (no NDEBUG): throws std::logic_error naming `where` when packed matrix i no
  /// longer holds source(i), i.e. the weights were changed through a block or pointer kept from
  /// before the last forward, without weights_changed(). Release builds check nothing.
  template <class P, class Source>
  void verify([[maybe_unused]] const kernels::PackedMatrix<P>& packed, [[maybe_unused]] Index i,
              [[maybe_unused]] Source&& source, [[maybe_unused]] const char* where) const {
#ifndef NDEBUG
    const auto m = source(i);
    for (Index j = 0; j < m.rows(); ++j)
      for (Index p = 0; p < m.cols(); ++p) {
        P want;
        if constexpr (std::is_same_v<P, bf16>) {
          want = bf16(static_cast<float>(m(j, p)));
        } else {
          want = m(j, p);
        }
        if (bits_of(want) != bits_of(packed.at(j, p)))
          throw std::logic_error(std::string(where) +
                                 ": the weights changed after they were packed (written through a block or pointer "
                                 "kept from before a forward); expected the bank told, by a non-const accessor or "
                                 "weights_changed(), got no notice (docs/experts.md#packed-weights)");
      }
#endif
  }

  /// Bytes of the packed copies (0 before the first forward after a change).
  [[nodiscard]] std::size_t bytes() const noexcept {
    if (!valid_.load(std::memory_order_acquire)) return 0;
    std::size_t b = 0;
    for (const auto& m : native_) b += m.bytes();
    for (const auto& m : half_) b += m.bytes();
    return b;
  }

 private:
  /// The bit pattern of a packed element (NaN payloads and signed zeros compared exactly).
  template <class P>
  static auto bits_of(const P& v) noexcept {
    if constexpr (std::is_same_v<P, bf16>) {
      return v.bits;
    } else if constexpr (sizeof(P) == 4) {
      return std::bit_cast<std::uint32_t>(v);
    } else {
      return std::bit_cast<std::uint64_t>(v);
    }
  }

  template <class P>
  std::vector<kernels::PackedMatrix<P>>& storage() const {
    if constexpr (std::is_same_v<P, bf16>) {
      return half_;
    } else {
      return native_;
    }
  }

  ComputeType compute_ = ComputeType::native;
  mutable std::mutex mutex_;
  mutable std::atomic<bool> valid_{false};
  mutable Index nr_ = 0;
  mutable Index group_ = 0;
  mutable bool packed_bf16_ = false;
  mutable std::vector<kernels::PackedMatrix<S>> native_;
  mutable std::vector<kernels::PackedMatrix<bf16>> half_;
};

}  // namespace moe

#endif  // MOE_EXPERT_PACKED_CACHE_HPP
