#include <moe/moe.hpp>

#include <catch2/catch.hpp>

TEST_CASE("a Mixtral layer compiles and runs", "[layer]") {
  moe::MixtralMoE<float> layer(moe::SwiGLUExperts<float>(4, 8, 16), moe::SoftmaxTopKRouter<float>(4, 8, 2));
  moe::Workspace<float> ws;
  moe::RowMatrix<float> x = moe::RowMatrix<float>::Random(5, 8);
  auto y = layer.forward(x, ws);
  REQUIRE(y.rows() == 5);
}
