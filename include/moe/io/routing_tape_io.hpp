// Routing tapes as safetensors files (docs/replay.md#files): record a run's routing, replay it
// in another process.
//
// Layout: metadata {"format": "moe-routing-tape", "version": "1", "records": "N"}; per record
// i, tensors
//   tape.{i}.shape   I64 [5]  layer_index, num_tokens, num_experts, k, capacity
//   tape.{i}.token   I32 [n]
//   tape.{i}.expert  I32 [n]
//   tape.{i}.gate    F64 [n]  (a float gate converts to double exactly)
//   tape.{i}.kept    U8  [n]
// Reading checks the format, the version, every tensor's presence, dtype and length, and each
// record's consistency (RoutingRecord::validate); a damaged file is a moe::io error naming the
// file and the record, never a replay of garbage.
#ifndef MOE_IO_ROUTING_TAPE_IO_HPP
#define MOE_IO_ROUTING_TAPE_IO_HPP

#include <moe/dispatch/routing_tape.hpp>
#include <moe/io/error.hpp>
#include <moe/io/safetensors.hpp>

#include <cstddef>
#include <cstdint>
#include <bit>
#include <cstring>
#include <type_traits>
#include <filesystem>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

namespace moe::io {

namespace detail {

template <class T>
std::vector<std::byte> little_endian_bytes(const std::vector<T>& v) {
  static_assert(std::endian::native == std::endian::little, "moe::io writes little-endian hosts only");
  std::vector<std::byte> bytes(v.size() * sizeof(T));
  if (!v.empty()) std::memcpy(bytes.data(), v.data(), bytes.size());
  return bytes;
}

}  // namespace detail

/// The tape as a safetensors writer holding the layout above.
[[nodiscard]] inline SafetensorsWriter routing_tape_writer(const RoutingTape& tape) {
  SafetensorsWriter w;
  w.metadata("format", "moe-routing-tape").metadata("version", "1").metadata("records", std::to_string(tape.size()));
  for (std::size_t i = 0; i < tape.size(); ++i) {
    const RoutingRecord& r = tape.records()[i];
    const std::string p = "tape." + std::to_string(i) + ".";
    const auto n = static_cast<std::int64_t>(r.size());
    const std::vector<std::int64_t> shape{r.layer_index, r.num_tokens, r.num_experts, r.k, r.capacity};
    w.add<std::int64_t>(p + "shape", {5}, shape);
    w.add_raw(p + "token", DType::I32, {n}, detail::little_endian_bytes(r.token));
    w.add_raw(p + "expert", DType::I32, {n}, detail::little_endian_bytes(r.expert));
    w.add<double>(p + "gate", {n}, r.gate);
    w.add_raw(p + "kept", DType::U8, {n}, detail::little_endian_bytes(r.kept));
  }
  return w;
}

/// Writes the tape to `path`; throws moe::io::Error when the file cannot be written.
inline void save_routing_tape(const RoutingTape& tape, const std::filesystem::path& path) {
  routing_tape_writer(tape).save(path);
}

/// Reads a tape from a safetensors file (bytes already in memory: from_bytes), in `mode`.
[[nodiscard]] inline RoutingTape read_routing_tape(const SafetensorsFile& file, TapeMode mode = TapeMode::replay) {
  const std::string& name = file.display_name();
  const auto meta = [&](const char* key) {
    const auto v = file.metadata(key);
    if (!v) throw FormatError(name, std::string("__metadata__.") + key + ": expected present (a moe routing tape), got absent");
    return *v;
  };
  if (const std::string f = meta("format"); f != "moe-routing-tape")
    throw FormatError(name, "__metadata__.format: expected moe-routing-tape, got " + f);
  if (const std::string v = meta("version"); v != "1")
    throw FormatError(name, "__metadata__.version: expected 1, got " + v);
  const std::string count_text = meta("records");
  std::size_t count = 0;
  {
    std::size_t used = 0;
    unsigned long long parsed = 0;
    try {
      parsed = std::stoull(count_text, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    // Each record holds five tensors, so a count beyond the file's tensors is a lie.
    if (used == 0 || used != count_text.size() || count_text[0] == '-' || parsed > file.size() / 5)
      throw FormatError(name, "__metadata__.records: expected a record count matching the tensors (" +
                                  std::to_string(file.size() / 5) + " at most), got " + count_text);
    count = static_cast<std::size_t>(parsed);
  }
  RoutingTape tape(mode);
  for (std::size_t i = 0; i < count; ++i) {
    const std::string p = "tape." + std::to_string(i) + ".";
    const std::vector<std::int64_t> shape = file.read<std::int64_t>(p + "shape", std::vector<std::int64_t>{5});
    RoutingRecord r;
    r.layer_index = shape[0];
    r.num_tokens = shape[1];
    r.num_experts = shape[2];
    r.k = shape[3];
    r.capacity = shape[4];
    const auto read_as = [&](const char* tensor, DType dtype, auto& out) {
      const TensorInfo& info = file.info(p + tensor);
      if (info.dtype != dtype || info.shape.size() != 1)
        throw TensorMismatchError(name, p + tensor,
                                  std::string("expected a vector of ") + std::string(dtype_name(dtype)) + ", got " +
                                      std::string(dtype_name(info.dtype)) + " of rank " + std::to_string(info.shape.size()));
      using T = typename std::remove_reference_t<decltype(out)>::value_type;
      const auto raw = file.raw(p + tensor);
      out.resize(raw.size() / sizeof(T));
      if (!out.empty()) std::memcpy(out.data(), raw.data(), out.size() * sizeof(T));
    };
    read_as("token", DType::I32, r.token);
    read_as("expert", DType::I32, r.expert);
    read_as("gate", DType::F64, r.gate);
    read_as("kept", DType::U8, r.kept);
    try {
      r.validate("read_routing_tape()");
    } catch (const std::invalid_argument& e) {
      throw FormatError(name, "routing tape record " + std::to_string(i) + ": " + e.what());
    }
    tape.append(std::move(r));
  }
  return tape;
}

/// Reads a tape from `path`.
[[nodiscard]] inline RoutingTape load_routing_tape(const std::filesystem::path& path, TapeMode mode = TapeMode::replay) {
  return read_routing_tape(SafetensorsFile::open(path), mode);
}

}  // namespace moe::io

#endif  // MOE_IO_ROUTING_TAPE_IO_HPP
