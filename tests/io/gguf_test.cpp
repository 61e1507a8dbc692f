// GgufFile and GgufWriter: the writer's bytes against the format's definition, hand-built
// files read by the definition, round trips of every metadata type and tensor type, the
// typed getters' refusals, the ne -> row-major mapping, and one hand-corrupted file per
// validation rule with its message pinned (docs/gguf.md#validation).
#include "moe/io/gguf.hpp"

#include <catch2/catch.hpp>

#include "support/errors.hpp"
#include "support/gguf_file.hpp"

#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "moe/kernels/quant_blocks.hpp"

using Catch::Contains;
using moe::io::FormatError;
using moe::io::GgmlType;
using moe::io::GgufFile;
using moe::io::GgufType;
using moe::io::GgufWriter;
using moe::io::MetadataError;
using moe::io::MissingMetadataError;
using moe::io::MissingTensorError;
using moe::io::TensorMismatchError;
using moe::test::GgufBytes;
using moe::test::parse_gguf;

namespace {

/// The file must be refused with a FormatError whose message holds text.
void expect_format(const std::vector<std::byte>& bytes, const std::string& text) {
  INFO("expected: " << text);
  REQUIRE_THROWS_AS((void)parse_gguf(bytes), FormatError);
  REQUIRE_THROWS_WITH((void)parse_gguf(bytes), Contains("moe::io: file 'bad.gguf': ") && Contains(text));
}

/// One F32 tensor "w" ne [4, 2] at offset 0 and general.architecture = "test": 160 bytes
/// (header 24, the pair 44, the info 41, padding to 128, data 32).
GgufBytes valid_file() {
  GgufBytes b;
  b.header(1, 1).kv_str("general.architecture", "test").tensor("w", {4, 2}, 0, 0).pad();
  for (int i = 0; i < 8; ++i) b.put(static_cast<float>(i));
  return b;
}

std::vector<float> normal(std::size_t n, unsigned seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

std::string gguf_temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("moe_gguf_test_" + name)).string();
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// The format, by hand

TEST_CASE("a hand-built file reads as the format defines it", "[io][gguf]") {
  const GgufBytes b = valid_file();
  REQUIRE(b.size() == 160);
  const GgufFile f = parse_gguf(b.bytes(), "hand.gguf");
  CHECK(f.display_name() == "hand.gguf");
  CHECK(f.version() == 3);
  CHECK(f.alignment() == 32);
  CHECK(f.data_offset() == 128);
  REQUIRE(f.metadata().size() == 1);
  CHECK(f.metadata()[0].key() == "general.architecture");
  CHECK(f.get<std::string>("general.architecture") == "test");
  CHECK(f.get<std::string_view>("general.architecture") == "test");
  REQUIRE(f.size() == 1);
  const auto& t = f.info("w");
  CHECK(t.type == GgmlType::F32);
  CHECK(t.ne == std::vector<std::int64_t>{4, 2});
  CHECK(t.shape() == std::vector<std::int64_t>{2, 4});
  CHECK(t.offset == 0);
  CHECK(t.nbytes == 32);
  CHECK(t.numel() == 8);
  CHECK(t.cols() == 4);
  CHECK(t.rows() == 2);
  CHECK(f.raw("w").data() == f.bytes().data() + 128);
  CHECK(f.to_float("w") == std::vector<float>{0, 1, 2, 3, 4, 5, 6, 7});
  // ne[0] is the row: ne [4, 2] is the row-major 2 x 4 matrix [[0, 1, 2, 3], [4, 5, 6, 7]].
  const moe::RowMatrix<float> m = f.to_matrix("w");
  REQUIRE(m.rows() == 2);
  REQUIRE(m.cols() == 4);
  CHECK(m(0, 3) == 3.0f);
  CHECK(m(1, 0) == 4.0f);
}

TEST_CASE("hand-built quantized tensors dequantize by the format's definitions", "[io][gguf]") {
  // Q4_0 [32, 2]: block 0 d = 1, nibbles j | (15 - j) << 4; block 1 d = -0.5, all 0x0F.
  // Q8_0 [32]: d = 2, q = j - 16. F16 [2]: 1.5 and -65504. BF16 [2]: 3.140625 and -1.
  // Q4_K [256]: d = 1, dmin = 0.5, every scale 1 and min 2, quants i % 16.
  GgufBytes b;
  b.header(5, 0)
      .tensor("q4", {32, 2}, 2, 0)
      .tensor("q8", {32}, 8, 64)
      .tensor("h", {2}, 1, 128)
      .tensor("bf", {2}, 30, 160)
      .tensor("k", {256}, 12, 192)
      .pad();
  b.put(std::uint16_t{0x3C00});
  for (int j = 0; j < 16; ++j) b.u8(static_cast<std::uint8_t>(j | ((15 - j) << 4)));
  b.put(std::uint16_t{0xB800});
  for (int j = 0; j < 16; ++j) b.u8(0x0F);
  b.pad();
  b.put(std::uint16_t{0x4000});
  for (int j = 0; j < 32; ++j) b.put(static_cast<std::int8_t>(j - 16));
  b.pad();
  b.put(std::uint16_t{0x3E00}).put(std::uint16_t{0xFBFF}).pad();
  b.put(std::uint16_t{0x4049}).put(std::uint16_t{0xBF80}).pad();
  b.put(std::uint16_t{0x3C00}).put(std::uint16_t{0x3800});
  // 6-bit scale 1 and min 2 for all eight sub-blocks: bytes 0-3 scale, 4-7 min, 8-11 the
  // low nibbles of sub-blocks 4-7 (scale | min << 4); the top bits are all zero.
  for (int j = 0; j < 4; ++j) b.u8(1);
  for (int j = 0; j < 4; ++j) b.u8(2);
  for (int j = 0; j < 4; ++j) b.u8(0x21);
  for (int c = 0; c < 4; ++c)
    for (int l = 0; l < 32; ++l) b.u8(static_cast<std::uint8_t>(((64 * c + l) % 16) | (((64 * c + 32 + l) % 16) << 4)));
  b.pad();
  const GgufFile f = parse_gguf(b.bytes());
  const auto q4 = f.to_float("q4");
  for (int j = 0; j < 16; ++j) {
    CHECK(q4[static_cast<std::size_t>(j)] == static_cast<float>(j - 8));
    CHECK(q4[static_cast<std::size_t>(j + 16)] == static_cast<float>(15 - j - 8));
    CHECK(q4[static_cast<std::size_t>(32 + j)] == -3.5f);  // -0.5 * (15 - 8)
    CHECK(q4[static_cast<std::size_t>(48 + j)] == 4.0f);   // -0.5 * (0 - 8)
  }
  const auto q8 = f.to_float("q8");
  for (int j = 0; j < 32; ++j) CHECK(q8[static_cast<std::size_t>(j)] == 2.0f * static_cast<float>(j - 16));
  CHECK(f.to_float("h") == std::vector<float>{1.5f, -65504.0f});
  CHECK(f.to_float("bf") == std::vector<float>{3.140625f, -1.0f});
  const auto k = f.to_float("k");
  for (int i = 0; i < 256; ++i) CHECK(k[static_cast<std::size_t>(i)] == static_cast<float>(i % 16) - 1.0f);
  CHECK(f.to_matrix("q4").rows() == 2);
}

TEST_CASE("the writer's bytes are the format's, padding included", "[io][gguf]") {
  GgufWriter w;
  const std::vector<float> v{0, 1, 2, 3, 4, 5, 6, 7};
  w.set("general.architecture", "test").add_tensor("w", GgmlType::F32, {4, 2}, std::span<const float>(v));
  CHECK(w.to_bytes() == valid_file().bytes());

  // Two tensors: the second's offset is the first's size padded to the alignment, and the file
  // ends padded too (llama.cpp reads the padded size of the last tensor).
  GgufWriter w2;
  w2.set("general.alignment", std::uint32_t{16});
  w2.add_tensor("a", GgmlType::F32, {3}, std::span<const float>(v.data(), 3));
  w2.add_tensor("b", GgmlType::F16, {5}, std::vector<std::byte>(10, std::byte{0x3C}));
  GgufBytes want;
  want.header(2, 1).kv_u32("general.alignment", 16).tensor("a", {3}, 0, 0).tensor("b", {5}, 1, 16).pad(16);
  want.put(0.0f).put(1.0f).put(2.0f).pad(16).fill(10, 0x3C).pad(16);
  CHECK(w2.to_bytes() == want.bytes());
  const GgufFile f = moe::test::in_memory(w2);
  CHECK(f.alignment() == 16);
  CHECK(f.info("b").offset == 16);
  CHECK(f.to_float("b") == std::vector<float>(5, 1.05859375f));  // 0x3C3C: 1 + 60 / 1024
}

TEST_CASE("version 2 files, alignment 1 and files without tensors read", "[io][gguf]") {
  GgufBytes v2 = valid_file();
  v2.bytes()[4] = std::byte{2};
  CHECK(parse_gguf(v2.bytes()).version() == 2);

  GgufBytes a1;
  a1.header(1, 1).kv_u32("general.alignment", 1).tensor("odd", {3}, 1, 0);  // data right after the infos
  a1.put(std::uint16_t{0x3C00}).put(std::uint16_t{0xC000}).put(std::uint16_t{0x0001});
  const GgufFile f = parse_gguf(a1.bytes());
  CHECK(f.alignment() == 1);
  CHECK(f.data_offset() == a1.size() - 6);
  CHECK(f.to_float("odd") == std::vector<float>{1.0f, -2.0f, std::ldexp(1.0f, -24)});

  GgufBytes empty;
  empty.header(0, 0);
  const GgufFile e = parse_gguf(empty.bytes());
  CHECK(e.size() == 0);
  CHECK(e.metadata().empty());
  CHECK(e.data_offset() == 24);
}

// ---------------------------------------------------------------------------------------------
// Round trips

TEST_CASE("every metadata type round-trips through the writer and the reader", "[io][gguf]") {
  GgufWriter w;
  w.set("t.u8", std::uint8_t{250})
      .set("t.i8", std::int8_t{-120})
      .set("t.u16", std::uint16_t{65000})
      .set("t.i16", std::int16_t{-32000})
      .set("t.u32", std::uint32_t{4000000000u})
      .set("t.i32", std::int32_t{-2000000000})
      .set("t.f32", 0.1f)
      .set("t.bool", true)
      .set("t.string", std::string("héllo\nworld"))
      .set("t.empty", "")
      .set("t.u64", std::numeric_limits<std::uint64_t>::max())
      .set("t.i64", std::numeric_limits<std::int64_t>::min())
      .set("t.f64", -1e300)
      .set("t.false", false);
  w.set_array("a.u8", std::vector<std::uint8_t>{0, 255})
      .set_array("a.i8", std::vector<std::int8_t>{-128, 127})
      .set_array("a.u16", std::vector<std::uint16_t>{1, 65535})
      .set_array("a.i16", std::vector<std::int16_t>{-32768, 5})
      .set_array("a.u32", std::vector<std::uint32_t>{7, 8, 9})
      .set_array("a.i32", std::vector<std::int32_t>{-1, 0, 1})
      .set_array("a.f32", std::vector<float>{1.5f, -0.0f, std::numeric_limits<float>::infinity()})
      .set_array("a.bool", std::vector<bool>{true, false, true})
      .set_array("a.string", std::vector<std::string>{"a", "", "ccc", "日本"})
      .set_array("a.u64", std::vector<std::uint64_t>{1ull << 63})
      .set_array("a.i64", std::vector<std::int64_t>{-5})
      .set_array("a.f64", std::vector<double>{0.1, 2.0})
      .set_array("a.empty", std::vector<std::int32_t>{});
  w.set("t.u8", std::uint8_t{251});  // replaces, in place
  const GgufFile f = moe::test::in_memory(w);
  REQUIRE(f.metadata().size() == 27);
  CHECK(f.metadata()[0].key() == "t.u8");  // file order is the order set
  CHECK(f.metadata()[26].key() == "a.empty");
  CHECK(f.get<std::uint8_t>("t.u8") == 251);
  CHECK(f.get<std::int8_t>("t.i8") == -120);
  CHECK(f.get<std::uint16_t>("t.u16") == 65000);
  CHECK(f.get<std::int16_t>("t.i16") == -32000);
  CHECK(f.get<std::uint32_t>("t.u32") == 4000000000u);
  CHECK(f.get<std::int32_t>("t.i32") == -2000000000);
  CHECK(f.get<float>("t.f32") == 0.1f);
  CHECK(f.get<bool>("t.bool"));
  CHECK_FALSE(f.get<bool>("t.false"));
  CHECK(f.get<std::string>("t.string") == "héllo\nworld");
  CHECK(f.get<std::string>("t.empty").empty());
  CHECK(f.get<std::uint64_t>("t.u64") == std::numeric_limits<std::uint64_t>::max());
  CHECK(f.get<std::int64_t>("t.i64") == std::numeric_limits<std::int64_t>::min());
  CHECK(f.get<double>("t.f64") == -1e300);
  for (const auto& [key, type] : std::vector<std::pair<std::string, GgufType>>{
           {"t.u8", GgufType::U8}, {"t.i8", GgufType::I8}, {"t.u16", GgufType::U16}, {"t.i16", GgufType::I16},
           {"t.u32", GgufType::U32}, {"t.i32", GgufType::I32}, {"t.f32", GgufType::F32}, {"t.bool", GgufType::BOOL},
           {"t.string", GgufType::STRING}, {"t.u64", GgufType::U64}, {"t.i64", GgufType::I64}, {"t.f64", GgufType::F64}}) {
    INFO(key);
    CHECK(f.value(key).type() == type);
    CHECK(f.value(key).element_type() == type);
    CHECK_FALSE(f.value(key).is_array());
    CHECK(f.value(key).size() == 1);
  }
  CHECK(f.get_array<std::uint8_t>("a.u8") == std::vector<std::uint8_t>{0, 255});
  CHECK(f.get_array<std::int8_t>("a.i8") == std::vector<std::int8_t>{-128, 127});
  CHECK(f.get_array<std::uint16_t>("a.u16") == std::vector<std::uint16_t>{1, 65535});
  CHECK(f.get_array<std::int16_t>("a.i16") == std::vector<std::int16_t>{-32768, 5});
  CHECK(f.get_array<std::uint32_t>("a.u32") == std::vector<std::uint32_t>{7, 8, 9});
  CHECK(f.get_array<std::int32_t>("a.i32") == std::vector<std::int32_t>{-1, 0, 1});
  const auto f32 = f.get_array<float>("a.f32");
  REQUIRE(f32.size() == 3);
  CHECK(f32[0] == 1.5f);
  CHECK(std::signbit(f32[1]));
  CHECK(std::isinf(f32[2]));
  CHECK(f.get_array<bool>("a.bool") == std::vector<bool>{true, false, true});
  CHECK(f.get_array<std::string>("a.string") == std::vector<std::string>{"a", "", "ccc", "日本"});
  CHECK(f.get_array<std::string_view>("a.string")[3] == "日本");
  CHECK(f.get_array<std::uint64_t>("a.u64") == std::vector<std::uint64_t>{1ull << 63});
  CHECK(f.get_array<std::int64_t>("a.i64") == std::vector<std::int64_t>{-5});
  CHECK(f.get_array<double>("a.f64") == std::vector<double>{0.1, 2.0});
  CHECK(f.get_array<std::int32_t>("a.empty").empty());
  CHECK(f.value("a.string").is_array());
  CHECK(f.value("a.string").type() == GgufType::ARRAY);
  CHECK(f.value("a.string").element_type() == GgufType::STRING);
  CHECK(f.value("a.string").size() == 4);
  // as_int takes every integer type; as_double both floats.
  CHECK(f.get_int("t.u8") == 251);
  CHECK(f.get_int("t.i16") == -32000);
  CHECK(f.get_int("t.u32") == 4000000000);
  CHECK(f.get_int("t.i64") == std::numeric_limits<std::int64_t>::min());
  CHECK(f.value("t.f32").as_double() == static_cast<double>(0.1f));
  CHECK(f.value("t.f64").as_double() == -1e300);
  CHECK(f.get_or<std::uint32_t>("absent", 7u) == 7u);
  CHECK(f.get_or<std::uint32_t>("t.u32", 7u) == 4000000000u);
  CHECK(f.has("t.bool"));
  CHECK_FALSE(f.has("t.boo"));
  CHECK(f.find("absent") == nullptr);
  CHECK(f.value("t.u32").describe() == "u32 4000000000");
  CHECK(f.value("t.string").describe() == "string 'h\\xc3\\xa9llo\\x0aworld'");
  CHECK(f.value("a.i32").describe() == "array of 3 i32 [-1, 0, 1]");
  CHECK(f.value("a.bool").describe() == "array of 3 bool [true, false, true]");
}

TEST_CASE("typed getters name the key and both types when the type differs", "[io][gguf]") {
  GgufWriter w;
  w.set("n", std::uint32_t{8}).set("s", "x").set("big", std::uint64_t{1} << 63).set_array("arr", std::vector<std::int32_t>{1});
  const GgufFile f = moe::test::in_memory(w, "m.gguf");
  REQUIRE_THROWS_AS((void)f.get<std::uint64_t>("n"), MetadataError);
  REQUIRE_THROWS_WITH((void)f.get<std::uint64_t>("n"),
                      "moe::io: file 'm.gguf': metadata 'n': expected a value of type u64, got u32");
  REQUIRE_THROWS_WITH((void)f.get<std::int32_t>("arr"), Contains("metadata 'arr': expected a value of type i32, got an array of i32"));
  REQUIRE_THROWS_WITH((void)f.get_array<std::int64_t>("arr"), Contains("expected an array of i64, got an array of i32"));
  REQUIRE_THROWS_WITH((void)f.get_array<std::string>("s"), Contains("metadata 's': expected an array of string, got string"));
  REQUIRE_THROWS_WITH((void)f.get_int("s"), Contains("metadata 's': expected an integer (u8, i8, u16, i16, u32, i32, u64, i64), got string"));
  REQUIRE_THROWS_WITH((void)f.get_int("big"), Contains("metadata 'big': expected an integer below 2^63, got u64 9223372036854775808"));
  REQUIRE_THROWS_WITH((void)f.value("n").as_double(), Contains("expected a float (f32, f64), got u32"));
  REQUIRE_THROWS_WITH((void)f.get_or<float>("n", 1.0f), Contains("expected a value of type f32, got u32"));
  REQUIRE_THROWS_AS((void)f.get<std::uint32_t>("m"), MissingMetadataError);
  REQUIRE_THROWS_WITH((void)f.get<std::uint32_t>("nn"),
                      "moe::io: file 'm.gguf': metadata 'nn': expected a key of this name, got none among the file's 4 keys; "
                      "close names: 'n', 's'");  // within two edits: the typo rule
  try {
    (void)f.get<float>("n");
  } catch (const MetadataError& e) {
    CHECK(e.key() == "n");
    CHECK(e.file() == "m.gguf");
  }
}

TEST_CASE("every tensor type round-trips: floats exactly, quantized within half a step", "[io][gguf]") {
  // Values exact in fp16 and bf16 (multiples of 1/8 below 64), so F16 and BF16 are exact too.
  std::vector<float> exact(64 * 3);
  for (std::size_t i = 0; i < exact.size(); ++i) exact[i] = static_cast<float>(static_cast<int>(i % 97) - 48) / 8.0f;
  const std::vector<float> x = normal(512 * 4, 3);
  GgufWriter w;
  w.add_tensor("f32", GgmlType::F32, {64, 3}, std::span<const float>(exact));
  w.add_tensor("f16", GgmlType::F16, {64, 3}, std::span<const float>(exact));
  w.add_tensor("bf16", GgmlType::BF16, {64, 3}, std::span<const float>(exact));
  w.add_tensor("q8_0", GgmlType::Q8_0, {512, 2, 2}, std::span<const float>(x));
  w.add_tensor("q4_0", GgmlType::Q4_0, {512, 4}, std::span<const float>(x));
  w.add_tensor("q4_k", GgmlType::Q4_K, {512, 4, 1}, std::span<const float>(x));
  std::vector<std::byte> q6(210 * 2, std::byte{7});
  w.add_tensor("q6_k", GgmlType::Q6_K, {256, 2}, q6);  // any type from raw bytes
  const GgufFile f = moe::test::in_memory(w);
  REQUIRE(f.names() == std::vector<std::string>{"f32", "f16", "bf16", "q8_0", "q4_0", "q4_k", "q6_k"});
  CHECK(f.to_float("f32") == exact);
  CHECK(f.to_float("f16") == exact);
  CHECK(f.to_float("bf16") == exact);
  CHECK(f.info("f16").nbytes == 64 * 3 * 2);
  CHECK(f.info("q8_0").nbytes == 512 * 4 / 32 * 34);
  CHECK(f.info("q4_0").nbytes == 512 * 4 / 32 * 18);
  CHECK(f.info("q4_k").nbytes == 512 * 4 / 256 * 144);
  CHECK(f.info("q4_k").ne == std::vector<std::int64_t>{512, 4, 1});
  for (const auto& t : f.tensors()) CHECK(t.offset % 32 == 0);

  // The stored bytes are the quantizers' blocks, and the reader their dequantization.
  const auto check_blocks = [&]<class Block>(const char* name, auto quantize, auto dequantize, double half_steps) {
    INFO(name);
    std::vector<Block> blocks(x.size() / moe::kernels::block_elements<Block>);
    quantize(x.data(), blocks.data(), x.size());
    const auto raw = f.raw(name);
    REQUIRE(raw.size() == blocks.size() * sizeof(Block));
    CHECK(std::memcmp(raw.data(), blocks.data(), raw.size()) == 0);
    std::vector<float> want(x.size());
    dequantize(blocks.data(), want.data(), want.size());
    const auto got = f.to_float(name);
    CHECK(got == want);
    // Half a step (a whole one for Q4_0's clipped extreme) plus the scale's fp16 rounding
    // (2^-11 relative, times |q| <= 127 for Q8_0), the steps being max |x| / 127 and / 8 at
    // most. Q4_K's fit may clip a sub-block's extremes, so its bound is a loose tenth of
    // max |x| here (quant_blocks_test.cpp checks its exact nearest-level rule).
    double amax = 0, err = 0;
    for (std::size_t i = 0; i < x.size(); ++i) {
      amax = std::max(amax, std::fabs(static_cast<double>(x[i])));
      err = std::max(err, std::fabs(static_cast<double>(got[i]) - x[i]));
    }
    CHECK(err <= half_steps * amax);
  };
  check_blocks.operator()<moe::kernels::BlockQ8_0>("q8_0", moe::kernels::quantize_row_q8_0,
                                                   moe::kernels::dequantize_row_q8_0, (0.5 + 127.0 / 2048) / 127 * 1.01);
  check_blocks.operator()<moe::kernels::BlockQ4_0>("q4_0", moe::kernels::quantize_row_q4_0,
                                                   moe::kernels::dequantize_row_q4_0, 1.0 / 8 * 1.01);
  check_blocks.operator()<moe::kernels::BlockQ4_K>("q4_k", moe::kernels::quantize_row_q4_k,
                                                   moe::kernels::dequantize_row_q4_k, 0.1);

  CHECK(std::all_of(f.raw("q6_k").begin(), f.raw("q6_k").end(), [](std::byte b) { return b == std::byte{7}; }));
  REQUIRE_THROWS_AS((void)f.to_float("q6_k"), TensorMismatchError);
  REQUIRE_THROWS_WITH((void)f.to_float("q6_k"),
                      "moe::io: file 'model.gguf': tensor 'q6_k': expected a type read as float (F32, F16, BF16, Q8_0, "
                      "Q4_0, Q4_K), got Q6_K (type 14); raw() gives its bytes");
  REQUIRE_THROWS_WITH((void)f.to_matrix("q6_k"), Contains("got Q6_K (type 14)"));
}

TEST_CASE("to_matrix flattens every dimension but ne[0] into rows, and checks a requested shape", "[io][gguf]") {
  std::vector<float> v(24);
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i);
  GgufWriter w;
  w.add_tensor("stack", GgmlType::F32, {4, 3, 2}, std::span<const float>(v));  // [E = 2, ff = 3, d = 4]
  w.add_tensor("vec", GgmlType::F32, {5}, std::span<const float>(v.data(), 5));
  const GgufFile f = moe::test::in_memory(w);
  CHECK(f.info("stack").shape() == std::vector<std::int64_t>{2, 3, 4});
  const moe::RowMatrix<float> m = f.to_matrix("stack");
  REQUIRE(m.rows() == 6);
  REQUIRE(m.cols() == 4);
  for (moe::Index r = 0; r < 6; ++r)
    for (moe::Index c = 0; c < 4; ++c) CHECK(m(r, c) == static_cast<float>(4 * r + c));
  CHECK(f.to_matrix("stack", 6, 4) == m);
  CHECK(f.to_matrix("stack", -1, 4) == m);
  CHECK(f.to_matrix("vec").rows() == 1);
  REQUIRE_THROWS_AS((void)f.to_matrix("stack", 5, 4), TensorMismatchError);
  REQUIRE_THROWS_WITH((void)f.to_matrix("stack", 5, 4),
                      Contains("tensor 'stack': expected ne[0] = 4 and the other dimensions multiplying to 5 (read as "
                               "[5, 4]), got ne [4, 3, 2]"));
  REQUIRE_THROWS_WITH((void)f.to_matrix("stack", -1, 3), Contains("expected ne[0] = 3 (read as [*, 3]), got ne [4, 3, 2]"));
  moe::test::require_invalid([&] { (void)f.to_matrix("stack", -2, 4); },
                             {"GgufFile::to_matrix(): rows and cols expected rows >= -1 and cols >= 0, got -2, 4"});
  REQUIRE_THROWS_AS((void)f.info("stak"), MissingTensorError);
  REQUIRE_THROWS_WITH((void)f.raw("stak"),
                      "moe::io: file 'model.gguf': tensor 'stak': expected a tensor of this name, got none among the "
                      "file's 2 tensors; close names: 'stack'");
  CHECK(f.contains("vec"));
  CHECK_FALSE(f.contains("ve"));
}

