// The moe::io exceptions: one hierarchy, and messages that name the file and the tensor.
#include <moe/io/error.hpp>

#include <catch2/catch.hpp>

#include <stdexcept>
#include <type_traits>

TEST_CASE("io errors read \"moe::io: file '<file>': [tensor '<name>': ]<message>\"", "[io][errors]") {
  const moe::io::FormatError format("a.safetensors", "header: expected JSON, got 'x'");
  CHECK(std::string(format.what()) == "moe::io: file 'a.safetensors': header: expected JSON, got 'x'");
  CHECK(format.file() == "a.safetensors");
  const moe::io::MissingTensorError missing("b.safetensors", "w1", "no such name");
  CHECK(std::string(missing.what()) == "moe::io: file 'b.safetensors': tensor 'w1': no such name");
  CHECK(missing.file() == "b.safetensors");
  CHECK(missing.tensor() == "w1");
  const moe::io::TensorMismatchError mismatch("<memory>", "w2", "expected F32, got I8");
  CHECK(std::string(mismatch.what()) == "moe::io: file '<memory>': tensor 'w2': expected F32, got I8");
}

TEST_CASE("every io error is a moe::io::Error, a std::runtime_error", "[io][errors]") {
  STATIC_REQUIRE(std::is_base_of_v<std::runtime_error, moe::io::Error>);
  STATIC_REQUIRE(std::is_base_of_v<moe::io::Error, moe::io::FormatError>);
  STATIC_REQUIRE(std::is_base_of_v<moe::io::Error, moe::io::TensorError>);
  STATIC_REQUIRE(std::is_base_of_v<moe::io::TensorError, moe::io::MissingTensorError>);
  STATIC_REQUIRE(std::is_base_of_v<moe::io::TensorError, moe::io::TensorMismatchError>);
  STATIC_REQUIRE_FALSE(std::is_base_of_v<moe::io::TensorError, moe::io::FormatError>);
  try {
    throw moe::io::MissingTensorError("f", "t", "m");
  } catch (const moe::io::Error& e) {
    CHECK(e.file() == "f");
  }
}
