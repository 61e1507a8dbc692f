// Step 1's output: sizing by reset, and the dense views derived from the triples.
#include <moe/contracts/routing_result.hpp>

#include <catch2/catch.hpp>

#include <vector>

using moe::Index;

TEST_CASE("reset sizes the triples and records T, E and k", "[contracts][routing]") {
  moe::RoutingResult<double> r;
  CHECK(r.size() == 0);
  r.reset(4, 3, 8, 2);
  CHECK(r.num_tokens == 4);
  CHECK(r.num_experts == 3);
  CHECK(r.k == 2);
  CHECK(r.size() == 8);
  CHECK(r.token.size() == 8);
  CHECK(r.expert.size() == 8);
  CHECK(r.gate.size() == 8);
  r.reset(1, 3, 0, 0);
  CHECK(r.size() == 0);
}

TEST_CASE("dense_gates sums each token's gates per expert, expert_counts counts assignments", "[contracts][routing]") {
  moe::RoutingResult<double> r;
  r.reset(3, 4, 5, 0);  // expert choice: k = 0, a token may appear any number of times
  r.token = {0, 0, 1, 2, 2};
  r.expert = {1, 3, 1, 0, 0};  // token 2 reaches expert 0 twice: the gates add
  r.gate = {0.25, 0.75, 1.0, 0.5, 0.125};
  moe::RowMatrix<double> want = moe::RowMatrix<double>::Zero(3, 4);
  want(0, 1) = 0.25;
  want(0, 3) = 0.75;
  want(1, 1) = 1.0;
  want(2, 0) = 0.625;
  CHECK(r.dense_gates() == want);
  CHECK(r.expert_counts() == std::vector<Index>{2, 2, 0, 1});
}
