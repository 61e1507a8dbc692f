// LayerStack: x_{l+1} = x_l + layer_l(x_l), checked against the layers run by hand; the hook
// sees each layer's input; shapes are checked.
#include <moe/layer/layer_stack.hpp>
#include <moe/layer/moe_layer.hpp>

#include <catch2/catch.hpp>
#include <support/random.hpp>

#include <vector>

using moe::Index;

namespace {
moe::MixtralMoE<double> stack_layer(Index E, Index d, Index ff, unsigned seed) {
  moe::RowMatrix<double> gate = moe::test::random_matrix(E, d, seed);
  return moe::MixtralMoE<double>(moe::test::swiglu<double>(E, d, ff, seed + 1),
                                 moe::SoftmaxTopKRouter<double>(gate, 2, moe::SoftmaxTopK<double>{true}));
}
}  // namespace

TEST_CASE("a layer stack adds each layer's output to its input, in order", "[layer][stack]") {
  const Index E = 4, d = 6, ff = 5;
  std::vector<moe::MixtralMoE<double>> layers{stack_layer(E, d, ff, 1), stack_layer(E, d, ff, 3),
                                              stack_layer(E, d, ff, 5)};
  const moe::LayerStack<moe::MixtralMoE<double>> stack(layers);
  CHECK(stack.num_layers() == 3);
  CHECK(stack.dim() == d);
  const moe::RowMatrix<double> x = moe::test::random_matrix(7, d, 11);
  moe::RowMatrix<double> h = x;  // by hand
  std::vector<moe::RowMatrix<double>> inputs;
  for (const auto& layer : layers) {
    inputs.push_back(h);
    moe::Workspace<double> ws;
    const moe::RowMatrix<double> y = layer.forward(h, ws);
    h = h + y;
  }
  std::vector<moe::Workspace<double>> ws;
  std::vector<Index> seen;
  const moe::RowMatrix<double> y = stack.forward(x, ws, {}, [&](Index l, const moe::ConstMatrixRef<double>& in) {
    CHECK(in == inputs[static_cast<std::size_t>(l)]);
    seen.push_back(l);
  });
  CHECK(y == h);
  CHECK(seen == std::vector<Index>{0, 1, 2});
  REQUIRE(ws.size() == 3);
  CHECK(ws[2].stats.assignments == 7 * 2);  // layer 2's statistics stay in its workspace
}

TEST_CASE("a layer stack refuses layers of different widths and inputs of the wrong width", "[layer][stack][errors]") {
  CHECK_THROWS_WITH(moe::LayerStack<moe::MixtralMoE<double>>({}),
                    "LayerStack::LayerStack(): layers expected at least one, got 0");
  CHECK_THROWS_WITH(moe::LayerStack<moe::MixtralMoE<double>>({stack_layer(4, 6, 5, 1), stack_layer(4, 7, 5, 2)}),
                    "LayerStack::LayerStack(): layer 1 input_dim (= layer 0's) expected 6, got 7");
  const moe::LayerStack<moe::MixtralMoE<double>> stack({stack_layer(4, 6, 5, 1)});
  std::vector<moe::Workspace<double>> ws;
  CHECK_THROWS_WITH(stack.forward(moe::RowMatrix<double>::Zero(2, 5), ws),
                    "LayerStack::forward(): x columns expected 6, got 5");
}