TEST_CASE("open maps a saved file, and copies and values outlive the original", "[io][gguf]") {
  const std::string path = gguf_temp_path("saved.gguf");
  std::vector<float> v(64);
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i) / 4;
  GgufWriter w;
  w.set("general.name", "saved").add_tensor("w", GgmlType::Q8_0, {64}, std::span<const float>(v));
  w.save(path);
  std::optional<GgufFile> copy;
  std::optional<moe::io::GgufValue> name;
  {
    const GgufFile f = GgufFile::open(path);
    CHECK(f.display_name() == path);
    CHECK(f.bytes().size() == std::filesystem::file_size(path));
    copy = f;
    name = f.value("general.name");
  }
  CHECK(name->as<std::string>() == "saved");
  CHECK(copy->to_float("w") == moe::test::in_memory(w).to_float("w"));
  std::filesystem::remove(path);

  const std::string missing = gguf_temp_path("missing.gguf");
  REQUIRE_THROWS_AS((void)GgufFile::open(missing), moe::io::Error);
  REQUIRE_THROWS_WITH((void)GgufFile::open(missing), Contains("file '" + missing + "'") && Contains("cannot open"));
  REQUIRE_THROWS_WITH((void)GgufFile::open(std::filesystem::temp_directory_path()), Contains("not a regular file"));
  const std::string empty = gguf_temp_path("empty.gguf");
  {
    std::ofstream out(empty, std::ios::binary);
  }
  REQUIRE_THROWS_WITH((void)GgufFile::open(empty), Contains("magic: expected the 4 bytes 'GGUF', got a file of 0 bytes"));
  std::filesystem::remove(empty);
  REQUIRE_THROWS_WITH(w.save(std::filesystem::temp_directory_path() / "no_such_dir" / "x.gguf"), Contains("cannot open for writing"));
}

