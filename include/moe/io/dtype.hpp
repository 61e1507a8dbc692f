// The element types of the safetensors format, and exact conversions of the 16-bit floats.
#ifndef MOE_IO_DTYPE_HPP
#define MOE_IO_DTYPE_HPP

#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace moe::io {

// safetensors stores every element little-endian; on a little-endian host a tensor's bytes are
// already the host's representation, which is what lets the reader memcpy them.
static_assert(std::endian::native == std::endian::little,
              "moe::io reads safetensors (little-endian) by copying bytes: a little-endian host is required");

/// Every dtype of the safetensors format. The first twelve are the ones the library names in
/// its API; the rest are read and validated but not converted (raw() still gives their bytes).
enum class DType : std::uint8_t {
  F64,
  F32,
  F16,
  BF16,
  I64,
  I32,
  I16,
  I8,
  U8,
  BOOL,
  F8_E4M3,
  F8_E5M2,
  // Known to the format, unsupported for conversion.
  U64,
  U32,
  U16,
  F8_E8M0,
  F6_E2M3,  // 6 bits per element, packed
  F6_E3M2,  // 6 bits per element, packed
  F4,       // 4 bits per element, packed
};

namespace detail {

struct DTypeEntry {
  DType dtype;
  std::string_view name;
  std::size_t bits;
};

inline constexpr std::array<DTypeEntry, 19> dtype_table{{
    {DType::F64, "F64", 64},         {DType::F32, "F32", 32},         {DType::F16, "F16", 16},
    {DType::BF16, "BF16", 16},       {DType::I64, "I64", 64},         {DType::I32, "I32", 32},
    {DType::I16, "I16", 16},         {DType::I8, "I8", 8},            {DType::U8, "U8", 8},
    {DType::BOOL, "BOOL", 8},        {DType::F8_E4M3, "F8_E4M3", 8},  {DType::F8_E5M2, "F8_E5M2", 8},
    {DType::U64, "U64", 64},         {DType::U32, "U32", 32},         {DType::U16, "U16", 16},
    {DType::F8_E8M0, "F8_E8M0", 8},  {DType::F6_E2M3, "F6_E2M3", 6}, {DType::F6_E3M2, "F6_E3M2", 6},
    {DType::F4, "F4", 4},
}};

constexpr const DTypeEntry& dtype_entry(DType d) noexcept {
  // The table is in enum order, so the enumerator is the index.
  return dtype_table[static_cast<std::size_t>(d)];
}

}  // namespace detail

/// The dtype's name as the safetensors header spells it ("F32", "BF16", ...).
[[nodiscard]] constexpr std::string_view dtype_name(DType d) noexcept { return detail::dtype_entry(d).name; }

/// Bits per element; 4 and 6 for the packed sub-byte floats.
[[nodiscard]] constexpr std::size_t dtype_bits(DType d) noexcept { return detail::dtype_entry(d).bits; }

/// Bytes per element; 0 for the packed sub-byte dtypes (F4, F6_*), which have no whole byte size:
/// use dtype_bits for those.
[[nodiscard]] constexpr std::size_t dtype_size(DType d) noexcept {
  const std::size_t bits = dtype_bits(d);
  return bits % 8 == 0 ? bits / 8 : 0;
}

/// The dtype named by a header string, or nullopt when the format has no such dtype.
[[nodiscard]] constexpr std::optional<DType> parse_dtype(std::string_view name) noexcept {
  for (const auto& e : detail::dtype_table)
    if (e.name == name) return e.dtype;
  return std::nullopt;
}

/// F64, F32, F16, BF16: the dtypes the reader converts to float and double.
[[nodiscard]] constexpr bool is_convertible_float(DType d) noexcept {
  return d == DType::F64 || d == DType::F32 || d == DType::F16 || d == DType::BF16;
}

/// The signed and unsigned integers every value of which an std::int64_t holds exactly.
[[nodiscard]] constexpr bool is_convertible_integer(DType d) noexcept {
  return d == DType::I64 || d == DType::I32 || d == DType::I16 || d == DType::I8 || d == DType::U32 ||
         d == DType::U16 || d == DType::U8;
}

/// IEEE binary16 bits to float; exact, since every half value is a float value. Subnormal halves
/// become normal floats, inf stays inf, and a NaN keeps its sign and payload (quiet bit included).
[[nodiscard]] constexpr float f16_to_float(std::uint16_t h) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exponent = (h >> 10) & 0x1Fu;
  std::uint32_t mantissa = h & 0x3FFu;
  std::uint32_t bits = 0;
  if (exponent == 0x1F) {
    bits = sign | 0x7F800000u | (mantissa << 13);
  } else if (exponent != 0) {
    // Rebias 15 -> 127.
    bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;
  } else {
    // Subnormal: mantissa * 2^-24. Shift the leading one up to the implicit bit position and
    // lower the exponent once per shift; the value is then a normal float.
    std::uint32_t e = 113;  // 127 - 14: the exponent of a half subnormal's scale 2^-14
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      --e;
    }
    bits = sign | (e << 23) | ((mantissa & 0x3FFu) << 13);
  }
  return std::bit_cast<float>(bits);
}

/// bfloat16 bits to float: bfloat16 is the top half of a float, so this is exact for every value.
[[nodiscard]] constexpr float bf16_to_float(std::uint16_t b) noexcept {
  return std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16);
}

}  // namespace moe::io

#endif  // MOE_IO_DTYPE_HPP
