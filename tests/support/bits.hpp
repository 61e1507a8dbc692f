// "Bit for bit": the comparison of every test that claims two computations agree exactly.
#ifndef MOE_TESTS_SUPPORT_BITS_HPP
#define MOE_TESTS_SUPPORT_BITS_HPP

#include <Eigen/Core>

#include <cstring>
#include <type_traits>

namespace moe::test {

/// Whether a and b have the same shape and each element the same bytes: -0.0 differs from 0.0
/// and a NaN equals only a NaN of the same payload, which value comparison would not say.
/// Blocks and maps compare too (element by element, whatever their strides).
template <class A, class B>
bool same_bits(const Eigen::DenseBase<A>& a, const Eigen::DenseBase<B>& b) {
  using Scalar = typename A::Scalar;
  static_assert(std::is_same_v<Scalar, typename B::Scalar>, "same_bits: compare matrices of one scalar type");
  if (a.rows() != b.rows() || a.cols() != b.cols()) return false;
  for (Eigen::Index r = 0; r < a.rows(); ++r)
    for (Eigen::Index c = 0; c < a.cols(); ++c) {
      const Scalar x = a.derived().coeff(r, c), y = b.derived().coeff(r, c);
      if (std::memcmp(&x, &y, sizeof(Scalar)) != 0) return false;
    }
  return true;
}

}  // namespace moe::test

#endif  // MOE_TESTS_SUPPORT_BITS_HPP
