// FileIdentity: an open file compared with what fstat said when it was opened (the check the
// lazy safetensors reader and the GGUF mapping make around every read).
#include <moe/io/file_identity.hpp>

#include <catch2/catch.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>

namespace {
namespace fs = std::filesystem;

fs::path identity_file(const std::string& name) {
  const fs::path p = fs::temp_directory_path() / ("moe_file_identity_" + name);
  std::ofstream(p, std::ios::binary | std::ios::trunc) << std::string(100, 'x');
  return p;
}

/// An open descriptor, closed at the end of the scope.
struct Fd {
  int fd;
  explicit Fd(const fs::path& p) : fd(::open(p.c_str(), O_RDONLY | O_CLOEXEC)) { REQUIRE(fd >= 0); }
  ~Fd() { ::close(fd); }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
};
}  // namespace

TEST_CASE("a file identity passes while the file is unchanged and names each change", "[io][identity]") {
  using moe::io::detail::FileIdentity;
  const fs::path p = identity_file("a");
  const Fd f(p);
  const FileIdentity id = FileIdentity::of(f.fd, p, "a.bin");
  CHECK(id.size == 100);
  CHECK(id.path.is_absolute());
  CHECK_NOTHROW(id.check(f.fd, "a.bin", "t", 100));
  CHECK_THROWS_WITH(id.check(f.fd, "a.bin", "t", 101),
                    "moe::io: file 'a.bin': tensor 't': file truncated: expected at least 101 bytes (the header's data "
                    "section), got 100");
  SECTION("rewritten") {
    const auto when = fs::last_write_time(p);
    std::ofstream(p, std::ios::binary | std::ios::in | std::ios::out) << 'y';
    fs::last_write_time(p, when + std::chrono::seconds(2));
    CHECK_THROWS_WITH(id.check(f.fd, "a.bin", "t", 100), Catch::Contains("file rewritten since it was opened: expected size 100"));
  }
  SECTION("removed") {
    fs::remove(p);
    CHECK_THROWS_WITH(id.check(f.fd, "a.bin", "t", 100), Catch::Contains("file renamed or removed since it was opened"));
  }
  SECTION("replaced") {
    const fs::path q = identity_file("b");
    fs::rename(q, p);
    CHECK_THROWS_WITH(id.check(f.fd, "a.bin", "t", 100),
                      Catch::Contains("file replaced since it was opened: expected the path to name inode " +
                                      std::to_string(id.inode)));
  }
  fs::remove(p);
}