TEST_CASE("a mapped file truncated, rewritten, removed or replaced is an error naming it, never a SIGBUS",
          "[io][gguf][errors]") {
  std::vector<float> v(256);
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i) / 8;
  GgufWriter w;
  w.set("general.name", "mapped").add_tensor("w", GgmlType::Q8_0, {256}, std::span<const float>(v));
  const std::string path = gguf_temp_path("mapped.gguf");
  const auto expect = [&](const std::string& why, auto&& change) {
    w.save(path);
    const GgufFile f = GgufFile::open(path);
    REQUIRE(f.to_float("w").size() == 256);
    change();
    // Reading the mapping of a truncated file would fault: every read checks first.
    CHECK_THROWS_WITH(f.to_float("w"), Contains("file '" + path + "'") && Contains("tensor 'w'") && Contains(why));
    CHECK_THROWS_WITH(f.raw("w"), Contains(why));
    CHECK_THROWS_WITH(f.to_matrix("w"), Contains(why));
    std::filesystem::remove(path);
  };
  expect("file truncated: expected at least", [&] { std::filesystem::resize_file(path, 0); });
  expect("file rewritten since it was opened", [&] {
    const auto when = std::filesystem::last_write_time(path);
    {
      std::fstream out(path, std::ios::in | std::ios::out | std::ios::binary);
      out.seekp(-1, std::ios::end);
      out.put('\x7f');
    }
    std::filesystem::last_write_time(path, when + std::chrono::seconds(1));  // the clock may not have ticked
  });
  expect("file renamed or removed since it was opened", [&] { std::filesystem::rename(path, path + ".old"); });
  std::filesystem::remove(path + ".old");
  expect("file replaced since it was opened", [&] {
    w.save(path + ".new");
    std::filesystem::rename(path + ".new", path);
  });
}

