// Must not compile: the router has no route().
#include <moe/moe.hpp>

struct NoRoute {
  using scalar_type = float;
  moe::Index num_experts() const { return 2; }
  moe::Index input_dim() const { return 4; }
};

int main() {
  moe::MoELayer<moe::SwiGLUExperts<float>, NoRoute, moe::WeightedSumCombiner<float>> layer(
      moe::SwiGLUExperts<float>(2, 4, 4), NoRoute{});
  return static_cast<int>(layer.num_experts());
}
