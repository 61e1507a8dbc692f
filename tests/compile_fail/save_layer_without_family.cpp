// Must not compile: MixtralMoE and OlmoeMoE are one type, so save_layer needs the family.
#include <moe/io/save_layer.hpp>

int main() {
  const moe::MixtralMoE<float> layer(moe::SwiGLUExperts<float>(2, 4, 4), moe::SoftmaxTopKRouter<float>(2, 4, 1));
  moe::io::SafetensorsWriter w;
  moe::io::save_layer(w, layer, "mlp.");
  return 0;
}