// ---------------------------------------------------------------------------------------------
// Validation: one corrupted file per rule

TEST_CASE("header: magic, version and counts", "[io][gguf][validation]") {
  expect_format({}, "magic: expected the 4 bytes 'GGUF', got a file of 0 bytes");
  GgufBytes b = valid_file();
  b.bytes()[0] = std::byte{'g'};
  expect_format(b.bytes(), "magic: expected 'GGUF', got 'gGUF'");
  GgufBytes bin;
  bin.text(std::string_view("\x01\xff\x00G", 4)).u32(3);
  expect_format(bin.bytes(), "magic: expected 'GGUF', got '\\x01\\xff\\x00G'");
  for (const std::uint32_t v : {0u, 1u, 4u}) {
    GgufBytes c = valid_file();
    std::memcpy(c.bytes().data() + 4, &v, 4);
    expect_format(c.bytes(), "version: expected 2 or 3, got " + std::to_string(v));
  }
  GgufBytes v1 = valid_file();
  v1.bytes()[4] = std::byte{1};
  expect_format(v1.bytes(), "got 1 (version 1, with 32-bit counts, is not read)");
  GgufBytes be = valid_file();
  be.bytes()[4] = std::byte{0};
  be.bytes()[7] = std::byte{3};  // 0x03000000: version 3 written big-endian
  expect_format(be.bytes(), "version: expected 2 or 3, got 50331648 (a big-endian file? only little-endian files are read)");
  // Counts the file cannot hold: 136 bytes follow the header; a pair takes at least 13.
  GgufBytes kv = valid_file();
  const std::uint64_t many = 11;
  std::memcpy(kv.bytes().data() + 16, &many, 8);
  expect_format(kv.bytes(), "metadata_kv_count: expected at most 10 (136 bytes left, 13 the smallest pair), got 11");
  const std::uint64_t huge = std::numeric_limits<std::uint64_t>::max();
  std::memcpy(kv.bytes().data() + 16, &huge, 8);
  expect_format(kv.bytes(), "metadata_kv_count: expected at most 10 (136 bytes left, 13 the smallest pair), got 18446744073709551615");
  GgufBytes tc = valid_file();
  const std::uint64_t tensors = std::uint64_t{1} << 62;
  std::memcpy(tc.bytes().data() + 8, &tensors, 8);
  expect_format(tc.bytes(), "tensor_count: expected at most 3 (136 bytes left, 1 pairs of at least 13, tensor infos of at "
                            "least 32), got 4611686018427387904");
}

