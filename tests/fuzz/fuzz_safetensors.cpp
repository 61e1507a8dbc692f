// libFuzzer target: SafetensorsFile::from_bytes on arbitrary bytes, then every tensor read as
// float, double and int64 through every reader (fuzz_harness.hpp). A crash, a sanitizer report,
// or an exception other than moe::io::Error / std::invalid_argument is a finding.
#include "fuzz_harness.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  moe::fuzz::exercise_reader(data, size);
  return 0;
}
