// The tiny layer the training tests step (three ReLU FFN experts with biases, a softmax top-2
// router with a bias: matrices, expert slices, row biases and a router bias), its gradients
// filled with arbitrary values, and a flat copy of any parameter set to compare.
#ifndef MOE_TESTS_SUPPORT_TINY_LAYER_HPP
#define MOE_TESTS_SUPPORT_TINY_LAYER_HPP

#include <moe/moe.hpp>

#include <string>
#include <utility>
#include <vector>

#include "support/random.hpp"

namespace moe::test {

using TinyLayer = moe::MoELayer<moe::FFNExperts<double, moe::Activation::relu>, moe::SoftmaxTopKRouter<double>,
                                moe::WeightedSumCombiner<double>>;

/// A TinyLayer of width d, every parameter N(0, 0.5^2) (experts) or N(0, 1) (router) by seed.
inline TinyLayer tiny_layer(Index d = 4) {
  moe::FFNExperts<double, moe::Activation::relu> experts(3, d, 5);
  experts.enable_biases();
  unsigned seed = 10;
  experts.for_each_parameter([&](const std::string&, auto&& b) { fill(b, seed++, 0.5); });
  moe::SoftmaxTopKRouter<double> router(3, d, 2, {}, /*with_bias=*/true);
  fill(router.weight(), 1);
  fill(router.bias(), 2);
  return {std::move(experts), std::move(router)};
}

/// Every tensor of p, flattened row by row, in for_each_parameter order.
template <class P>
std::vector<std::vector<double>> snapshot(const P& p) {
  std::vector<std::vector<double>> out;
  p.for_each_parameter([&](const std::string&, const auto& b) {
    std::vector<double> v;
    for (Index r = 0; r < b.rows(); ++r)
      for (Index c = 0; c < b.cols(); ++c) v.push_back(b(r, c));
    out.push_back(std::move(v));
  });
  return out;
}

/// Gradients of arbitrary values: the optimisers must not care where they came from.
inline void random_gradients(TinyLayer::gradients_type& g, unsigned seed) {
  g.for_each_parameter([&](const std::string&, auto&& b) { fill(b, seed++, 0.7); });
}

}  // namespace moe::test

#endif  // MOE_TESTS_SUPPORT_TINY_LAYER_HPP
