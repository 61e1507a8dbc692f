// Must not compile: the expert bank has no forward().
#include <moe/moe.hpp>

struct NoForward {
  using scalar_type = float;
  moe::Index num_experts() const { return 2; }
  moe::Index input_dim() const { return 4; }
  moe::Index output_dim() const { return 4; }
  moe::Index hidden_cols() const { return 0; }
};

int main() {
  moe::MoELayer<NoForward, moe::SoftmaxTopKRouter<float>, moe::WeightedSumCombiner<float>> layer(
      NoForward{}, moe::SoftmaxTopKRouter<float>(2, 4, 1));
  return static_cast<int>(layer.num_experts());
}