TEST_CASE("truncation: at every byte before the data ends a FormatError, at chosen points the field named", "[io][gguf][validation]") {
  const std::vector<std::byte> full = valid_file().bytes();
  for (std::size_t n = 0; n < full.size(); ++n) {
    INFO("truncated to " << n << " bytes");
    const std::vector<std::byte> cut(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(n));
    REQUIRE_THROWS_AS((void)parse_gguf(cut), FormatError);
  }
  const auto cut = [&](std::size_t n) { return std::vector<std::byte>(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(n)); };
  expect_format(cut(2), "magic: expected the 4 bytes 'GGUF', got a file of 2 bytes");
  expect_format(cut(6), "version: expected 4 bytes at byte 4, got 2 (the file ends)");
  expect_format(cut(12), "tensor_count: expected 8 bytes at byte 8, got 4 (the file ends)");
  expect_format(cut(20), "metadata_kv_count: expected 8 bytes at byte 16, got 4 (the file ends)");
  expect_format(cut(30), "metadata_kv_count: expected at most 0 (6 bytes left, 13 the smallest pair), got 1");
  expect_format(cut(100), "tensor 'w' type: expected 4 bytes at byte 97, got 3 (the file ends)");
  expect_format(cut(120), "data section: expected it to start within the file, at byte 128 (the tensor infos end at byte "
                          "109, padded to the alignment 32), got a file of 120 bytes");
  expect_format(cut(150), "tensor 'w' data: expected offset + size <= 22 (the data section's size), got 0 + 32 (ne [4, 2] of F32)");
  // Inside a pair's value and inside a tensor info, with counts that still fit.
  GgufBytes s;
  s.header(0, 1).str("k").u32(8).u64(4).text("ab");
  expect_format(s.bytes(), "metadata 'k' value length: expected at most 2 (the bytes left in the file), got 4");
  GgufBytes n;
  n.header(0, 1).str("k").u32(12).fill(4);
  expect_format(n.bytes(), "metadata 'k' value: expected 8 bytes at byte 37, got 4 (the file ends)");
}

