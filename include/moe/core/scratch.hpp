// Per-thread scratch for stages that get no Workspace (routers are const and see only x, the
// RoutingResult and the context): grown on first use, then reused, so a steady-state call
// allocates nothing.
#ifndef MOE_CORE_SCRATCH_HPP
#define MOE_CORE_SCRATCH_HPP

#include <moe/core/types.hpp>

#include <cstddef>
#include <memory>
#include <vector>

namespace moe::detail {

/// Borrows one of the calling thread's buffers of element type T for the lifetime of the
/// lease. Buffers only grow (a std::vector keeps its capacity when it shrinks), so after the
/// first call with the largest shape a thread allocates nothing. Buffers are aligned as Eigen
/// aligns a RowMatrix (Eigen::aligned_allocator), so an Eigen expression assigned to a view of
/// a lease takes the same vectorised path, and gives the same bits, as with a RowMatrix or
/// Vector it replaces (an unaligned start would peel scalar elements, and e.g. exp or rsqrt
/// differ in the last bit between the packet and the scalar path). Leases nest: each nesting
/// level on a thread has its own buffers (a wrapped router borrowing inside its wrapper's
/// lease gets a different one). Tag separates use sites so each keeps its own high-water mark.
template <class T, class Tag = void>
class ScratchLease {
 public:
  ScratchLease() {
    State& s = state();
    if (s.depth == s.buffers.size()) s.buffers.push_back(std::make_unique<Buffer>());
    buffer_ = s.buffers[s.depth++].get();
  }
  ScratchLease(const ScratchLease&) = delete;
  ScratchLease& operator=(const ScratchLease&) = delete;
  ~ScratchLease() { --state().depth; }

  /// n elements (contents unspecified).
  [[nodiscard]] T* data(std::size_t n) {
    if (buffer_->size() < n) buffer_->resize(n);
    return buffer_->data();
  }
  /// One element, e.g. a whole RowMatrix or struct of buffers kept by the thread: its own
  /// members keep their sizes from call to call (resize to the same shape allocates nothing).
  [[nodiscard]] T& one() { return *data(1); }
  /// n elements, all set to value.
  [[nodiscard]] T* filled(std::size_t n, T value) {
    T* p = data(n);
    for (std::size_t i = 0; i < n; ++i) p[i] = value;
    return p;
  }
  /// A rows x cols row-major view (contents unspecified).
  [[nodiscard]] Eigen::Map<RowMatrix<T>> matrix(Index rows, Index cols) {
    return Eigen::Map<RowMatrix<T>>(data(static_cast<std::size_t>(rows * cols)), rows, cols);
  }
  /// A rows x cols row-major view, all zeros.
  [[nodiscard]] Eigen::Map<RowMatrix<T>> zeros(Index rows, Index cols) {
    auto m = matrix(rows, cols);
    m.setZero();
    return m;
  }

 private:
  using Buffer = std::vector<T, Eigen::aligned_allocator<T>>;
  struct State {
    std::vector<std::unique_ptr<Buffer>> buffers;
    std::size_t depth = 0;
  };
  static State& state() {
    thread_local State s;
    return s;
  }
  Buffer* buffer_;
};

}  // namespace moe::detail

#endif  // MOE_CORE_SCRATCH_HPP
