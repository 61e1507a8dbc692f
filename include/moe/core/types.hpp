// Basic types shared by every stage of the pipeline.
#ifndef MOE_CORE_TYPES_HPP
#define MOE_CORE_TYPES_HPP

#include <Eigen/Core>

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace moe {

/// Signed index type used for every size and position (Eigen's).
using Index = Eigen::Index;

/// Tokens are rows: a batch of T tokens of width d is a T x d row-major matrix.
template <class S>
using RowMatrix = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

template <class S>
using Vector = Eigen::Matrix<S, Eigen::Dynamic, 1>;

template <class S>
using RowVector = Eigen::Matrix<S, 1, Eigen::Dynamic>;

/// Read-only view of a row-major matrix, accepted at every API boundary.
template <class S>
using ConstMatrixRef = Eigen::Ref<const RowMatrix<S>>;

/// Writable view of a row-major matrix.
template <class S>
using MatrixRef = Eigen::Ref<RowMatrix<S>>;

/// The scalar types the library is instantiated and tested with.
template <class S>
concept Scalar = std::same_as<S, float> || std::same_as<S, double>;

/// Inference records nothing for backward; training records what backward needs.
enum class Mode : std::uint8_t { inference, training };

namespace detail {
/// Resizes only when the shape changes, so steady-state calls do not allocate.
template <class M>
void ensure_shape(M& m, Index rows, Index cols) {
  if (m.rows() != rows || m.cols() != cols) m.resize(rows, cols);
}

/// dst (a row, cols values) += the sum of m's rows, added row by row in order: every column's
/// sum has the same order, and so the same bits, wherever m sits in memory. Eigen's
/// m.colwise().sum() on a block of a row-major matrix need not: its vectorised path reduces in
/// another order than its scalar one, and which columns take which can follow the block's
/// address (found by the expert-parallel tests: a slab at another offset on its owner rank).
template <class Row, class M>
void add_column_sums(Row&& dst, const M& m) {
  for (Index r = 0; r < m.rows(); ++r) dst += m.row(r);
}
}  // namespace detail

}  // namespace moe

#endif  // MOE_CORE_TYPES_HPP
