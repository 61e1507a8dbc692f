// Shared helpers for tests that read ../shared/golden (or $MOE_GOLDEN_DIR).
#ifndef MOE_TESTS_SUPPORT_GOLDEN_HPP
#define MOE_TESTS_SUPPORT_GOLDEN_HPP

#include <moe/io/safetensors.hpp>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

namespace moe::test {

inline std::filesystem::path golden_dir() {
  if (const char* env = std::getenv("MOE_GOLDEN_DIR"); env != nullptr && *env != '\0') return env;
  return MOE_DEFAULT_GOLDEN_DIR;
}

/// Every *.safetensors file in the golden folder, sorted; discovered, never listed by hand.
inline std::vector<std::filesystem::path> golden_cases() {
  std::vector<std::filesystem::path> files;
  const auto dir = golden_dir();
  if (!std::filesystem::is_directory(dir))
    throw std::runtime_error("golden folder not found: " + dir.string() + " (set MOE_GOLDEN_DIR)");
  for (const auto& entry : std::filesystem::directory_iterator(dir))
    if (entry.is_regular_file() && entry.path().extension() == ".safetensors") files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  return files;
}

/// ../shared/golden-variety (or $MOE_GOLDEN_VARIETY_DIR): the routing and expert variety cases.
inline std::filesystem::path golden_variety_dir() {
  if (const char* env = std::getenv("MOE_GOLDEN_VARIETY_DIR"); env != nullptr && *env != '\0') return env;
  return MOE_DEFAULT_GOLDEN_VARIETY_DIR;
}

/// Every *.safetensors file in the variety folder, sorted; discovered, never listed by hand.
inline std::vector<std::filesystem::path> golden_variety_cases() {
  std::vector<std::filesystem::path> files;
  const auto dir = golden_variety_dir();
  if (!std::filesystem::is_directory(dir))
    throw std::runtime_error("golden variety folder not found: " + dir.string() + " (set MOE_GOLDEN_VARIETY_DIR)");
  for (const auto& entry : std::filesystem::directory_iterator(dir))
    if (entry.is_regular_file() && entry.path().extension() == ".safetensors") files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  return files;
}

/// The golden README's error measure: max |a - b| / max |b|.
template <class A, class B>
double max_relative_error(const A& actual, const B& expected) {
  const double scale = expected.template cast<double>().cwiseAbs().maxCoeff();
  const double diff = (actual.template cast<double>() - expected.template cast<double>()).cwiseAbs().maxCoeff();
  return scale > 0 ? diff / scale : diff;
}

inline std::string meta(const io::SafetensorsFile& f, const std::string& key) {
  auto v = f.metadata(key);
  if (!v) throw std::runtime_error(f.display_name() + ": metadata key '" + key + "' missing");
  return *v;
}

}  // namespace moe::test

#endif  // MOE_TESTS_SUPPORT_GOLDEN_HPP
