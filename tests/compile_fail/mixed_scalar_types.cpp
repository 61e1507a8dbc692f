// Must not compile: float experts with a double router.
#include <moe/moe.hpp>

int main() {
  moe::MoELayer<moe::SwiGLUExperts<float>, moe::SoftmaxTopKRouter<double>, moe::WeightedSumCombiner<float>> layer(
      moe::SwiGLUExperts<float>(2, 4, 4), moe::SoftmaxTopKRouter<double>(2, 4, 1));
  return static_cast<int>(layer.num_experts());
}
