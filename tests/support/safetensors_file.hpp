// A safetensors file built in memory by a test, as the loaders' tests open it.
#ifndef MOE_TESTS_SUPPORT_SAFETENSORS_FILE_HPP
#define MOE_TESTS_SUPPORT_SAFETENSORS_FILE_HPP

#include <moe/io/safetensors.hpp>

#include <moe/core/types.hpp>

#include <cstddef>
#include <string>
#include <vector>

namespace moe::test {

/// The file w describes, opened from memory under the display name `name` (the name every
/// error message quotes).
inline moe::io::SafetensorsFile in_memory(const moe::io::SafetensorsWriter& w,
                                          const std::string& name = "layer.safetensors") {
  return moe::io::SafetensorsFile::from_bytes(w.to_bytes(), name);
}

/// Whether block m holds exactly the values of the file's tensor `name` (row-major), read as
/// double: a loader's weight against its checkpoint.
template <class Block>
bool equals_file(const moe::io::SafetensorsFile& f, const std::string& name, const Block& m) {
  const std::vector<double> v = f.read<double>(name);
  if (static_cast<Index>(v.size()) != m.size()) return false;
  for (Index r = 0; r < m.rows(); ++r)
    for (Index c = 0; c < m.cols(); ++c)
      if (static_cast<double>(m(r, c)) != v[static_cast<std::size_t>(r * m.cols() + c)]) return false;
  return true;
}

}  // namespace moe::test

#endif  // MOE_TESTS_SUPPORT_SAFETENSORS_FILE_HPP
