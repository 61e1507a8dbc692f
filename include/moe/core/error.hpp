// Argument checking at the API boundary.
//
// Every std::invalid_argument thrown by the library reads
//   "Class::method(): <what> expected <expected>, got <actual>"
// so a user can tell from the text alone which call was wrong and how.
#ifndef MOE_CORE_ERROR_HPP
#define MOE_CORE_ERROR_HPP

#include <Eigen/Core>

#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>

namespace moe::detail {

template <class... Parts>
[[nodiscard]] std::string concat(const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  return os.str();
}

/// Throws std::invalid_argument("where(): what expected E, got A").
template <class Expected, class Actual>
[[noreturn]] void throw_invalid(std::string_view where, std::string_view what, const Expected& expected,
                                const Actual& actual) {
  throw std::invalid_argument(concat(where, ": ", what, " expected ", expected, ", got ", actual));
}

/// Checks a condition; on failure throws the message above.
template <class Expected, class Actual>
void require(bool ok, std::string_view where, std::string_view what, const Expected& expected,
             const Actual& actual) {
  if (!ok) throw_invalid(where, what, expected, actual);
}

/// Checks that a matrix has the given shape.
template <class Matrix>
void require_shape(const Matrix& m, Eigen::Index rows, Eigen::Index cols, std::string_view where,
                   std::string_view what) {
  if (m.rows() != rows || m.cols() != cols)
    throw_invalid(where, what, concat("shape [", rows, ", ", cols, "]"),
                  concat("[", m.rows(), ", ", m.cols(), "]"));
}

}  // namespace moe::detail

#endif  // MOE_CORE_ERROR_HPP
