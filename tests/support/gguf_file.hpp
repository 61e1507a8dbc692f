// GGUF files built byte by byte from the format's definition, for tests that need a file the
// writer would never make (a lying count, a bad type, an overlap), and to check the writer's
// bytes against the definition.
#ifndef MOE_TESTS_SUPPORT_GGUF_FILE_HPP
#define MOE_TESTS_SUPPORT_GGUF_FILE_HPP

#include <moe/io/gguf.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace moe::test {

/// Appends little-endian fields: a GGUF file written by hand, field by field.
class GgufBytes {
 public:
  template <class T>
  GgufBytes& put(T v) {
    const auto at = bytes_.size();
    bytes_.resize(at + sizeof(T));
    std::memcpy(bytes_.data() + at, &v, sizeof(T));
    return *this;
  }
  GgufBytes& u8(std::uint8_t v) { return put(v); }
  GgufBytes& u32(std::uint32_t v) { return put(v); }
  GgufBytes& u64(std::uint64_t v) { return put(v); }
  /// Raw characters, no length.
  GgufBytes& text(std::string_view s) {
    for (char c : s) bytes_.push_back(static_cast<std::byte>(c));
    return *this;
  }
  /// A GGUF string: u64 length, then the bytes.
  GgufBytes& str(std::string_view s) { return u64(s.size()).text(s); }
  /// Magic, version, tensor count, metadata count.
  GgufBytes& header(std::uint64_t n_tensors, std::uint64_t n_kv, std::uint32_t version = 3) {
    return text("GGUF").u32(version).u64(n_tensors).u64(n_kv);
  }
  /// A key and a u32 value (type 4).
  GgufBytes& kv_u32(std::string_view key, std::uint32_t v) { return str(key).u32(4).u32(v); }
  /// A key and a string value (type 8).
  GgufBytes& kv_str(std::string_view key, std::string_view v) { return str(key).u32(8).str(v); }
  /// A tensor info: name, n_dims, ne, ggml type, offset.
  GgufBytes& tensor(std::string_view name, const std::vector<std::uint64_t>& ne, std::uint32_t type,
                    std::uint64_t offset) {
    str(name).u32(static_cast<std::uint32_t>(ne.size()));
    for (std::uint64_t d : ne) u64(d);
    return u32(type).u64(offset);
  }
  /// Zero bytes up to the next multiple of alignment.
  GgufBytes& pad(std::size_t alignment = 32) {
    bytes_.resize((bytes_.size() + alignment - 1) / alignment * alignment, std::byte{0});
    return *this;
  }
  /// n bytes of value v.
  GgufBytes& fill(std::size_t n, std::uint8_t v = 0) {
    bytes_.resize(bytes_.size() + n, static_cast<std::byte>(v));
    return *this;
  }

  [[nodiscard]] std::size_t size() const noexcept { return bytes_.size(); }
  [[nodiscard]] const std::vector<std::byte>& bytes() const noexcept { return bytes_; }
  [[nodiscard]] std::vector<std::byte>& bytes() noexcept { return bytes_; }

 private:
  std::vector<std::byte> bytes_;
};

/// The file w describes, opened from memory under the display name `name`.
inline moe::io::GgufFile in_memory(const moe::io::GgufWriter& w, const std::string& name = "model.gguf") {
  return moe::io::GgufFile::from_bytes(w.to_bytes(), name);
}

/// The bytes b as a file named "bad.gguf" (what the validation tests' messages quote).
inline moe::io::GgufFile parse_gguf(const std::vector<std::byte>& b, const std::string& name = "bad.gguf") {
  return moe::io::GgufFile::from_bytes(b, name);
}

}  // namespace moe::test

#endif  // MOE_TESTS_SUPPORT_GGUF_FILE_HPP
