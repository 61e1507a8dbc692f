// The token-major sum every sparse combiner uses: each token's weighted slot rows in the
// plan's fixed order, owned by one task.
#include <moe/combine/token_major_sum.hpp>
#include <moe/dispatch/dispatch_plan.hpp>

#include <catch2/catch.hpp>

#include <cstring>
#include <random>
#include <vector>

#include "support/random.hpp"

using moe::Index;
using moe::RowMatrix;

TEST_CASE("token_major_sum adds or writes the sum of w(p) src(p) per token, the same bits on any pool",
          "[combine][token_major_sum]") {
  std::mt19937 rng(3);
  const Index T = 200, d = 5;
  const moe::RoutingResult<float> r = moe::test::random_routing<float>(rng, T, 4, 3);
  moe::DispatchPlan<float> plan;
  moe::build_plan(r, plan, moe::Capacity::fixed(140));
  const Index N = plan.rows();
  RowMatrix<float> src(N, d);
  moe::test::fill(src, 4);
  std::vector<float> w(static_cast<std::size_t>(N));
  std::normal_distribution<float> n(0.0f, 1.0f);
  for (float& v : w) v = n(rng);
  RowMatrix<double> want = RowMatrix<double>::Zero(T, d);
  for (Index p = 0; p < N; ++p)
    want.row(plan.token[std::size_t(p)]) += double(w[std::size_t(p)]) * src.row(p).cast<double>();

  RowMatrix<float> written = RowMatrix<float>::Constant(T, d, 3.0f);
  moe::detail::token_major_sum<xsimd::default_arch>(plan, src, w.data(), written, /*overwrite=*/true, nullptr);
  CHECK((written.cast<double>() - want).cwiseAbs().maxCoeff() < 1e-5);
  RowMatrix<float> added = RowMatrix<float>::Constant(T, d, 3.0f);
  moe::detail::token_major_sum<xsimd::default_arch>(plan, src, w.data(), added, /*overwrite=*/false, nullptr);
  CHECK(((added.cast<double>().array() - 3.0).matrix() - want).cwiseAbs().maxCoeff() < 1e-5);

  moe::ThreadPool pool(3);
  RowMatrix<float> pooled(T, d);
  moe::detail::token_major_sum<xsimd::default_arch>(plan, src, w.data(), pooled, /*overwrite=*/true, &pool);
  CHECK(std::memcmp(pooled.data(), written.data(), sizeof(float) * std::size_t(T * d)) == 0);
}