TEST_CASE("strings: lengths past the end, empty or bad keys and names", "[io][gguf][validation]") {
  GgufBytes key;
  key.header(0, 1).u64(1000).fill(40);
  expect_format(key.bytes(), "metadata[0] key length: expected at most 40 (the bytes left in the file), got 1000");
  GgufBytes key_max;
  key_max.header(0, 1).u64(std::numeric_limits<std::uint64_t>::max()).fill(40);
  expect_format(key_max.bytes(), "metadata[0] key length: expected at most 40 (the bytes left in the file), got 18446744073709551615");
  GgufBytes name;
  name.header(1, 0).u64(1u << 20).fill(40);
  expect_format(name.bytes(), "tensor info 0 name length: expected at most 40 (the bytes left in the file), got 1048576");
  GgufBytes arr;
  arr.header(0, 1).str("a").u32(9).u32(8).u64(2).str("x").u64(99).fill(8);
  expect_format(arr.bytes(), "metadata 'a' element length: expected at most 8 (the bytes left in the file), got 99");
  GgufBytes empty_key;
  empty_key.header(0, 1).str("").u32(0).u8(1);
  expect_format(empty_key.bytes(), "metadata[0] key: expected a non-empty string, got an empty one");
  GgufBytes bad_key;
  bad_key.header(0, 1).str("k\xff").u32(0).u8(1);
  expect_format(bad_key.bytes(), "metadata[0] key: expected UTF-8 text, got 'k\\xff'");
  GgufBytes empty_name;
  empty_name.header(1, 0).tensor("", {32}, 0, 0).pad().fill(128);
  expect_format(empty_name.bytes(), "tensor info 0 name: expected a non-empty string, got an empty one");
  GgufBytes long_name;
  long_name.header(1, 0).tensor(std::string(65, 'x'), {32}, 0, 0).pad().fill(128);
  expect_format(long_name.bytes(), "tensor info 0 name: expected at most 64 bytes, got 65");
  GgufBytes max_name;
  max_name.header(1, 0).tensor(std::string(64, 'x'), {32}, 0, 0).pad().fill(128);
  CHECK(parse_gguf(max_name.bytes()).contains(std::string(64, 'x')));
}

TEST_CASE("metadata: value types, nested arrays, bools, array lengths, duplicate keys", "[io][gguf][validation]") {
  GgufBytes type;
  type.header(0, 1).str("k").u32(13).fill(8);
  expect_format(type.bytes(), "metadata 'k' value type: expected 0-12 (u8, i8, u16, i16, u32, i32, f32, bool, string, "
                              "array, u64, i64, f64), got 13");
  GgufBytes huge_type;
  huge_type.header(0, 1).str("k").u32(0xFFFFFFFFu).fill(8);
  expect_format(huge_type.bytes(), "metadata 'k' value type: expected 0-12");
  GgufBytes elem;
  elem.header(0, 1).str("k").u32(9).u32(20).u64(0).fill(8);
  expect_format(elem.bytes(), "metadata 'k' array element type: expected 0-12");
  GgufBytes nested;
  nested.header(0, 1).str("k").u32(9).u32(9).u64(1).u32(0).u64(0);
  expect_format(nested.bytes(), "metadata 'k' array element type: expected a scalar or string type (arrays of arrays are not "
                                "read, as llama.cpp reads none), got 9 (array)");
  GgufBytes length;
  length.header(0, 1).str("k").u32(9).u32(4).u64(1000).fill(40);
  expect_format(length.bytes(), "metadata 'k' array length: expected at most 10 (40 bytes left, 4 per u32), got 1000");
  GgufBytes strings;
  strings.header(0, 1).str("k").u32(9).u32(8).u64(std::uint64_t{1} << 61).fill(40);
  expect_format(strings.bytes(), "metadata 'k' array length: expected at most 5 (40 bytes left, 8 per string), got 2305843009213693952");
  GgufBytes boolean;
  boolean.header(0, 1).str("k").u32(7).u8(2);
  expect_format(boolean.bytes(), "metadata 'k' value: expected a bool (0 or 1), got 2");
  GgufBytes bools;
  bools.header(0, 1).str("k").u32(9).u32(7).u64(3).u8(1).u8(0).u8(255);
  expect_format(bools.bytes(), "metadata 'k' element: expected a bool (0 or 1), got 255 at index 2");
  GgufBytes dup;
  dup.header(0, 3).kv_u32("a", 1).kv_u32("b", 2).kv_u32("a", 3);
  expect_format(dup.bytes(), "metadata 'a': expected each key once, got it twice (pairs 0 and 2)");
}

