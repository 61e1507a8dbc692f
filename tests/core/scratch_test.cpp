// Per-thread scratch: a lease reuses its thread's buffer, nested leases get their own, and
// buffers are aligned as Eigen aligns a RowMatrix.
#include <moe/core/scratch.hpp>

#include <catch2/catch.hpp>

#include <cstdint>
#include <thread>

namespace {
struct TagA {};
struct TagB {};
}  // namespace

TEST_CASE("a lease reuses the thread's buffer, nested leases and other tags get their own", "[core][scratch]") {
  const double* first = nullptr;
  {
    moe::detail::ScratchLease<double, TagA> lease;
    first = lease.data(100);
    REQUIRE(reinterpret_cast<std::uintptr_t>(first) % EIGEN_MAX_ALIGN_BYTES == 0);
  }
  {
    moe::detail::ScratchLease<double, TagA> again;
    REQUIRE(again.data(50) == first);  // smaller request: same buffer, nothing allocated
    moe::detail::ScratchLease<double, TagA> nested;
    REQUIRE(nested.data(50) != first);
    moe::detail::ScratchLease<double, TagB> other;
    REQUIRE(other.data(50) != first);
  }
  const double* elsewhere = nullptr;
  std::thread([&] {
    moe::detail::ScratchLease<double, TagA> lease;
    elsewhere = lease.data(100);
  }).join();
  REQUIRE(elsewhere != first);  // each thread has its own buffers
}

TEST_CASE("a lease's views: filled, zeros, a row-major matrix over its buffer, one element", "[core][scratch]") {
  moe::detail::ScratchLease<float, TagA> lease;
  const float* p = lease.filled(7, 2.5f);
  for (int i = 0; i < 7; ++i) REQUIRE(p[i] == 2.5f);
  auto z = lease.zeros(3, 4);
  REQUIRE(z.rows() == 3);
  REQUIRE(z.cols() == 4);
  REQUIRE(z.isZero(0.0f));
  auto m = lease.matrix(2, 3);
  m(1, 0) = 9.0f;
  REQUIRE(m.data()[3] == 9.0f);  // row-major over the lease's buffer
  REQUIRE(&lease.one() == m.data());
}
