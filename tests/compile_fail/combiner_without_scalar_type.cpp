// Must not compile: the combiner does not declare its scalar type.
#include <moe/moe.hpp>

struct NoScalar {};

int main() {
  moe::MoELayer<moe::SwiGLUExperts<float>, moe::SoftmaxTopKRouter<float>, NoScalar> layer(
      moe::SwiGLUExperts<float>(2, 4, 4), moe::SoftmaxTopKRouter<float>(2, 4, 1), NoScalar{});
  return static_cast<int>(layer.num_experts());
}
