// A program outside the project that uses moe as a user would: through the package's
// targets only. Shared by the find_package and add_subdirectory consumers.
#include <moe/core/types.hpp>
// The umbrella header, once it exists: the installed tree must then carry it and everything
// it includes. (Replace with a plain #include once include/moe/moe.hpp is in place.)
#if __has_include(<moe/moe.hpp>)
#include <moe/moe.hpp>
#endif

#if MOE_CONSUMER_USE_IO
#include <moe/io/safetensors.hpp>

#include <nlohmann/json.hpp>
#endif

#include <cstdio>
#include <vector>

int main() {
  moe::RowMatrix<float> x(2, 3);
  x.setOnes();
  const moe::ConstMatrixRef<float> view(x);
  static_assert(moe::Scalar<float> && moe::Scalar<double> && !moe::Scalar<int>);
  if (view.sum() != 6.0f) {
    std::puts("consumer: unexpected sum");
    return 1;
  }
#if MOE_CONSUMER_USE_IO
  const auto j = nlohmann::json::parse(R"({"dtype": "F32"})");
  if (j.at("dtype") != "F32") {
    std::puts("consumer: unexpected json");
    return 1;
  }
  moe::io::SafetensorsWriter w;
  const float two[2] = {1.5f, -2.0f};
  w.add<float>("t", {2}, two);
  if (moe::io::SafetensorsFile::from_bytes(w.to_bytes()).read<float>("t") != std::vector<float>{1.5f, -2.0f}) {
    std::puts("consumer: unexpected safetensors round trip");
    return 1;
  }
#endif
  std::printf("consumer (%s, io %s): ok\n", MOE_CONSUMER_KIND, MOE_CONSUMER_USE_IO ? "on" : "off");
  return 0;
}