TEST_CASE("alignment: general.alignment must be a u32 power of two", "[io][gguf][validation]") {
  for (const std::uint32_t a : {0u, 3u, 48u, 0x80000001u}) {
    GgufBytes b;
    b.header(0, 1).kv_u32("general.alignment", a);
    expect_format(b.bytes(), "metadata 'general.alignment': expected a power of two, got " + std::to_string(a));
  }
  GgufBytes typed;
  typed.header(0, 1).str("general.alignment").u32(5).u32(32);
  expect_format(typed.bytes(), "metadata 'general.alignment': expected a value of type u32, got i32");
  GgufBytes arr;
  arr.header(0, 1).str("general.alignment").u32(9).u32(4).u64(1).u32(32);
  expect_format(arr.bytes(), "metadata 'general.alignment': expected a value of type u32, got an array of u32");
  // A large alignment moves the data section: the offsets then count from there.
  GgufBytes big;
  big.header(1, 1).kv_u32("general.alignment", 256).tensor("w", {8}, 0, 0).pad(256).fill(32);
  CHECK(parse_gguf(big.bytes()).data_offset() == 256);
  GgufBytes past;
  past.header(1, 1).kv_u32("general.alignment", 1u << 30).tensor("w", {8}, 0, 0).fill(64);
  expect_format(past.bytes(), "data section: expected it to start within the file, at byte 1073741824");
}

TEST_CASE("tensor infos: n_dims, dimensions, overflow, types, block multiples, duplicate names", "[io][gguf][validation]") {
  const auto one = [](std::uint32_t n_dims, const std::vector<std::uint64_t>& ne, std::uint32_t type = 0) {
    GgufBytes b;
    b.header(1, 0).str("w").u32(n_dims);
    for (std::uint64_t d : ne) b.u64(d);
    b.u32(type).u64(0).pad().fill(256);
    return b.bytes();
  };
  expect_format(one(0, {}), "tensor 'w' n_dims: expected 1 to 4, got 0");
  expect_format(one(5, {1, 1, 1, 1, 1}), "tensor 'w' n_dims: expected 1 to 4, got 5");
  expect_format(one(2, {4, 0}), "tensor 'w' ne[1]: expected 1 to 2^63 - 1, got 0");
  expect_format(one(1, {std::uint64_t{1} << 63}), "tensor 'w' ne[0]: expected 1 to 2^63 - 1, got 9223372036854775808");
  expect_format(one(3, {std::uint64_t{1} << 32, std::uint64_t{1} << 31, 2}),
                "tensor 'w': expected an element count below 2^63, got ne [4294967296, 2147483648, 2], which overflows");
  expect_format(one(2, {std::uint64_t{1} << 62, 2}, 0),  // 2^63 elements: the count itself overflows
                "tensor 'w': expected an element count below 2^63, got ne [4611686018427387904, 2], which overflows");
  expect_format(one(1, {std::uint64_t{1} << 62}, 28),  // F64: 2^62 * 8 bytes overflows 64 bits
                "tensor 'w': expected a byte count below 2^64, got ne [4611686018427387904] of F64, which overflows");
  expect_format(one(1, {32}, 99), "tensor 'w' type: expected a ggml type (0, 1, 2, 3, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, "
                                  "17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 34, 35, 39, 40, 41, 42), got 99");
  expect_format(one(1, {32}, 4), "tensor 'w' type: expected a ggml type");  // Q4_2, removed from ggml
  expect_format(one(1, {32}, 31), "got 31");
  expect_format(one(2, {100, 2}, 12), "tensor 'w' ne[0]: expected a multiple of 256 (the block of Q4_K), got 100");
  expect_format(one(1, {33}, 8), "tensor 'w' ne[0]: expected a multiple of 32 (the block of Q8_0), got 33");
  GgufBytes dup;
  dup.header(2, 0).tensor("w", {8}, 0, 0).tensor("w", {8}, 0, 32).pad().fill(64);
  expect_format(dup.bytes(), "tensor 'w': expected each name once, got it twice (tensor infos 0 and 1)");
}

TEST_CASE("tensor data: aligned offsets, inside the file, disjoint", "[io][gguf][validation]") {
  GgufBytes misaligned;
  misaligned.header(1, 0).tensor("w", {8}, 0, 8).pad().fill(64);
  expect_format(misaligned.bytes(), "tensor 'w' offset: expected a multiple of the alignment 32, got 8");
  GgufBytes past;
  past.header(1, 0).tensor("w", {8}, 0, 64).pad().fill(64);
  expect_format(past.bytes(), "tensor 'w' data: expected offset + size <= 64 (the data section's size), got 64 + 32 (ne [8] of F32)");
  GgufBytes far;
  far.header(1, 0).tensor("w", {8}, 0, std::uint64_t{1} << 63).pad().fill(64);
  expect_format(far.bytes(), "tensor 'w' data: expected offset + size <= 64 (the data section's size), got 9223372036854775808 + 32");
  GgufBytes big;
  big.header(1, 0).tensor("w", {std::uint64_t{1} << 40}, 0, 0).pad().fill(64);
  expect_format(big.bytes(), "tensor 'w' data: expected offset + size <= 64 (the data section's size), got 0 + 4398046511104");
  GgufBytes overlap;
  overlap.header(2, 0).tensor("a", {16}, 0, 0).tensor("b", {8}, 0, 32).pad().fill(128);
  expect_format(overlap.bytes(), "tensor 'b' data: expected a byte range disjoint from every other tensor, got [32, 64) "
                                 "overlapping tensor 'a' [0, 64)");
  GgufBytes same;
  same.header(2, 0).tensor("b", {8}, 0, 0).tensor("a", {8}, 0, 0).pad().fill(128);
  expect_format(same.bytes(), "tensor 'b' data: expected a byte range disjoint from every other tensor, got [0, 32) "
                              "overlapping tensor 'a' [0, 32)");
  // Gaps and out-of-order offsets are fine (the format asks only for aligned, in-file offsets).
  GgufBytes gaps;
  gaps.header(2, 0).tensor("a", {8}, 0, 96).tensor("b", {8}, 0, 0).pad().fill(128);
  const GgufFile f = parse_gguf(gaps.bytes());
  CHECK(f.info("a").offset == 96);
  CHECK(f.names() == std::vector<std::string>{"a", "b"});
}

