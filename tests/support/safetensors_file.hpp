// A safetensors file built in memory by a test, as the loaders' tests open it.
#ifndef MOE_TESTS_SUPPORT_SAFETENSORS_FILE_HPP
#define MOE_TESTS_SUPPORT_SAFETENSORS_FILE_HPP

#include <moe/io/safetensors.hpp>

#include <string>

namespace moe::test {

/// The file w describes, opened from memory under the display name `name` (the name every
/// error message quotes).
inline moe::io::SafetensorsFile in_memory(const moe::io::SafetensorsWriter& w,
                                          const std::string& name = "layer.safetensors") {
  return moe::io::SafetensorsFile::from_bytes(w.to_bytes(), name);
}

}  // namespace moe::test

#endif  // MOE_TESTS_SUPPORT_SAFETENSORS_FILE_HPP
