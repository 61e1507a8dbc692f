// What an expert bank that asks for context sees of its slab: each row's token, position in
// its sequence and sequence.
#include <moe/contracts/expert.hpp>

#include <catch2/catch.hpp>

#include <vector>

using moe::Index;

TEST_CASE("ExpertContext: position and sequence of a slab row from its token and the sequence length",
          "[contracts][expert]") {
  const moe::RowMatrix<float> x = moe::RowMatrix<float>::Zero(12, 2);
  const std::vector<Index> tokens = {0, 5, 7, 11};
  moe::ForwardContext fwd;
  fwd.sequence_length = 4;  // three sequences of four tokens
  const moe::ExpertContext<float> ctx{fwd, x, tokens};
  CHECK(ctx.sequence_length() == 4);
  CHECK(ctx.position(0) == 0);
  CHECK(ctx.position(1) == 1);
  CHECK(ctx.position(2) == 3);
  CHECK(ctx.position(3) == 3);
  CHECK(ctx.sequence(0) == 0);
  CHECK(ctx.sequence(1) == 1);
  CHECK(ctx.sequence(2) == 1);
  CHECK(ctx.sequence(3) == 2);
}

TEST_CASE("ExpertContext: sequence length 0 makes the whole input one sequence", "[contracts][expert]") {
  const moe::RowMatrix<double> x = moe::RowMatrix<double>::Zero(9, 3);
  const std::vector<Index> tokens = {2, 8};
  const moe::ForwardContext fwd;
  const moe::ExpertContext<double> ctx{fwd, x, tokens};
  CHECK(ctx.sequence_length() == 9);
  CHECK(ctx.position(0) == 2);
  CHECK(ctx.position(1) == 8);
  CHECK(ctx.sequence(1) == 0);
}
