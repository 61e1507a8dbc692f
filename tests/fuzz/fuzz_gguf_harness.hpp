// What fuzz_gguf does with one input, shared with tests/io/fuzz_regression_test.cpp so every
// checked-in seed and every past crash is replayed by the ordinary test suite too.
//
// The documented refusals (moe::io::Error and its subclasses, std::invalid_argument) are
// caught here; anything else escapes and is a finding, as are the broken invariants that throw
// FuzzFinding (a raw span or a conversion of the wrong size, a lookup that disagrees with the
// file's own list).
#ifndef MOE_TESTS_FUZZ_FUZZ_GGUF_HARNESS_HPP
#define MOE_TESTS_FUZZ_FUZZ_GGUF_HARNESS_HPP

#include <moe/io/gguf.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace moe::fuzz {

/// An invariant of the GGUF reader found broken. Not caught by the harness.
struct GgufFuzzFinding : std::logic_error {
  using std::logic_error::logic_error;
};

namespace detail {

/// Reads a value every way its type allows, and one way it does not.
inline void read_value(const io::GgufValue& v) {
  using io::GgufType;
  (void)v.describe();
  try {
    if (v.is_array()) {
      std::size_t n = 0;
      switch (v.element_type()) {
        case GgufType::U8: n = v.as_array<std::uint8_t>().size(); break;
        case GgufType::I8: n = v.as_array<std::int8_t>().size(); break;
        case GgufType::U16: n = v.as_array<std::uint16_t>().size(); break;
        case GgufType::I16: n = v.as_array<std::int16_t>().size(); break;
        case GgufType::U32: n = v.as_array<std::uint32_t>().size(); break;
        case GgufType::I32: n = v.as_array<std::int32_t>().size(); break;
        case GgufType::F32: n = v.as_array<float>().size(); break;
        case GgufType::BOOL: n = v.as_array<bool>().size(); break;
        case GgufType::STRING: n = v.as_array<std::string_view>().size(); break;
        case GgufType::U64: n = v.as_array<std::uint64_t>().size(); break;
        case GgufType::I64: n = v.as_array<std::int64_t>().size(); break;
        case GgufType::F64: n = v.as_array<double>().size(); break;
        default: throw GgufFuzzFinding("an array of element type " + std::to_string(static_cast<unsigned>(v.element_type())));
      }
      if (n != v.size()) throw GgufFuzzFinding("as_array() gave " + std::to_string(n) + " elements for '" + v.key() + "'");
    } else if (v.type() == GgufType::STRING) {
      (void)v.as<std::string>();
    } else if (v.type() == GgufType::F32 || v.type() == GgufType::F64) {
      (void)v.as_double();
    } else if (v.type() == GgufType::BOOL) {
      (void)v.as<bool>();
    } else {
      (void)v.as_int();  // u64 past 2^63 is a MetadataError
    }
  } catch (const io::MetadataError&) {
  }
  try {
    (void)v.as<std::string>();
  } catch (const io::MetadataError&) {
  }
}

}  // namespace detail

/// fuzz_gguf: parse, then read every metadata value and every tensor (raw bytes touched,
/// converted to float and to a matrix where the type allows), and look up missing names.
inline void exercise_gguf(const std::uint8_t* data, std::size_t size) {
  try {
    std::vector<std::byte> bytes(size);
    if (size != 0) std::memcpy(bytes.data(), data, size);
    const auto f = io::GgufFile::from_bytes(std::move(bytes), "fuzz.gguf");
    for (const io::GgufValue& v : f.metadata()) {
      if (f.find(v.key()) != &v) throw GgufFuzzFinding("find() disagrees with metadata() for '" + v.key() + "'");
      detail::read_value(v);
    }
    for (const io::GgufTensorInfo& t : f.tensors()) {
      if (&f.info(t.name) != &t) throw GgufFuzzFinding("info() disagrees with tensors() for '" + t.name + "'");
      const auto raw = f.raw(t.name);
      if (raw.size() != t.nbytes) throw GgufFuzzFinding("raw() size differs from nbytes for '" + t.name + "'");
      unsigned sum = 0;
      for (std::byte b : raw) sum += static_cast<unsigned>(b);  // ASan checks every byte is in bounds
      if (sum == ~0u) throw GgufFuzzFinding("unreachable");
      try {
        const std::vector<float> v = f.to_float(t.name);
        if (v.size() != static_cast<std::size_t>(t.numel()))
          throw GgufFuzzFinding("to_float() gave " + std::to_string(v.size()) + " elements for '" + t.name + "'");
        const RowMatrix<float> m = f.to_matrix(t.name);
        if (m.rows() != t.rows() || m.cols() != t.cols()) throw GgufFuzzFinding("to_matrix() shape for '" + t.name + "'");
        (void)f.to_matrix(t.name, t.rows() + 1, t.cols());  // a TensorMismatchError
      } catch (const io::TensorMismatchError&) {
      }
    }
    try {
      (void)f.info("blk.0.ffn_gate_exps.weigth");  // the close-names path
    } catch (const io::MissingTensorError&) {
    }
    try {
      (void)f.get_int("general.alignmnet");
    } catch (const io::MissingMetadataError&) {
    }
  } catch (const io::Error&) {
  } catch (const std::invalid_argument&) {
  }
}

}  // namespace moe::fuzz

#endif  // MOE_TESTS_FUZZ_FUZZ_GGUF_HARNESS_HPP
