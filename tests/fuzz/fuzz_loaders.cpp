// libFuzzer target: every layer loader (Mixtral, OLMoE, Qwen2-MoE, DeepSeek-V3, GPT-OSS,
// Switch, Soft MoE, noisy top-k, expert choice, hash, modality experts, domain-aware,
// task-aware) on arbitrary bytes with fixed configs;
// byte 0 picks the loader (fuzz_harness.hpp). A crash, a sanitizer report, or an exception
// other than moe::io::Error / std::invalid_argument is a finding.
#include "fuzz_harness.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  moe::fuzz::exercise_loaders(data, size);
  return 0;
}
