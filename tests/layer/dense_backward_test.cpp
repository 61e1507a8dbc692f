// The dense path's backward (Soft MoE) against central finite differences in double:
// L = sum(y * G) for a fixed random G, through the combine softmax, the experts, the slot
// mixing, the dispatch softmax and the logits (with and without l2 normalisation). The whole
// layer is smooth, so every gradient is checked, not only those of a fixed routing.
#include <moe/moe.hpp>

#include <catch2/catch.hpp>

#include <random>
#include <string>
#include <vector>

#include "support/finite_difference.hpp"
#include "support/random.hpp"

namespace {

using moe::Index;
using moe::RowMatrix;
using moe::test::numeric_gradient;
using moe::test::relative_gap;
using moe::test::weights_changed;
using Layer = moe::SoftMoE<double>;

using moe::test::random_matrix;

struct Shape {
  Index experts, d, ff, p, tokens, sequence_length;
};

Layer random_layer(const Shape& s, bool normalize, bool biases, unsigned seed) {
  moe::FFNExperts<double, moe::Activation::gelu_erf> experts(s.experts, s.d, s.ff);
  experts.wi() = random_matrix(s.experts * s.ff, s.d, seed + 1, 0.6);
  experts.wo() = random_matrix(s.experts * s.d, s.ff, seed + 2, 0.6);
  if (biases) {
    experts.enable_biases();
    experts.bi() = random_matrix(s.experts, s.ff, seed + 3, 0.3);
    experts.bo() = random_matrix(s.experts, s.d, seed + 4, 0.3);
  }
  moe::SoftRouter<double> router(random_matrix(s.d, s.experts * s.p, seed + 5, 0.7), s.p, normalize);
  router.scale() = 1.7;  // away from 1, so a missing factor of scale shows
  return {std::move(experts), std::move(router)};
}

/// Analytic gradients of L = sum(y * g) against finite differences of the same L.
void check_gradients(const Shape& s, bool normalize, bool biases, unsigned seed) {
  INFO("E " << s.experts << " d " << s.d << " ff " << s.ff << " p " << s.p << " T " << s.tokens << " sequence_length "
            << s.sequence_length << " normalize " << normalize << " biases " << biases);
  Layer layer = random_layer(s, normalize, biases, seed);
  RowMatrix<double> x = random_matrix(s.tokens, s.d, seed + 6);
  const RowMatrix<double> g = random_matrix(s.tokens, s.d, seed + 7);
  moe::ForwardContext ctx;
  ctx.sequence_length = s.sequence_length;
  const auto loss = [&] {
    moe::Workspace<double> w;
    return layer.forward(x, w, ctx).cwiseProduct(g).sum();
  };

  moe::Workspace<double> ws;
  moe::ForwardContext train = ctx;
  train.mode = moe::Mode::training;
  (void)layer.forward(x, ws, train);
  auto grads = layer.make_gradients();
  const RowMatrix<double> dx = layer.backward(g, ws, grads);

  CHECK(relative_gap(dx, numeric_gradient(x, loss)) < 1e-7);
  CHECK(relative_gap(grads.router.phi(), numeric_gradient(layer.router().phi(), loss)) < 1e-7);
  if (normalize) {
    Eigen::Map<RowMatrix<double>> scale(&layer.router().scale(), 1, 1);
    const RowMatrix<double> num = numeric_gradient(scale, loss);
    CHECK(relative_gap(RowMatrix<double>::Constant(1, 1, grads.router.scale()), num) < 1e-7);
  }
  CHECK(relative_gap(grads.experts.wi(), numeric_gradient(layer.experts().wi(), loss, 1e-6, weights_changed(layer))) < 1e-7);
  CHECK(relative_gap(grads.experts.wo(), numeric_gradient(layer.experts().wo(), loss, 1e-6, weights_changed(layer))) < 1e-7);
  if (biases) {
    CHECK(relative_gap(grads.experts.bi(), numeric_gradient(layer.experts().bi(), loss)) < 1e-7);
    CHECK(relative_gap(grads.experts.bo(), numeric_gradient(layer.experts().bo(), loss)) < 1e-7);
  }
}

const std::vector<Shape> shapes = {
    {3, 4, 5, 1, 6, 0},  // one sequence, p = 1
    {2, 5, 3, 2, 7, 0},  // one sequence, p = 2
    {3, 4, 3, 1, 8, 4},  // two sequences, p = 1
    {2, 3, 4, 2, 9, 3},  // three sequences, p = 2
    {4, 3, 2, 2, 4, 1},  // sequences of one token: D is all ones
};

}  // namespace

