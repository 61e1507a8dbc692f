// Replays the fuzz targets' inputs in the ordinary suite (no clang or libFuzzer needed): every
// checked-in seed of tests/fuzz/corpus/ and every input a fuzzer once crashed on
// (tests/fuzz/regressions/<target>/), through the same harness the targets run
// (tests/fuzz/fuzz_harness.hpp, tests/fuzz/fuzz_gguf_harness.hpp). The hand-made malformed seeds
// must also each be refused.
#include "fuzz/fuzz_gguf_harness.hpp"
#include "fuzz/fuzz_harness.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;

// Beside this file: tests/io/ -> tests/fuzz/.
const fs::path fuzz_dir = fs::path(__FILE__).parent_path().parent_path() / "fuzz";

std::vector<std::uint8_t> slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::vector<fs::path> files_in(const fs::path& dir) {
  std::vector<fs::path> out;
  if (fs::is_directory(dir))
    for (const auto& e : fs::directory_iterator(dir))
      if (e.is_regular_file()) out.push_back(e.path());
  std::sort(out.begin(), out.end());
  return out;
}

void replay(const fs::path& dir, void (*exercise)(const std::uint8_t*, std::size_t)) {
  for (const fs::path& p : files_in(dir)) {
    INFO(p.string());
    const auto bytes = slurp(p);
    REQUIRE_NOTHROW(exercise(bytes.data(), bytes.size()));
  }
}

}  // namespace

TEST_CASE("every seed of the fuzz corpus runs through the harness without a finding", "[io][fuzz]") {
  REQUIRE(files_in(fuzz_dir / "corpus" / "fuzz_safetensors").size() >= 40);
  REQUIRE(files_in(fuzz_dir / "corpus" / "fuzz_loaders").size() == 40);  // 20 families, each also "_as_next"
  replay(fuzz_dir / "corpus" / "fuzz_safetensors", moe::fuzz::exercise_reader);
  replay(fuzz_dir / "corpus" / "fuzz_loaders", moe::fuzz::exercise_loaders);
  REQUIRE(files_in(fuzz_dir / "corpus" / "fuzz_gguf").size() >= 60);
  replay(fuzz_dir / "corpus" / "fuzz_gguf", moe::fuzz::exercise_gguf);
}

TEST_CASE("every input a fuzzer found stays fixed", "[io][fuzz]") {
  replay(fuzz_dir / "regressions" / "fuzz_safetensors", moe::fuzz::exercise_reader);
  replay(fuzz_dir / "regressions" / "fuzz_loaders", moe::fuzz::exercise_loaders);
  replay(fuzz_dir / "regressions" / "fuzz_gguf", moe::fuzz::exercise_gguf);
}

TEST_CASE("the seeds named valid_ parse, and every other reader seed is refused with a FormatError", "[io][fuzz]") {
  int valid = 0, refused = 0;
  for (const fs::path& p : files_in(fuzz_dir / "corpus" / "fuzz_safetensors")) {
    INFO(p.filename().string());
    const auto raw = slurp(p);
    std::vector<std::byte> bytes(raw.size());
    std::transform(raw.begin(), raw.end(), bytes.begin(), [](std::uint8_t b) { return std::byte{b}; });
    if (p.filename().string().starts_with("valid_")) {
      REQUIRE_NOTHROW(moe::io::SafetensorsFile::from_bytes(bytes, p.filename().string()));
      ++valid;
    } else {
      REQUIRE_THROWS_AS(moe::io::SafetensorsFile::from_bytes(bytes, p.filename().string()), moe::io::FormatError);
      ++refused;
    }
  }
  REQUIRE(valid >= 10);
  REQUIRE(refused >= 30);
}

TEST_CASE("each family's seed loads with its own loader", "[io][fuzz]") {
  // The loader seeds are byte 0 = loader index, then the file; the fuzz harness swallows
  // refusals, so check here that the valid seeds really load (a harness that refused
  // everything would make the fuzzer explore nothing past the loaders' first check).
  int loaded = 0;
  for (const fs::path& p : files_in(fuzz_dir / "corpus" / "fuzz_loaders")) {
    if (p.filename().string().ends_with("_as_next")) continue;
    INFO(p.filename().string());
    const auto raw = slurp(p);
    REQUIRE(raw.size() > 1);
    std::vector<std::byte> bytes(raw.size() - 1);
    std::transform(raw.begin() + 1, raw.end(), bytes.begin(), [](std::uint8_t b) { return std::byte{b}; });
    const auto f = moe::io::SafetensorsFile::from_bytes(bytes, p.filename().string());
    REQUIRE_NOTHROW(moe::fuzz::detail::load_one(raw[0], f));
    ++loaded;
  }
  REQUIRE(loaded == 20);
}

TEST_CASE("the GGUF seeds named valid_ parse, and every other one is refused with a FormatError", "[io][fuzz]") {
  int valid = 0, refused = 0;
  for (const fs::path& p : files_in(fuzz_dir / "corpus" / "fuzz_gguf")) {
    INFO(p.filename().string());
    const auto raw = slurp(p);
    std::vector<std::byte> bytes(raw.size());
    std::transform(raw.begin(), raw.end(), bytes.begin(), [](std::uint8_t b) { return std::byte{b}; });
    if (p.filename().string().starts_with("valid_")) {
      REQUIRE_NOTHROW(moe::io::GgufFile::from_bytes(bytes, p.filename().string()));
      ++valid;
    } else {
      REQUIRE_THROWS_AS(moe::io::GgufFile::from_bytes(bytes, p.filename().string()), moe::io::FormatError);
      ++refused;
    }
  }
  REQUIRE(valid >= 8);
  REQUIRE(refused >= 50);
}
