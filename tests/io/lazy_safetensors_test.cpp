// LazySafetensorsFile and LazyCheckpoint: headers only, byte ranges on demand, truncation.
#include <moe/io/lazy_safetensors.hpp>
#include <moe/io/safetensors.hpp>

#include <catch2/catch.hpp>

#include <array>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <vector>

namespace fs = std::filesystem;

namespace {
fs::path write_file(const std::string& name) {
  const fs::path p = fs::temp_directory_path() / name;
  std::vector<float> a{1, 2, 3, 4, 5, 6};
  std::vector<double> b{0.1, 0.2};
  moe::io::SafetensorsWriter w;
  w.add<float>("a", {2, 3}, a);
  w.add<double>("b", {2}, b);
  w.save(p);
  return p;
}
}  // namespace

TEST_CASE("a lazy file reads one tensor's byte range, converted as SafetensorsFile converts", "[io][lazy]") {
  const fs::path p = write_file("moe_lazy_a.safetensors");
  const auto lazy = moe::io::LazySafetensorsFile::open(p);
  const auto whole = moe::io::SafetensorsFile::open(p);
  CHECK(lazy.size() == 2);
  std::array<float, 6> a{};
  const std::array<std::int64_t, 2> shape{2, 3};
  CHECK(lazy.read_into<float>("a", shape, a.data()) == 24);
  CHECK(std::vector<float>(a.begin(), a.end()) == whole.read<float>("a"));
  std::array<float, 2> b{};
  const std::array<std::int64_t, 1> bs{2};
  CHECK(lazy.read_into<float>("b", bs, b.data()) == 16);
  CHECK(std::vector<float>(b.begin(), b.end()) == whole.read<float>("b"));  // F64 -> float rounds the same
  const std::array<std::int64_t, 2> wrong{3, 2};
  CHECK_THROWS_WITH(lazy.read_into<float>("a", wrong, a.data()), Catch::Contains("expected shape [3, 2], got [2, 3]"));
  CHECK_THROWS_AS(lazy.info("c"), moe::io::MissingTensorError);
}

TEST_CASE("a file truncated after opening is an error naming file and tensor, never a short read", "[io][lazy][errors]") {
  const fs::path p = write_file("moe_lazy_trunc.safetensors");
  const auto lazy = moe::io::LazySafetensorsFile::open(p);
  fs::resize_file(p, fs::file_size(p) - 1);
  std::array<float, 6> a{};
  const std::array<std::int64_t, 2> shape{2, 3};
  CHECK_THROWS_WITH(lazy.read_into<float>("a", shape, a.data()),
                    Catch::Contains("moe_lazy_trunc.safetensors") && Catch::Contains("tensor 'a'") &&
                        Catch::Contains("file truncated: expected at least " + std::to_string(lazy.required_size())));
  // Truncated before opening: the header's ranges no longer fit the data section.
  CHECK_THROWS_AS(moe::io::LazySafetensorsFile::open(p), moe::io::FormatError);
}

TEST_CASE("a malformed header is refused when the file is opened", "[io][lazy][errors]") {
  const fs::path p = fs::temp_directory_path() / "moe_lazy_bad.safetensors";
  {
    std::ofstream out(p, std::ios::binary);
    const std::string header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,12]}})";
    const std::uint64_t n = header.size();
    out.write(reinterpret_cast<const char*>(&n), 8);
    out << header << std::string(12, '\0');
  }
  CHECK_THROWS_WITH(moe::io::LazySafetensorsFile::open(p), Catch::Contains("expected end - begin = 8"));
}

TEST_CASE("a file rewritten, renamed, removed or replaced after opening is an error naming file and tensor",
          "[io][lazy][errors]") {
  std::array<float, 6> a{};
  const std::array<std::int64_t, 2> shape{2, 3};
  SECTION("rewritten in place, same size") {
    const fs::path p = write_file("moe_lazy_rewrite.safetensors");
    const auto lazy = moe::io::LazySafetensorsFile::open(p);
    const auto when = fs::last_write_time(p);
    {
      std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
      f.seekp(static_cast<std::streamoff>(lazy.data_offset()));
      const float v = 42.0F;
      f.write(reinterpret_cast<const char*>(&v), sizeof v);
    }
    // The file system's clock may not have ticked since the open: move the time on explicitly.
    fs::last_write_time(p, when + std::chrono::seconds(1));
    CHECK(fs::file_size(p) == lazy.required_size());
    CHECK_THROWS_WITH(lazy.read_into<float>("a", shape, a.data()),
                      Catch::Contains("moe_lazy_rewrite.safetensors") && Catch::Contains("tensor 'a'") &&
                          Catch::Contains("file rewritten since it was opened"));
  }
  SECTION("grown") {
    const fs::path p = write_file("moe_lazy_grow.safetensors");
    const auto lazy = moe::io::LazySafetensorsFile::open(p);
    fs::resize_file(p, fs::file_size(p) + 4);
    CHECK_THROWS_WITH(lazy.read_into<float>("a", shape, a.data()),
                      Catch::Contains("file rewritten since it was opened: expected size " +
                                      std::to_string(lazy.required_size())));
  }
  SECTION("renamed") {
    const fs::path p = write_file("moe_lazy_rename.safetensors");
    const auto lazy = moe::io::LazySafetensorsFile::open(p);
    fs::rename(p, fs::temp_directory_path() / "moe_lazy_renamed.safetensors");
    CHECK_THROWS_WITH(lazy.read_into<float>("a", shape, a.data()),
                      Catch::Contains("moe_lazy_rename.safetensors") && Catch::Contains("tensor 'a'") &&
                          Catch::Contains("file renamed or removed since it was opened"));
  }
  SECTION("removed") {
    const fs::path p = write_file("moe_lazy_remove.safetensors");
    const auto lazy = moe::io::LazySafetensorsFile::open(p);
    fs::remove(p);
    CHECK_THROWS_WITH(lazy.read_into<float>("a", shape, a.data()),
                      Catch::Contains("file renamed or removed since it was opened"));
  }
  SECTION("replaced by another file of the same name") {
    const fs::path p = write_file("moe_lazy_replace.safetensors");
    const auto lazy = moe::io::LazySafetensorsFile::open(p);
    const fs::path other = write_file("moe_lazy_replacement.safetensors");
    fs::rename(other, p);  // the usual way to update a file: write a new one, rename it over
    CHECK_THROWS_WITH(lazy.read_into<float>("a", shape, a.data()),
                      Catch::Contains("tensor 'a'") && Catch::Contains("file replaced since it was opened"));
  }
  SECTION("unchanged: still reads") {
    const fs::path p = write_file("moe_lazy_same.safetensors");
    const auto lazy = moe::io::LazySafetensorsFile::open(p);
    CHECK_NOTHROW(lazy.read_into<float>("a", shape, a.data()));
    CHECK(a[5] == 6.0F);
  }
}
