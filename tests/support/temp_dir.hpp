// A scratch folder of a test's own: ctest runs test cases as processes in parallel, so two cases
// (or two instantiations of one template case) must never share a file name under /tmp.
#ifndef MOE_TESTS_SUPPORT_TEMP_DIR_HPP
#define MOE_TESTS_SUPPORT_TEMP_DIR_HPP

#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <random>
#include <string>
#include <system_error>
#include <utility>

namespace moe::test {

/// A fresh folder under the system's temporary directory, named from the tag, the process id, a
/// counter and a random number, and removed with everything in it when the object goes.
class TempDir {
 public:
  explicit TempDir(const std::string& tag) {
    static std::atomic<unsigned> counter{0};
    std::random_device rd;
    path_ = std::filesystem::temp_directory_path() /
            ("moe_test_" + tag + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter++) + "_" +
             std::to_string(rd()));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    if (path_.empty()) return;
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(TempDir&& other) noexcept : path_(std::exchange(other.path_, {})) {}
  TempDir& operator=(TempDir&&) = delete;
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  [[nodiscard]] const std::filesystem::path& path() const { return path_; }
  [[nodiscard]] std::filesystem::path operator/(const std::filesystem::path& name) const { return path_ / name; }
  /// The path as messages quote it.
  [[nodiscard]] std::string str(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

}  // namespace moe::test

#endif  // MOE_TESTS_SUPPORT_TEMP_DIR_HPP