TEST_CASE("Soft MoE backward matches finite differences in every gradient", "[layer][soft][backward]") {
  unsigned seed = 100;
  for (const Shape& s : shapes)
    for (const bool normalize : {false, true}) {
      check_gradients(s, normalize, false, seed);
      seed += 10;
    }
}

TEST_CASE("Soft MoE backward matches finite differences with expert biases", "[layer][soft][backward]") {
  check_gradients({3, 4, 3, 2, 6, 3}, false, true, 300);
  check_gradients({2, 3, 4, 1, 5, 0}, true, true, 310);
}

TEST_CASE("Soft MoE gradients carry the checkpoint names, scale only with normalisation",
          "[layer][soft][backward]") {
  for (const bool normalize : {false, true}) {
    const Layer layer = random_layer({2, 3, 4, 2, 4, 0}, normalize, false, 7);
    auto grads = layer.make_gradients();
    std::vector<std::string> names;
    grads.for_each_parameter([&](const std::string& n, const auto& block) {
      names.push_back(n);
      CHECK(block.cwiseAbs().maxCoeff() == 0.0);
    });
    std::vector<std::string> expected = {"phi"};
    if (normalize) expected.emplace_back("scale");
    for (const char* e : {"0", "1"}) {
      expected.push_back(std::string("experts.expert_") + e + ".wi.weight");
      expected.push_back(std::string("experts.expert_") + e + ".wo.weight");
    }
    CHECK(names == expected);
    REQUIRE(grads.find("phi"));
    CHECK(grads.find("phi")->rows() == 3);
    CHECK(grads.find("phi")->cols() == 4);
    CHECK(grads.find("scale").has_value() == normalize);
    // The layer lists the same tensors with their values.
    std::vector<std::string> layer_names;
    layer.for_each_parameter([&](const std::string& n, const auto&) { layer_names.push_back(n); });
    CHECK(layer_names == expected);
  }
}

TEST_CASE("Soft MoE backward accumulates gradients, overwrites dx, and ignores the aux and z weights",
          "[layer][soft][backward]") {
  const Layer layer = random_layer({3, 4, 3, 2, 6, 3}, true, false, 40);
  const RowMatrix<double> x = random_matrix(6, 4, 41);
  const RowMatrix<double> g = random_matrix(6, 4, 42);
  moe::Workspace<double> ws;
  moe::ForwardContext ctx;
  ctx.sequence_length = 3;
  ctx.mode = moe::Mode::training;
  (void)layer.forward(x, ws, ctx);
  auto once = layer.make_gradients();
  const RowMatrix<double> dx1 = layer.backward(g, ws, once);
  auto twice = layer.make_gradients();
  RowMatrix<double> dx2 = RowMatrix<double>::Constant(6, 4, 5.0);
  layer.backward(g, dx2, ws, twice);
  layer.backward(g, dx2, ws, twice);
  CHECK(relative_gap(dx2, dx1) == 0.0);
  CHECK(relative_gap(twice.router.phi(), 2.0 * once.router.phi()) < 1e-15);
  CHECK(twice.router.scale() == Approx(2.0 * once.router.scale()).epsilon(1e-14));
  CHECK(relative_gap(twice.experts.wi(), 2.0 * once.experts.wi()) < 1e-15);

  // The aux and z losses are defined on token-choice probabilities: nothing for a dense router.
  auto none = layer.make_gradients();
  moe::LossWeights<double> w;
  w.aux = 1.0;
  w.z = 1.0;
  const RowMatrix<double> dx0 = layer.backward(RowMatrix<double>::Zero(6, 4), ws, none, w);
  CHECK(dx0.cwiseAbs().maxCoeff() == 0.0);
  none.for_each_parameter([](const std::string&, const auto& block) { CHECK(block.cwiseAbs().maxCoeff() == 0.0); });
}

TEST_CASE("Soft MoE backward of an empty batch", "[layer][soft][backward]") {
  const Layer layer = random_layer({2, 3, 4, 2, 0, 0}, false, false, 50);
  moe::Workspace<double> ws;
  moe::ForwardContext ctx;
  ctx.mode = moe::Mode::training;
  const RowMatrix<double> x(0, 3);
  (void)layer.forward(x, ws, ctx);
  auto grads = layer.make_gradients();
  const RowMatrix<double> dx = layer.backward(RowMatrix<double>(0, 3), ws, grads);
  CHECK(dx.rows() == 0);
  CHECK(grads.router.phi().cwiseAbs().maxCoeff() == 0.0);
}
