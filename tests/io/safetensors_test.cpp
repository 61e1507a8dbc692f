// SafetensorsFile and SafetensorsWriter: round trips, every validation rule with its message,
// and the golden reference files.
#include "moe/io/safetensors.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <random>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

using Catch::Contains;
using moe::io::DType;
using moe::io::FormatError;
using moe::io::MissingTensorError;
using moe::io::SafetensorsFile;
using moe::io::SafetensorsWriter;
using moe::io::TensorMismatchError;

namespace {

std::vector<std::byte> bytes_of(std::string_view s) {
  std::vector<std::byte> out(s.size());
  if (!s.empty()) std::memcpy(out.data(), s.data(), s.size());
  return out;
}

template <class T>
void append(std::vector<std::byte>& out, T value) {
  const auto at = out.size();
  out.resize(at + sizeof(T));
  std::memcpy(out.data() + at, &value, sizeof(T));
}

/// A file with an explicit length field, for lying about the header length.
std::vector<std::byte> with_length(std::uint64_t length, std::string_view header, std::size_t data_bytes = 0) {
  std::vector<std::byte> out;
  append(out, length);
  const auto h = bytes_of(header);
  out.insert(out.end(), h.begin(), h.end());
  out.resize(out.size() + data_bytes, std::byte{0});
  return out;
}

/// A file whose length field is right: header text, then data_bytes zero bytes.
std::vector<std::byte> file_with(std::string_view header, std::size_t data_bytes = 0) {
  return with_length(header.size(), header, data_bytes);
}

SafetensorsFile parse(const std::vector<std::byte>& bytes) { return SafetensorsFile::from_bytes(bytes, "bad.safetensors"); }

/// The bytes must be refused with a FormatError whose text names the file and contains `text`.
void require_format_error(const std::vector<std::byte>& bytes, const std::string& text) {
  INFO("expecting a FormatError containing: " << text);
  REQUIRE_THROWS_AS((void)parse(bytes), FormatError);
  REQUIRE_THROWS_WITH((void)parse(bytes), Contains("moe::io: file 'bad.safetensors': ") && Contains(text));
}

std::vector<std::byte> u16_bytes(std::initializer_list<std::uint16_t> values) {
  std::vector<std::byte> out;
  for (auto v : values) append(out, v);
  return out;
}

std::filesystem::path golden_dir() {
  if (const char* env = std::getenv("MOE_GOLDEN_DIR"); env != nullptr && *env != '\0') return env;
  return MOE_DEFAULT_GOLDEN_DIR;
}

std::filesystem::path temp_path(const std::string& stem) {
  return std::filesystem::temp_directory_path() /
         (stem + "_" + std::to_string(std::random_device{}()) + ".safetensors");
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Round trips

TEST_CASE("writer and reader round-trip F32, F64, I64 and metadata", "[io][safetensors]") {
  const std::vector<float> f32 = {1.5f, -2.25f, 3.0e-8f, 0.0f, -0.0f, 1.0e30f};
  const std::vector<double> f64 = {0.1, -1e-300, 4.0, std::numeric_limits<double>::denorm_min()};
  const std::vector<std::int64_t> i64 = {0, -1, std::numeric_limits<std::int64_t>::max(),
                                         std::numeric_limits<std::int64_t>::min(), 42, 7};
  SafetensorsWriter w;
  w.metadata("case", "round_trip").metadata("d_model", "3");
  w.add<float>("layer.weight", {2, 3}, f32);
  w.add<double>("layer.bias", {4}, f64);
  w.add<std::int64_t>("ids", {3, 2}, i64);
  w.add<float>("scalar", {}, std::vector<float>{7.0f});
  w.add<float>("empty", {0, 3}, std::vector<float>{});
  const auto bytes = w.to_bytes();

  // The spec pads the header so the data section starts on an 8-byte boundary.
  std::uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);
  CHECK(header_len % 8 == 0);

  const auto f = SafetensorsFile::from_bytes(bytes, "rt.safetensors");
  CHECK(f.display_name() == "rt.safetensors");
  CHECK(f.names() == std::vector<std::string>{"empty", "ids", "layer.bias", "layer.weight", "scalar"});
  CHECK(f.size() == 5);
  CHECK(f.contains("ids"));
  CHECK_FALSE(f.contains("id"));
  CHECK(f.metadata("case") == std::optional<std::string>("round_trip"));
  CHECK(f.metadata("missing") == std::nullopt);
  CHECK(f.metadata().size() == 2);

  const auto& info = f.info("layer.weight");
  CHECK(info.name == "layer.weight");
  CHECK(info.dtype == DType::F32);
  CHECK(info.shape == std::vector<std::int64_t>{2, 3});
  CHECK(info.numel() == 6);
  CHECK(info.end - info.begin == 24);
  CHECK(f.raw("layer.weight").size() == 24);
  // Elements of 8 bytes are laid out first, so each tensor is naturally aligned in the data section.
  CHECK(f.info("layer.bias").begin % 8 == 0);
  CHECK(f.info("ids").begin % 8 == 0);

  const auto got_f32 = f.read<float>("layer.weight");
  REQUIRE(got_f32.size() == f32.size());
  for (std::size_t i = 0; i < f32.size(); ++i) CHECK(std::bit_cast<std::uint32_t>(got_f32[i]) == std::bit_cast<std::uint32_t>(f32[i]));
  CHECK(f.read<double>("layer.bias") == f64);
  CHECK(f.read<std::int64_t>("ids") == i64);
  CHECK(f.read<float>("scalar") == std::vector<float>{7.0f});
  CHECK(f.info("scalar").numel() == 1);
  CHECK(f.read<float>("empty").empty());
  CHECK(f.read_rows<float>("empty", -1, 3).rows() == 0);

  // Widening and narrowing between the float types.
  const auto widened = f.read<double>("layer.weight");
  for (std::size_t i = 0; i < f32.size(); ++i) CHECK(widened[i] == static_cast<double>(f32[i]));
  const auto narrowed = f.read<float>("layer.bias");
  for (std::size_t i = 0; i < f64.size(); ++i) CHECK(narrowed[i] == static_cast<float>(f64[i]));

  const std::array<std::int64_t, 2> shape{2, 3};
  CHECK(f.read<float>("layer.weight", shape) == f32);

  const auto m = f.read_matrix<float>("layer.weight", 2, 3);
  CHECK(m(0, 0) == 1.5f);
  CHECK(m(0, 2) == 3.0e-8f);
  CHECK(m(1, 0) == 0.0f);
  CHECK(m(1, 2) == 1.0e30f);
  const auto v = f.read_vector<double>("layer.bias", 4);
  CHECK(v(2) == 4.0);
  const auto ids = f.read_matrix<std::int64_t>("ids", 3, 2);
  CHECK(ids(1, 1) == std::numeric_limits<std::int64_t>::min());
}

TEST_CASE("save and open through the file system", "[io][safetensors]") {
  const auto path = temp_path("moe_io_save");
  const std::vector<float> data = {1, 2, 3, 4};
  SafetensorsWriter().metadata("k", "v").add<float>("x", {2, 2}, data).save(path);
  const auto f = SafetensorsFile::open(path);
  CHECK(f.display_name() == path.string());
  CHECK(f.read<float>("x") == data);
  CHECK(f.metadata("k") == std::optional<std::string>("v"));
  std::filesystem::remove(path);

  REQUIRE_THROWS_AS((void)SafetensorsFile::open(path), moe::io::Error);
  REQUIRE_THROWS_WITH((void)SafetensorsFile::open(path), Contains("file '" + path.string() + "'") && Contains("cannot open"));
  REQUIRE_THROWS_WITH((void)SafetensorsFile::open(std::filesystem::temp_directory_path()), Contains("not a regular file"));
}

TEST_CASE("read_leading converts entries of the leading dimension only, from any dtype", "[io][safetensors]") {
  SafetensorsWriter w;
  std::vector<double> v(4 * 2 * 3);
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = 0.5 * static_cast<double>(i) - 3;
  w.add<double>("d", {4, 2, 3}, v);
  // BF16 [4, 2]: entry e holds 1 + e and -(1 + e), exactly representable.
  w.add_raw("b", DType::BF16, {4, 2}, u16_bytes({0x3F80, 0xBF80, 0x4000, 0xC000, 0x4040, 0xC040, 0x4080, 0xC080}));
  const auto f = SafetensorsFile::from_bytes(w.to_bytes());
  const std::int64_t dshape[3] = {4, 2, 3}, bshape[2] = {4, 2};
  // Entries [1, 3) of d are elements [6, 18) by the row-major definition.
  CHECK(f.read_leading<double>("d", dshape, 1, 2) == std::vector<double>(v.begin() + 6, v.begin() + 18));
  CHECK(f.read_leading<float>("d", dshape, 3, 1) == std::vector<float>{6, 6.5, 7, 7.5, 8, 8.5});
  CHECK(f.read_leading<double>("d", dshape, 2, 0).empty());
  CHECK(f.read_leading<float>("b", bshape, 2, 2) == std::vector<float>{3, -3, 4, -4});
  CHECK(f.read_leading<double>("b", bshape, 0, 1) == std::vector<double>{1, -1});
  REQUIRE_THROWS_WITH(f.read_leading<double>("d", dshape, 3, 2),
                      "SafetensorsFile::read_leading(): entries [first, first + count) of the leading dimension "
                      "expected inside [0, 4) of 'd', got [3, 5)");
  CHECK_THROWS_AS(f.read_leading<double>("d", dshape, -1, 1), std::invalid_argument);
  const std::int64_t wrong[3] = {4, 3, 2};
  REQUIRE_THROWS_AS(f.read_leading<double>("d", wrong, 0, 1), TensorMismatchError);
  CHECK_THROWS_WITH(f.read_leading<double>("d", wrong, 0, 1), Contains("expected shape [4, 3, 2], got [4, 2, 3]"));
}

TEST_CASE("F16 and BF16 payloads convert exactly, subnormals, inf and nan included", "[io][safetensors]") {
  SafetensorsWriter w;
  w.add_raw("h", DType::F16, {2, 4}, u16_bytes({0x3C00, 0xC000, 0x0001, 0x03FF, 0x8000, 0x7C00, 0xFC00, 0x7E00}));
  w.add_raw("b", DType::BF16, {2, 4}, u16_bytes({0x3F80, 0xC000, 0x0001, 0x4049, 0x8000, 0x7F80, 0xFF80, 0x7FC0}));
  const auto f = SafetensorsFile::from_bytes(w.to_bytes());
  for (const auto& h : {f.read<double>("h"), [&] {
                          const auto fl = f.read<float>("h");
                          return std::vector<double>(fl.begin(), fl.end());
                        }()}) {
    CHECK(h[0] == 1.0);
    CHECK(h[1] == -2.0);
    CHECK(h[2] == std::ldexp(1.0, -24));
    CHECK(h[3] == std::ldexp(1023.0, -24));
    CHECK((h[4] == 0.0 && std::signbit(h[4])));
    CHECK(h[5] == std::numeric_limits<double>::infinity());
    CHECK(h[6] == -std::numeric_limits<double>::infinity());
    CHECK(std::isnan(h[7]));
  }
  const auto b = f.read_matrix<double>("b", 2, 4);
  CHECK(b(0, 0) == 1.0);
  CHECK(b(0, 1) == -2.0);
  CHECK(b(0, 2) == std::ldexp(1.0, -133));
  CHECK(b(0, 3) == 3.140625);
  CHECK((b(1, 0) == 0.0 && std::signbit(b(1, 0))));
  CHECK(b(1, 1) == std::numeric_limits<double>::infinity());
  CHECK(b(1, 2) == -std::numeric_limits<double>::infinity());
  CHECK(std::isnan(b(1, 3)));
}

TEST_CASE("unaligned tensor data is read correctly", "[io][safetensors]") {
  // One odd-sized U8 tensor first, so the F64 and F32 data start at odd addresses.
  const std::string header =
      R"({"pad":{"dtype":"U8","shape":[3],"data_offsets":[0,3]},)"
      R"("d":{"dtype":"F64","shape":[2],"data_offsets":[3,19]},)"
      R"("f":{"dtype":"F32","shape":[1,2],"data_offsets":[19,27]},)"
      R"("h":{"dtype":"F16","shape":[1],"data_offsets":[27,29]}})";
  std::vector<std::byte> bytes = file_with(header);
  for (std::uint8_t u : {std::uint8_t{1}, std::uint8_t{2}, std::uint8_t{255}}) append(bytes, u);
  append(bytes, 2.5);
  append(bytes, -0.125);
  append(bytes, 3.0f);
  append(bytes, -4.0f);
  append(bytes, std::uint16_t{0x3C00});
  const auto f = SafetensorsFile::from_bytes(bytes);
  CHECK(f.read<double>("d") == std::vector<double>{2.5, -0.125});
  CHECK(f.read<float>("f") == std::vector<float>{3.0f, -4.0f});
  CHECK(f.read<double>("f") == std::vector<double>{3.0, -4.0});
  CHECK(f.read<float>("h") == std::vector<float>{1.0f});
  CHECK(f.read<std::int64_t>("pad") == std::vector<std::int64_t>{1, 2, 255});
  CHECK(f.read_rows<float>("f", 1, 2)(0, 1) == -4.0f);
}

TEST_CASE("integer dtypes read as int64, widening exactly", "[io][safetensors]") {
  SafetensorsWriter w;
  std::vector<std::byte> i32, i16, i8, u16;
  for (std::int32_t v : {-2147483647 - 1, -1, 0, 2147483647}) append(i32, v);
  for (std::int16_t v : {std::int16_t{-32768}, std::int16_t{5}}) append(i16, v);
  for (std::int8_t v : {std::int8_t{-128}, std::int8_t{127}}) append(i8, v);
  for (std::uint16_t v : {std::uint16_t{65535}, std::uint16_t{1}}) append(u16, v);
  w.add_raw("i32", DType::I32, {4}, i32).add_raw("i16", DType::I16, {2}, i16);
  w.add_raw("i8", DType::I8, {2}, i8).add_raw("u16", DType::U16, {2}, u16);
  const auto f = SafetensorsFile::from_bytes(w.to_bytes());
  CHECK(f.read<std::int64_t>("i32") == std::vector<std::int64_t>{-2147483648LL, -1, 0, 2147483647});
  CHECK(f.read<std::int64_t>("i16") == std::vector<std::int64_t>{-32768, 5});
  CHECK(f.read<std::int64_t>("i8") == std::vector<std::int64_t>{-128, 127});
  CHECK(f.read<std::int64_t>("u16") == std::vector<std::int64_t>{65535, 1});
  CHECK(f.read_vector<std::int64_t>("i32", 4)(3) == 2147483647);
}

TEST_CASE("read_rows flattens leading dimensions, inferred or given", "[io][safetensors]") {
  std::vector<float> data(2 * 3 * 4);
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<float>(i);
  SafetensorsWriter w;
  w.add<float>("x", {2, 3, 4}, data).add<float>("row", {4}, std::vector<float>{1, 2, 3, 4});
  const auto f = SafetensorsFile::from_bytes(w.to_bytes(), "rows.safetensors");
  const auto inferred = f.read_rows<float>("x", -1, 4);
  CHECK(inferred.rows() == 6);
  CHECK(inferred.cols() == 4);
  CHECK(inferred(5, 3) == 23.0f);
  CHECK(inferred(1, 0) == 4.0f);
  CHECK(f.read_rows<double>("x", 6, 4) == inferred.cast<double>());
  CHECK(f.read_rows<float>("row", -1, 4).rows() == 1);
  CHECK(f.read_rows<float>("row", 1, 4)(0, 2) == 3.0f);

  REQUIRE_THROWS_AS((void)f.read_rows<float>("x", -1, 3), TensorMismatchError);
  REQUIRE_THROWS_WITH((void)f.read_rows<float>("x", -1, 3),
                      "moe::io: file 'rows.safetensors': tensor 'x': expected rank >= 1 with last dimension 3 "
                      "(read as [*, 3]), got shape [2, 3, 4]");
  REQUIRE_THROWS_WITH((void)f.read_rows<float>("x", 5, 4),
                      "moe::io: file 'rows.safetensors': tensor 'x': expected rank >= 1 with last dimension 4 "
                      "and leading dimensions multiplying to 5 (read as [5, 4]), got shape [2, 3, 4]");
  REQUIRE_THROWS_AS((void)f.read_rows<float>("x", -2, 4), std::invalid_argument);
  REQUIRE_THROWS_WITH((void)f.read_rows<float>("x", -2, 4), Contains("SafetensorsFile::read_rows(): "));
}

// ---------------------------------------------------------------------------------------------
// Error texts at the API

TEST_CASE("a missing tensor names itself, the file and close names", "[io][safetensors][errors]") {
  SafetensorsWriter w;
  const std::vector<float> one{1.0f};
  w.add<float>("mlp.gate.weight", {1}, one).add<float>("mlp.gate.bias", {1}, one).add<float>("unrelated", {1}, one);
  const auto f = SafetensorsFile::from_bytes(w.to_bytes(), "x.safetensors");
  REQUIRE_THROWS_AS((void)f.info("mlp.gate.weigth"), MissingTensorError);
  REQUIRE_THROWS_WITH((void)f.read<float>("mlp.gate.weigth"),
                      "moe::io: file 'x.safetensors': tensor 'mlp.gate.weigth': expected a tensor of this name, "
                      "got none among the file's 3 tensors; close names: 'mlp.gate.weight'");
  REQUIRE_THROWS_WITH((void)f.raw("nothing.like.it"), Contains("tensor 'nothing.like.it'") &&
                                                          Contains("got none among the file's 3 tensors") &&
                                                          !Contains("close names"));
  try {
    (void)f.info("absent");
    FAIL("no exception");
  } catch (const MissingTensorError& e) {
    CHECK(e.tensor() == "absent");
    CHECK(e.file() == "x.safetensors");
  }
}

TEST_CASE("a wrong shape names the tensor, the expected and the actual shape", "[io][safetensors][errors]") {
  std::vector<float> w8x32(8 * 32, 0.5f);
  const auto f = SafetensorsFile::from_bytes(SafetensorsWriter().add<float>("mlp.gate.weight", {8, 32}, w8x32).to_bytes(),
                                             "x.safetensors");
  REQUIRE_THROWS_AS((void)f.read_matrix<float>("mlp.gate.weight", 8, 64), TensorMismatchError);
  REQUIRE_THROWS_WITH((void)f.read_matrix<float>("mlp.gate.weight", 8, 64),
                      "moe::io: file 'x.safetensors': tensor 'mlp.gate.weight': expected shape [8, 64], got [8, 32]");
  REQUIRE_THROWS_WITH((void)f.read_vector<double>("mlp.gate.weight", 256),
                      "moe::io: file 'x.safetensors': tensor 'mlp.gate.weight': expected shape [256], got [8, 32]");
  const std::array<std::int64_t, 3> shape3{8, 32, 1};
  REQUIRE_THROWS_WITH((void)f.read<float>("mlp.gate.weight", shape3),
                      "moe::io: file 'x.safetensors': tensor 'mlp.gate.weight': expected shape [8, 32, 1], got [8, 32]");
  REQUIRE_THROWS_AS((void)f.read_matrix<float>("mlp.gate.weight", -8, 32), std::invalid_argument);
}

TEST_CASE("a wrong dtype names the dtype and the requested type", "[io][safetensors][errors]") {
  SafetensorsWriter w;
  w.add<float>("weight", {2}, std::vector<float>{1, 2});
  w.add<std::int64_t>("token_ids", {2}, std::vector<std::int64_t>{1, 2});
  w.add_raw("mask", DType::BOOL, {2}, {std::byte{1}, std::byte{0}});
  w.add_raw("fp8", DType::F8_E4M3, {2}, {std::byte{0x38}, std::byte{0}});
  w.add_raw("big", DType::U64, {1}, std::vector<std::byte>(8));
  const auto f = SafetensorsFile::from_bytes(w.to_bytes(), "x.safetensors");
  REQUIRE_THROWS_AS((void)f.read<std::int64_t>("weight"), TensorMismatchError);
  REQUIRE_THROWS_WITH((void)f.read<std::int64_t>("weight"),
                      "moe::io: file 'x.safetensors': tensor 'weight': expected an integer dtype "
                      "(I64, I32, I16, I8, U32, U16, U8) to read as std::int64_t, got F32");
  REQUIRE_THROWS_WITH((void)f.read_vector<float>("token_ids", 2),
                      "moe::io: file 'x.safetensors': tensor 'token_ids': expected a floating dtype "
                      "(F64, F32, F16, BF16) to read as float, got I64");
  REQUIRE_THROWS_WITH((void)f.read_rows<double>("mask", -1, 2), Contains("to read as double, got BOOL"));
  REQUIRE_THROWS_WITH((void)f.read<float>("fp8"), Contains("got F8_E4M3"));
  REQUIRE_THROWS_WITH((void)f.read<std::int64_t>("big"), Contains("got U64"));  // may not fit
  CHECK(f.raw("fp8").size() == 2);  // unconvertible dtypes still give their bytes
}

TEST_CASE("the writer refuses inconsistent tensors", "[io][safetensors][errors]") {
  SafetensorsWriter w;
  const std::vector<float> six(6);
  w.add<float>("a", {2, 3}, six);
  REQUIRE_THROWS_AS(w.add<float>("a", {6}, six), std::invalid_argument);
  REQUIRE_THROWS_WITH(w.add<float>("a", {6}, six), Contains("SafetensorsWriter::add(): ") && Contains("'a' again"));
  REQUIRE_THROWS_WITH(w.add<float>("b", {2, 2}, six),
                      "SafetensorsWriter::add(): byte count expected 16 (shape [2, 2] of F32), got 24");
  REQUIRE_THROWS_WITH(w.add<float>("__metadata__", {6}, six), Contains("reserved"));
  REQUIRE_THROWS_WITH(w.add<float>("c", {-6}, six), Contains("non-negative"));
  REQUIRE_THROWS_WITH(w.add_raw("d", DType::F16, {3}, std::vector<std::byte>(5)),
                      "SafetensorsWriter::add_raw(): byte count expected 6 (shape [3] of F16), got 5");
  CHECK(SafetensorsFile::from_bytes(w.to_bytes()).names() == std::vector<std::string>{"a"});
}

// ---------------------------------------------------------------------------------------------
// Validation: one malformed file per rule

TEST_CASE("format: file too short for the length field", "[io][safetensors][format]") {
  require_format_error({}, "header length: expected a file of at least 8 bytes (the length field), got 0 bytes");
  require_format_error(std::vector<std::byte>(7), "got 7 bytes");
}

TEST_CASE("format: header length beyond the file or above 100 MiB", "[io][safetensors][format]") {
  require_format_error(with_length(100, "{}"), "header length: expected at most 2 (the bytes after the length field), got 100");
  require_format_error(with_length(std::numeric_limits<std::uint64_t>::max(), "{}"),
                       "header length: expected at most 104857600 (100 MiB), got 18446744073709551615");
  require_format_error(with_length((std::uint64_t{100} << 20) + 1, "{}"), "expected at most 104857600 (100 MiB)");
  CHECK(parse(file_with("{}")).size() == 0);  // the smallest valid file
  CHECK(parse(with_length(2, "{}", 16)).size() == 0);  // unreferenced data is tolerated
}

TEST_CASE("format: header not UTF-8, not JSON, not an object", "[io][safetensors][format]") {
  require_format_error(file_with("{\"a\xFF\":1}"), "header: expected UTF-8 text, got the invalid byte 0xff at header byte 3");
  require_format_error(file_with("{\"\xC0\x80\":1}"), "expected UTF-8 text");      // overlong NUL
  require_format_error(file_with("{\"\xED\xA0\x80\":1}"), "expected UTF-8 text");  // surrogate
  require_format_error(file_with("{\"\xF4\x90\x80\x80\":1}"), "expected UTF-8 text");  // above U+10FFFF
  require_format_error(file_with("{\"\xE2\x82"), "expected UTF-8 text");            // cut short
  require_format_error(file_with("{"), "header: expected JSON, got a parse error: ");
  require_format_error(file_with(""), "header: expected JSON, got a parse error: ");
  require_format_error(file_with("{} x"), "header: expected JSON, got a parse error: ");
  require_format_error(file_with("{\"a\": 1,}"), "header: expected JSON, got a parse error: ");
  require_format_error(file_with("[]"), "header: expected a JSON object, got array []");
  require_format_error(file_with("3"), "header: expected a JSON object, got number 3");
  require_format_error(file_with("\"s\""), "header: expected a JSON object, got string");
  // Trailing spaces are the spec's padding; a UTF-8 name is fine.
  CHECK(parse(file_with("{\"\xC3\xA9\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]}}   ")).contains("\xC3\xA9"));
}

TEST_CASE("format: nesting too deep is refused before parsing", "[io][safetensors][format]") {
  // Deep enough to overflow the stack of a recursive parser.
  const std::string deep = std::string(200000, '[') + std::string(200000, ']');
  require_format_error(file_with(deep), "header: expected JSON nested at most 8 deep, got deeper nesting at header byte 8");
  require_format_error(file_with("{\"a\":{\"b\":{\"c\":{\"d\":{\"e\":{\"f\":{\"g\":{\"h\":{}}}}}}}}}"), "nested at most 8 deep");
  // Brackets inside strings are text, not nesting.
  const auto f = parse(file_with(R"({"__metadata__":{"k":"[[[[[[[[[[{{{{{{{{{{\"[["}})"));
  CHECK(f.metadata("k") == std::optional<std::string>("[[[[[[[[[[{{{{{{{{{{\"[["));
  // Nesting within the limit reaches the structural checks instead.
  require_format_error(file_with(R"({"a":{"dtype":"F32","shape":[[[[]]]],"data_offsets":[0,0]}})"),
                       "tensor 'a': shape[0]: expected a non-negative integer, got [[[]]]");
}

TEST_CASE("format: tensor entry not an object or missing a field", "[io][safetensors][format]") {
  require_format_error(file_with(R"({"w":[1,2]})"),
                       "tensor 'w': expected an object with dtype, shape and data_offsets, got [1,2]");
  require_format_error(file_with(R"({"w":{"shape":[1],"data_offsets":[0,4]}})"), "tensor 'w': expected a field 'dtype', got none");
  require_format_error(file_with(R"({"w":{"dtype":"F32","data_offsets":[0,4]}})", 4),
                       "tensor 'w': expected a field 'shape', got none");
  require_format_error(file_with(R"({"w":{"dtype":"F32","shape":[1]}})", 4),
                       "tensor 'w': expected a field 'data_offsets', got none");
}

TEST_CASE("format: dtype not a string or unknown", "[io][safetensors][format]") {
  require_format_error(file_with(R"({"w":{"dtype":4,"shape":[1],"data_offsets":[0,4]}})", 4),
                       "tensor 'w': dtype: expected a string, got 4");
  require_format_error(file_with(R"({"w":{"dtype":"F128","shape":[1],"data_offsets":[0,4]}})", 4),
                       "tensor 'w': dtype: expected one of F64, F32, F16, BF16, I64");
  require_format_error(file_with(R"({"w":{"dtype":"f32","shape":[1],"data_offsets":[0,4]}})", 4), "got \"f32\"");
}

TEST_CASE("format: shape not an array of non-negative integers", "[io][safetensors][format]") {
  require_format_error(file_with(R"({"w":{"dtype":"F32","shape":4,"data_offsets":[0,16]}})", 16),
                       "tensor 'w': shape: expected an array of non-negative integers, got 4");
  require_format_error(file_with(R"({"w":{"dtype":"F32","shape":[2,-2],"data_offsets":[0,16]}})", 16),
                       "tensor 'w': shape[1]: expected a non-negative integer, got -2");
  require_format_error(file_with(R"({"w":{"dtype":"F32","shape":[2.0,2],"data_offsets":[0,16]}})", 16),
                       "tensor 'w': shape[0]: expected a non-negative integer, got 2.0");
  require_format_error(file_with(R"({"w":{"dtype":"F32","shape":["2"],"data_offsets":[0,8]}})", 8),
                       "tensor 'w': shape[0]: expected a non-negative integer, got \"2\"");
  require_format_error(file_with(R"({"w":{"dtype":"F32","shape":[9223372036854775808],"data_offsets":[0,8]}})", 8),
                       "tensor 'w': shape[0]: expected a non-negative integer, got 9223372036854775808");
  require_format_error(file_with(R"({"w":{"dtype":"F32","shape":[99999999999999999999],"data_offsets":[0,8]}})", 8),
                       "tensor 'w': shape[0]: expected a non-negative integer");
}

TEST_CASE("format: element and byte counts that overflow", "[io][safetensors][format]") {
  // 2^32 * 2^32 = 2^64 elements.
  require_format_error(file_with(R"({"w":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,0]}})"),
                       "tensor 'w': shape: expected an element count below 2^63, got [4294967296,4294967296], which overflows");
  // A zero later in the shape does not excuse an overflowing prefix.
  require_format_error(file_with(R"({"w":{"dtype":"U8","shape":[4294967296,4294967296,0],"data_offsets":[0,0]}})"),
                       "expected an element count below 2^63");
  // 2^62 elements fit, 2^62 * 8 bytes do not.
  require_format_error(file_with(R"({"w":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,0]}})"),
                       "tensor 'w': shape: expected a byte count below 2^64, got 4611686018427387904 elements of F64, which overflows");
  // Packed 4-bit elements must fill whole bytes.
  require_format_error(file_with(R"({"w":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}})", 2),
                       "tensor 'w': shape: expected a whole number of bytes, got 3 elements of F4 (12 bits)");
  CHECK(parse(file_with(R"({"w":{"dtype":"F4","shape":[4],"data_offsets":[0,2]}})", 2)).raw("w").size() == 2);
}

TEST_CASE("format: data_offsets malformed, reversed, out of the data or the wrong size", "[io][safetensors][format]") {
  const std::string expected_two = "tensor 'w': data_offsets: expected two non-negative integers [begin, end], got ";
  require_format_error(file_with(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":8}})", 8), expected_two + "8");
  require_format_error(file_with(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8]}})", 8), expected_two + "[8]");
  require_format_error(file_with(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8,8]}})", 8), expected_two + "[0,8,8]");
  require_format_error(file_with(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})", 8), expected_two + "[-8,0]");
  require_format_error(file_with(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8.0]}})", 8), expected_two + "[0,8.0]");
  require_format_error(file_with(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,"8"]}})", 8), expected_two + "[0,\"8\"]");
  require_format_error(file_with(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8),
                       "tensor 'w': data_offsets: expected begin <= end, got [8,0]");
  require_format_error(file_with(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 7),
                       "tensor 'w': data_offsets: expected end <= 7 (the size of the data section), got [0,8]");
  require_format_error(file_with(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,18446744073709551615]}})", 8),
                       "expected end <= 8 (the size of the data section)");
  require_format_error(file_with(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,6]}})", 8),
                       "tensor 'w': data_offsets: expected end - begin = 8 (shape [2] of F32), got 6");
  require_format_error(file_with(R"({"w":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,16]}})", 16),
                       "tensor 'w': data_offsets: expected end - begin = 8 (shape [2, 2] of BF16), got 16");
}

TEST_CASE("format: overlapping tensors", "[io][safetensors][format]") {
  require_format_error(file_with(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                 R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                                 12),
                       "tensor 'b': data_offsets: expected a byte range disjoint from every other tensor, "
                       "got [4, 12) overlapping tensor 'a' [0, 8)");
  // Contained in a longer earlier range, and exact aliases, overlap too.
  require_format_error(file_with(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                                 R"("b":{"dtype":"U8","shape":[1],"data_offsets":[12,13]},)"
                                 R"("c":{"dtype":"U8","shape":[1],"data_offsets":[14,15]}})",
                                 16),
                       "got [12, 13) overlapping tensor 'a' [0, 16)");
  require_format_error(file_with(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                                 R"("b":{"dtype":"I32","shape":[1],"data_offsets":[0,4]}})",
                                 4),
                       "overlapping tensor 'a' [0, 4)");
  // Adjacent ranges, gaps, and empty tensors anywhere are fine.
  const auto f = parse(file_with(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                                 R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},)"
                                 R"("e":{"dtype":"F32","shape":[0],"data_offsets":[2,2]},)"
                                 R"("c":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}})",
                                 16));
  CHECK(f.size() == 4);
}

TEST_CASE("format: __metadata__ must map strings to strings", "[io][safetensors][format]") {
  require_format_error(file_with(R"({"__metadata__":["a"]})"),
                       "__metadata__: expected an object mapping strings to strings, got [\"a\"]");
  require_format_error(file_with(R"({"__metadata__":{"d_model":64}})"), "__metadata__['d_model']: expected a string, got 64");
  require_format_error(file_with(R"({"__metadata__":{"x":null}})"), "__metadata__['x']: expected a string, got null");
}

TEST_CASE("format: duplicate keys are refused, not silently resolved", "[io][safetensors][format]") {
  require_format_error(file_with(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                                 R"("w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                                 8),
                       "header: expected each key once per object, got 'w' twice at the top level");
  require_format_error(file_with(R"({"w":{"dtype":"F32","dtype":"I32","shape":[1],"data_offsets":[0,4]}})", 4),
                       "header: expected each key once per object, got 'dtype' twice in 'w'");
  require_format_error(file_with(R"({"__metadata__":{"case":"a","case":"b"}})"),
                       "got 'case' twice in '__metadata__'");
  // Equal keys in different objects are not duplicates.
  CHECK(parse(file_with(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                        R"("b":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
                        2))
            .size() == 2);
}

TEST_CASE("format: every truncation and random corruption of a valid file is refused cleanly", "[io][safetensors][format]") {
  SafetensorsWriter w;
  w.metadata("case", "fuzz");
  w.add<float>("a", {2, 3}, std::vector<float>{1, 2, 3, 4, 5, 6});
  w.add<std::int64_t>("b", {2}, std::vector<std::int64_t>{7, 8});
  w.add_raw("c", DType::BF16, {3}, u16_bytes({1, 2, 3}));
  const auto good = w.to_bytes();
  REQUIRE(parse(good).size() == 3);

  for (std::size_t n = 0; n < good.size(); ++n) {
    INFO("truncated to " << n << " bytes");
    const std::vector<std::byte> cut(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(n));
    REQUIRE_THROWS_AS((void)parse(cut), FormatError);
  }

  // Random byte flips either parse (then every tensor reads within bounds) or throw FormatError;
  // under the sanitizers this also proves no out-of-bounds access.
  std::mt19937 rng(12345);
  int accepted = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    auto bad = good;
    const int flips = 1 + static_cast<int>(rng() % 3);
    for (int k = 0; k < flips; ++k) bad[rng() % bad.size()] = static_cast<std::byte>(rng() & 0xFF);
    try {
      const auto f = parse(bad);
      ++accepted;
      for (const auto& name : f.names()) {
        (void)f.raw(name);
        const auto& t = f.info(name);
        if (moe::io::is_convertible_float(t.dtype)) (void)f.read<double>(name);
        if (moe::io::is_convertible_integer(t.dtype)) (void)f.read<std::int64_t>(name);
      }
    } catch (const FormatError&) {
    }
  }
  CHECK(accepted > 0);  // flips in the data section leave the file valid
}

// ---------------------------------------------------------------------------------------------
// The golden reference files

TEST_CASE("writer: names, data_size and move_tensor, which moves a tensor between writers", "[io][safetensors][writer]") {
  SafetensorsWriter a, b;
  const std::vector<float> x = {1, 2, 3};
  const std::vector<double> y = {4, 5};
  a.metadata("k", "v");
  a.add<float>("x", {3}, std::span<const float>(x));
  a.add<double>("y", {2}, std::span<const double>(y));
  CHECK(a.names() == std::vector<std::string>{"x", "y"});
  CHECK(a.data_size() == 3 * 4 + 2 * 8);
  a.move_tensor("y", b);
  CHECK(a.names() == std::vector<std::string>{"x"});
  CHECK(b.names() == std::vector<std::string>{"y"});
  CHECK(a.data_size() == 12);
  CHECK(b.data_size() == 16);
  const auto fb = SafetensorsFile::from_bytes(b.to_bytes());
  CHECK(fb.read<double>("y") == y);
  CHECK(fb.metadata().empty());  // metadata stays behind
  CHECK(SafetensorsFile::from_bytes(a.to_bytes()).metadata("k") == "v");
  REQUIRE_THROWS_WITH(a.move_tensor("y", b),
                      "SafetensorsWriter::move_tensor(): tensor name expected a name added before, got 'y'");
  b.add<float>("x", {3}, std::span<const float>(x));
  REQUIRE_THROWS_WITH(a.move_tensor("x", b),
                      "SafetensorsWriter::move_tensor(): tensor name expected a name the target lacks, got 'x' in both");
  REQUIRE_THROWS_AS(a.move_tensor("x", a), std::invalid_argument);
  CHECK(a.names() == std::vector<std::string>{"x"});
}

TEST_CASE("every golden file opens, names its case and reads its input", "[io][safetensors][golden]") {
  const auto dir = golden_dir();
  INFO("golden folder: " << dir.string());
  REQUIRE(std::filesystem::is_directory(dir));
  std::vector<std::filesystem::path> files;
  for (const auto& entry : std::filesystem::directory_iterator(dir))
    if (entry.path().extension() == ".safetensors") files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  REQUIRE_FALSE(files.empty());

  for (const auto& path : files) {
    INFO("file: " << path.string());
    const auto f = SafetensorsFile::open(path);
    REQUIRE(f.metadata("case") == std::optional<std::string>(path.stem().string()));
    const auto d_model_text = f.metadata("d_model");
    REQUIRE(d_model_text.has_value());
    const moe::Index d_model = std::stol(*d_model_text);

    const auto input = f.read_rows<float>("input", -1, d_model);
    CHECK(input.cols() == d_model);
    const auto& shape = f.info("input").shape;
    REQUIRE(shape.size() == 3);
    CHECK(input.rows() == shape[0] * shape[1]);
    if (const auto input_shape = f.metadata("input_shape"))
      CHECK(*input_shape == std::to_string(shape[0]) + "x" + std::to_string(shape[1]) + "x" + std::to_string(shape[2]));

    for (const auto& name : f.names()) {
      INFO("tensor: " << name);
      const auto& t = f.info(name);
      switch (t.dtype) {
        case DType::F32: {
          const auto as_float = f.read<float>(name);
          const auto as_double = f.read<double>(name);
          REQUIRE(as_float.size() == as_double.size());
          REQUIRE(std::equal(as_float.begin(), as_float.end(), as_double.begin(),
                             [](float a, double b) { return static_cast<double>(a) == b; }));
          break;
        }
        case DType::F64:
          CHECK(f.read<double>(name).size() == static_cast<std::size_t>(t.numel()));
          break;
        case DType::I64:
          CHECK(f.read<std::int64_t>(name).size() == static_cast<std::size_t>(t.numel()));
          REQUIRE_THROWS_AS((void)f.read<float>(name), TensorMismatchError);
          break;
        default:
          FAIL("unexpected dtype " << moe::io::dtype_name(t.dtype) << " in a golden file");
      }
    }
  }
}
