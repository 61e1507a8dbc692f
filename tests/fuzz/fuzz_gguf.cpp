// libFuzzer target: GgufFile::from_bytes on arbitrary bytes, then every metadata value read
// every way its type allows and every tensor's bytes touched and converted to float
// (fuzz_gguf_harness.hpp). A crash, a sanitizer report, or an exception other than
// moe::io::Error / std::invalid_argument is a finding.
#include "fuzz_gguf_harness.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  moe::fuzz::exercise_gguf(data, size);
  return 0;
}