TEST_CASE("random corruptions of a valid file end in a FormatError or a readable file", "[io][gguf][validation]") {
  GgufWriter w;
  const std::vector<float> x = normal(256 * 2, 9);
  w.set("general.architecture", "qwen2moe").set("qwen2moe.expert_count", std::uint32_t{4})
      .set_array("tokens", std::vector<std::string>{"a", "bc"}).set_array("scores", std::vector<float>{0.5f, 1.0f});
  w.add_tensor("blk.0.ffn_gate_inp.weight", GgmlType::F32, {256, 2}, std::span<const float>(x));
  w.add_tensor("blk.0.ffn_up_exps.weight", GgmlType::Q4_K, {256, 2}, std::span<const float>(x));
  w.add_tensor("blk.0.ffn_down_exps.weight", GgmlType::Q8_0, {256, 2}, std::span<const float>(x));
  const std::vector<std::byte> good = w.to_bytes();
  std::mt19937 rng(41);
  int refused = 0, read = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    std::vector<std::byte> b = good;
    const int edits = 1 + trial % 4;
    for (int e = 0; e < edits; ++e) {
      // Mostly in the header and infos, where the checks are.
      const std::size_t at = std::uniform_int_distribution<std::size_t>(0, trial % 3 ? 400 : b.size() - 1)(rng);
      b[at] = static_cast<std::byte>(std::uniform_int_distribution<int>(0, 255)(rng));
    }
    try {
      const GgufFile f = parse_gguf(b);
      for (const auto& t : f.tensors()) {
        REQUIRE(f.raw(t.name).size() == t.nbytes);
        try {
          const auto v = f.to_float(t.name);
          REQUIRE(v.size() == static_cast<std::size_t>(t.numel()));
        } catch (const TensorMismatchError&) {
        }
      }
      for (const auto& v : f.metadata()) (void)v.describe();
      ++read;
    } catch (const FormatError&) {
      ++refused;
    }
  }
  CHECK(refused > 1000);
  CHECK(read > 100);
}

// ---------------------------------------------------------------------------------------------
// The writer's refusals

TEST_CASE("the writer refuses what llama.cpp would not read", "[io][gguf]") {
  using moe::test::require_invalid;
  GgufWriter w;
  const std::vector<float> v(64, 1.0f);
  require_invalid([&] { w.set("", 1); }, {"GgufWriter::set(): key expected a non-empty string of at most 65535 bytes of UTF-8, got ''"});
  require_invalid([&] { w.set(std::string(65536, 'k'), 1); }, {"GgufWriter::set(): key expected"});
  require_invalid([&] { w.set_array("k\xc3", std::vector<int>{1}); }, {"GgufWriter::set_array(): key expected", "got 'k\\xc3'"});
  require_invalid([&] { w.set("general.alignment", std::uint32_t{24}); },
                  {"GgufWriter::set(): general.alignment expected a power of two, got 24"});
  require_invalid([&] { w.set("general.alignment", 32); },
                  {"GgufWriter::set(): general.alignment expected a std::uint32_t (u32, as llama.cpp reads it), got i32"});
  require_invalid([&] { w.set_array("general.alignment", std::vector<std::uint32_t>{32}); },
                  {"GgufWriter::set_array(): general.alignment expected a std::uint32_t scalar, got an array"});
  CHECK(w.alignment() == 32);
  const std::span<const float> s(v);
  require_invalid([&] { w.add_tensor("", GgmlType::F32, {64}, s); },
                  {"GgufWriter::add_tensor(): tensor name expected a non-empty string of at most 63 bytes of UTF-8 "
                   "(llama.cpp's limit), got ''"});
  require_invalid([&] { w.add_tensor(std::string(64, 'n'), GgmlType::F32, {64}, s); }, {"at most 63 bytes"});
  REQUIRE_NOTHROW(w.add_tensor(std::string(63, 'n'), GgmlType::F32, {64}, s));
  REQUIRE_NOTHROW(w.add_tensor("w", GgmlType::F32, {64}, s));
  require_invalid([&] { w.add_tensor("w", GgmlType::F16, {64}, s); },
                  {"GgufWriter::add_tensor(): tensor name expected a name not added before, got 'w' again"});
  require_invalid([&] { w.add_tensor("x", GgmlType::F32, {}, s); },
                  {"GgufWriter::add_tensor(): ne (dimensions) expected 1 to 4 dimensions, got []"});
  require_invalid([&] { w.add_tensor("x", GgmlType::F32, {64, 1, 1, 1, 1}, s); }, {"1 to 4 dimensions, got [64, 1, 1, 1, 1]"});
  require_invalid([&] { w.add_tensor("x", GgmlType::F32, {64, 0}, s); }, {"ne expected dimensions >= 1, got [64, 0]"});
  require_invalid([&] { w.add_tensor("x", GgmlType::F32, {1ll << 62, 4}, s); }, {"ne expected an element count below 2^63"});
  require_invalid([&] { w.add_tensor("x", GgmlType::Q4_K, {64}, s); },
                  {"GgufWriter::add_tensor(): ne[0] expected a multiple of 256 (the block of Q4_K), got 64"});
  require_invalid([&] { w.add_tensor("x", GgmlType::F32, {32}, s); },
                  {"GgufWriter::add_tensor(): values size expected 32 (ne [32]), got 64"});
  require_invalid([&] { w.add_tensor("x", GgmlType::Q6_K, {256}, std::span<const float>(std::vector<float>(256))); },
                  {"type expected one written from float (F32, F16, BF16, Q8_0, Q4_0, Q4_K), got Q6_K (type 14)"});
  require_invalid([&] { w.add_tensor("x", static_cast<GgmlType>(4), {32}, std::vector<std::byte>(18)); },
                  {"GgufWriter::add_tensor(): type expected a ggml type, got 4"});
  require_invalid([&] { w.add_tensor("x", GgmlType::Q8_0, {64}, std::vector<std::byte>(60)); },
                  {"GgufWriter::add_tensor(): byte count expected 68 (ne [64] of Q8_0), got 60"});
  std::vector<float> nan(64, 1.0f);
  nan[3] = std::numeric_limits<float>::quiet_NaN();
  require_invalid([&] { w.add_tensor("x", GgmlType::Q8_0, {64}, std::span<const float>(nan)); },
                  {"GgufWriter::add_tensor(): tensor 'x': kernels::quantize_row_q8_0(): x expected finite values, got NaN at index 3"});
  // Nothing half-added: the file has the two good tensors.
  CHECK(moe::test::in_memory(w).names() == std::vector<std::string>{std::string(63, 'n'), "w"});
}
