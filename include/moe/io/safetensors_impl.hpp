// Bodies of SafetensorsFile and SafetensorsWriter; included by moe/io/safetensors.hpp.
#ifndef MOE_IO_SAFETENSORS_IMPL_HPP
#define MOE_IO_SAFETENSORS_IMPL_HPP

#include "moe/core/error.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <system_error>
#include <tuple>
#include <utility>
#include <vector>

namespace moe::io {

namespace detail {

/// safetensors' own reader refuses headers above 100 MB; 100 MiB keeps us as tolerant while
/// still bounding the memory a hostile length field can make the JSON parser use.
inline constexpr std::uint64_t max_header_bytes = std::uint64_t{100} << 20;

/// A valid header nests three deep (header object, tensor entry, shape array). The bound is
/// checked before nlohmann sees the text so no input can drive its recursion (or ours) deep.
inline constexpr int max_json_depth = 8;

inline bool checked_mul(std::uint64_t a, std::uint64_t b, std::uint64_t& out) noexcept {
  if (a != 0 && b > std::numeric_limits<std::uint64_t>::max() / a) return false;
  out = a * b;
  return true;
}

/// Position of the first byte that breaks strict UTF-8 (overlong forms, surrogates and code
/// points above U+10FFFF included), or nullopt when the text is valid.
inline std::optional<std::size_t> find_invalid_utf8(std::string_view s) noexcept {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const std::size_t n = s.size();
  std::size_t i = 0;
  while (i < n) {
    const unsigned c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    std::size_t len = 0;
    unsigned lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;  // overlong
      if (c == 0xED) hi = 0x9F;  // surrogates
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;  // overlong
      if (c == 0xF4) hi = 0x8F;  // above U+10FFFF
    } else {
      return i;
    }
    if (i + len > n) return i;
    if (p[i + 1] < lo || p[i + 1] > hi) return i;
    for (std::size_t k = 2; k < len; ++k)
      if (p[i + k] < 0x80 || p[i + k] > 0xBF) return i;
    i += len;
  }
  return std::nullopt;
}

/// Position of the bracket that first nests deeper than max_depth, ignoring brackets in strings.
inline std::optional<std::size_t> find_too_deep(std::string_view s, int max_depth) noexcept {
  int depth = 0;
  bool in_string = false, escaped = false;
  for (std::size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (in_string) {
      if (escaped)
        escaped = false;
      else if (c == '\\')
        escaped = true;
      else if (c == '"')
        in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      if (++depth > max_depth) return i;
    } else if (c == '}' || c == ']') {
      --depth;  // unbalanced text is the JSON parser's to report
    }
  }
  return std::nullopt;
}

inline std::string format_shape(std::span<const std::int64_t> shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

/// A JSON value as it appears in a message: compact and cut short.
inline std::string json_brief(const nlohmann::json& j) {
  std::string s = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  return s;
}

inline std::string in_quotes(std::string_view s) {
  // Appended piecewise: GCC 12 -O2 warns falsely (-Wrestrict, bug 105329) on "'" + std::string + "'".
  std::string out;
  out.reserve(s.size() + 2);
  out.push_back('\'');
  out.append(s);
  out.push_back('\'');
  return out;
}

inline std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diag = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

/// How many trailing dot-separated components a and b share ("layers.0.mlp.gate.weight" and
/// "layers.0.block_sparse_moe.gate.weight" share 2: gate, weight).
inline std::size_t common_suffix_components(std::string_view a, std::string_view b) {
  std::size_t n = 0;
  while (!a.empty() && !b.empty()) {
    const std::size_t da = a.rfind('.'), db = b.rfind('.');
    const std::string_view ca = da == std::string_view::npos ? a : a.substr(da + 1);
    const std::string_view cb = db == std::string_view::npos ? b : b.substr(db + 1);
    if (ca != cb) break;
    ++n;
    if (da == std::string_view::npos || db == std::string_view::npos) break;
    a = a.substr(0, da);
    b = b.substr(0, db);
  }
  return n;
}

/// Up to three names close to the one asked for, the nearest first. First, names within a few
/// edits (a typo). Then names that end like it (a wrong layer prefix: the file says
/// "mlp.gate.weight" where "block_sparse_moe.gate.weight" was asked for): at least two
/// trailing components in common, or the last one when it is not the generic "weight" or
/// "bias", ranked by components shared, then by edits.
template <class Map>
std::vector<std::string> close_names(const Map& tensors, std::string_view name) {
  if (tensors.size() > 20000) return {};  // keep the error path cheap on giant checkpoints
  const std::size_t limit = std::max<std::size_t>(2, name.size() / 4);
  std::vector<std::pair<std::size_t, std::string>> typos;
  std::vector<std::tuple<std::size_t, std::size_t, std::string>> suffixes;  // (-shared, edits, name)
  const std::size_t last_dot = name.rfind('.');
  const std::string_view last = last_dot == std::string_view::npos ? name : name.substr(last_dot + 1);
  const std::size_t min_shared = (last == "weight" || last == "bias") ? 2 : 1;
  for (const auto& [candidate, info] : tensors) {
    const std::size_t gap = candidate.size() > name.size() ? candidate.size() - name.size()
                                                           : name.size() - candidate.size();
    if (gap <= limit) {
      const std::size_t d = edit_distance(candidate, name);
      if (d <= limit) {
        typos.emplace_back(d, candidate);
        continue;
      }
    }
    const std::size_t shared = common_suffix_components(candidate, name);
    if (shared >= min_shared)
      suffixes.emplace_back(std::numeric_limits<std::size_t>::max() - shared, edit_distance(candidate, name), candidate);
  }
  std::sort(typos.begin(), typos.end());
  std::sort(suffixes.begin(), suffixes.end());
  std::vector<std::string> out;
  for (std::size_t i = 0; i < typos.size() && out.size() < 3; ++i) out.push_back(typos[i].second);
  for (std::size_t i = 0; i < suffixes.size() && out.size() < 3; ++i) out.push_back(std::get<2>(suffixes[i]));
  return out;
}

/// "; close names: 'a', 'b'", or "" when there are none.
inline std::string close_names_clause(const std::vector<std::string>& close) {
  if (close.empty()) return {};
  std::string s = "; close names: ";
  for (std::size_t i = 0; i < close.size(); ++i) s += (i ? ", " : "") + in_quotes(close[i]);
  return s;
}

inline std::string dtype_list() {
  std::string s;
  for (const auto& e : dtype_table) {
    if (!s.empty()) s += ", ";
    s += e.name;
  }
  return s;
}

template <class S>
constexpr std::string_view scalar_name() {
  if constexpr (std::is_same_v<S, float>)
    return "float";
  else if constexpr (std::is_same_v<S, double>)
    return "double";
  else
    return "std::int64_t";
}

template <class S>
constexpr DType dtype_of() {
  if constexpr (std::is_same_v<S, float>)
    return DType::F32;
  else if constexpr (std::is_same_v<S, double>)
    return DType::F64;
  else
    return DType::I64;
}

/// Converts n little-endian elements of type Stored at src (any alignment) to Out.
template <class Stored, class Out, class Convert>
void convert_elements(const std::byte* src, Out* out, std::size_t n, Convert convert) {
  for (std::size_t i = 0; i < n; ++i) {
    Stored v;
    std::memcpy(&v, src + i * sizeof(Stored), sizeof(Stored));
    out[i] = convert(v);
  }
}

}  // namespace detail

namespace detail {

/// Parses JSON text as nlohmann does, but refuses a key that appears twice in one object (nlohmann
/// keeps the last without a word; a tensor listed twice, with two dtypes or under two shards,
/// must be an error). `what` names the document in messages ("header", "index"). Throws
/// FormatError(file, ...).
inline nlohmann::json parse_json_unique_keys(std::string_view text, const std::string& file, const std::string& what) {
  using nlohmann::json;
  struct OpenObject {
    std::set<std::string, std::less<>> keys;
    std::string owner;  // the key this object is the value of ("" for the top level)
  };
  std::vector<OpenObject> open_objects;
  std::string last_key;
  std::optional<std::string> duplicate;
  const json::parser_callback_t callback = [&](int, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start:
        open_objects.push_back({{}, open_objects.empty() ? std::string() : last_key});
        break;
      case json::parse_event_t::object_end:
        if (!open_objects.empty()) open_objects.pop_back();
        break;
      case json::parse_event_t::key:
        last_key = parsed.get<std::string>();
        if (!duplicate && !open_objects.empty() && !open_objects.back().keys.insert(last_key).second) {
          const std::string& owner = open_objects.back().owner;
          duplicate = what + ": expected each key once per object, got " + in_quotes(last_key) + " twice" +
                      (open_objects.size() == 1 ? std::string(" at the top level") : " in " + in_quotes(owner));
        }
        break;
      default:
        break;
    }
    return true;
  };
  json doc;
  try {
    doc = json::parse(text.begin(), text.end(), callback);
  } catch (const json::exception& e) {
    throw FormatError(file, what + ": expected JSON, got a parse error: " + e.what());
  }
  if (duplicate) throw FormatError(file, *duplicate);
  return doc;
}

[[noreturn]] inline void throw_format_error(const std::string& file, const std::string& message) {
  throw FormatError(file, message);
}

/// A validated safetensors header: its tensors, its __metadata__, and where the furthest
/// tensor ends in the data section.
struct ParsedHeader {
  std::map<std::string, TensorInfo, std::less<>> tensors;
  std::map<std::string, std::string, std::less<>> metadata;
  std::uint64_t data_end = 0;
};

/// Validates a safetensors header (its JSON text, without the length field) against a data
/// section of data_size bytes: UTF-8, nesting depth, duplicate keys, dtypes, shapes, byte
/// counts, ranges inside the data section and disjoint. The one validation SafetensorsFile
/// and LazySafetensorsFile share. Throws FormatError(file, ...).
inline ParsedHeader parse_safetensors_header(std::string_view text, std::uint64_t data_size, const std::string& file) {
  using nlohmann::json;
  ParsedHeader out;
  if (auto bad = detail::find_invalid_utf8(text)) {
    std::ostringstream os;
    os << "header: expected UTF-8 text, got the invalid byte 0x" << std::hex
       << static_cast<unsigned>(static_cast<unsigned char>(text[*bad])) << std::dec << " at header byte " << *bad;
    throw_format_error(file, os.str());
  }
  if (auto at = detail::find_too_deep(text, detail::max_json_depth))
    throw_format_error(file, "header: expected JSON nested at most " + std::to_string(detail::max_json_depth) +
                 " deep, got deeper nesting at header byte " + std::to_string(*at));

  const json header = parse_json_unique_keys(text, file, "header");
  if (!header.is_object())
    throw_format_error(file, std::string("header: expected a JSON object, got ") + header.type_name() + " " + json_brief(header));

  for (const auto& [key, value] : header.items()) {
    if (key == "__metadata__") {
      if (!value.is_object())
        throw_format_error(file, "__metadata__: expected an object mapping strings to strings, got " + json_brief(value));
      for (const auto& [mk, mv] : value.items()) {
        if (!mv.is_string())
          throw_format_error(file, "__metadata__[" + in_quotes(mk) + "]: expected a string, got " + json_brief(mv));
        out.metadata.emplace(mk, mv.get<std::string>());
      }
      continue;
    }

    const std::string where = "tensor " + in_quotes(key) + ": ";
    if (!value.is_object())
      throw_format_error(file, where + "expected an object with dtype, shape and data_offsets, got " + json_brief(value));
    for (const char* field : {"dtype", "shape", "data_offsets"})
      if (!value.contains(field)) throw_format_error(file, where + "expected a field '" + field + "', got none");

    TensorInfo t;
    t.name = key;

    const json& dtype = value.at("dtype");
    if (!dtype.is_string()) throw_format_error(file, where + "dtype: expected a string, got " + json_brief(dtype));
    const auto parsed_dtype = parse_dtype(dtype.get_ref<const std::string&>());
    if (!parsed_dtype)
      throw_format_error(file, where + "dtype: expected one of " + detail::dtype_list() + ", got " + json_brief(dtype));
    t.dtype = *parsed_dtype;

    // A non-negative integer no larger than limit, or nullopt (negative, fractional, not a number).
    const auto as_count = [](const json& j, std::uint64_t limit) -> std::optional<std::uint64_t> {
      if (j.is_number_unsigned()) {
        const auto v = j.get<std::uint64_t>();
        if (v <= limit) return v;
      } else if (j.is_number_integer()) {
        if (j.get<std::int64_t>() == 0) return 0;  // "-0"
      }
      return std::nullopt;
    };

    const json& shape = value.at("shape");
    if (!shape.is_array())
      throw_format_error(file, where + "shape: expected an array of non-negative integers, got " + json_brief(shape));
    std::uint64_t numel = 1;
    for (std::size_t i = 0; i < shape.size(); ++i) {
      const auto dim = as_count(shape[i], static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()));
      if (!dim)
        throw_format_error(file, where + "shape[" + std::to_string(i) + "]: expected a non-negative integer, got " +
                     json_brief(shape[i]));
      t.shape.push_back(static_cast<std::int64_t>(*dim));
      // Checked in order so that every prefix product, not only the whole, fits in an int64.
      if (!detail::checked_mul(numel, *dim, numel) ||
          numel > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
        throw_format_error(file, where + "shape: expected an element count below 2^63, got " + json_brief(shape) +
                     ", which overflows");
    }
    // Whole-byte dtypes multiply by the byte size so the overflow bound is the byte count's own;
    // the packed ones count bits and must land on a byte boundary.
    const std::size_t size = dtype_size(t.dtype);
    std::uint64_t nbytes = 0;
    if (!detail::checked_mul(numel, size != 0 ? size : dtype_bits(t.dtype), nbytes))
      throw_format_error(file, where + "shape: expected a byte count below 2^64, got " + std::to_string(numel) +
                   " elements of " + std::string(dtype_name(t.dtype)) + ", which overflows");
    if (size == 0) {
      if (nbytes % 8 != 0)
        throw_format_error(file, where + "shape: expected a whole number of bytes, got " + std::to_string(numel) +
                     " elements of " + std::string(dtype_name(t.dtype)) + " (" + std::to_string(nbytes) +
                     " bits)");
      nbytes /= 8;
    }

    const json& offsets = value.at("data_offsets");
    const std::string offsets_expected = "data_offsets: expected two non-negative integers [begin, end], got ";
    if (!offsets.is_array() || offsets.size() != 2) throw_format_error(file, where + offsets_expected + json_brief(offsets));
    const auto begin = as_count(offsets[0], std::numeric_limits<std::uint64_t>::max());
    const auto end = as_count(offsets[1], std::numeric_limits<std::uint64_t>::max());
    if (!begin || !end) throw_format_error(file, where + offsets_expected + json_brief(offsets));
    if (*begin > *end) throw_format_error(file, where + "data_offsets: expected begin <= end, got " + json_brief(offsets));
    if (*end > data_size)
      throw_format_error(file, where + "data_offsets: expected end <= " + std::to_string(data_size) +
                   " (the size of the data section), got " + json_brief(offsets));
    if (*end - *begin != nbytes)
      throw_format_error(file, where + "data_offsets: expected end - begin = " + std::to_string(nbytes) + " (shape " +
                   detail::format_shape(t.shape) + " of " + std::string(dtype_name(t.dtype)) + "), got " +
                   std::to_string(*end - *begin));
    t.begin = static_cast<std::size_t>(*begin);
    t.end = static_cast<std::size_t>(*end);
    out.data_end = std::max<std::uint64_t>(out.data_end, *end);
    out.tensors.emplace(key, std::move(t));
  }

  // Overlap: sort the non-empty ranges; each must start at or after the furthest end so far.
  std::vector<const TensorInfo*> ranges;
  for (const auto& [name, t] : out.tensors)
    if (t.end > t.begin) ranges.push_back(&t);
  std::sort(ranges.begin(), ranges.end(), [](const TensorInfo* a, const TensorInfo* b) {
    return std::tie(a->begin, a->end, a->name) < std::tie(b->begin, b->end, b->name);
  });
  const TensorInfo* reach = nullptr;  // the tensor reaching furthest so far
  for (const TensorInfo* t : ranges) {
    if (reach && t->begin < reach->end)
      throw_format_error(file, "tensor " + in_quotes(t->name) + ": data_offsets: expected a byte range disjoint from every " +
                   "other tensor, got [" + std::to_string(t->begin) + ", " + std::to_string(t->end) +
                   ") overlapping tensor " + in_quotes(reach->name) + " [" + std::to_string(reach->begin) + ", " +
                   std::to_string(reach->end) + ")");
    if (!reach || t->end > reach->end) reach = t;
  }
  return out;
}

}  // namespace detail

// ---------------------------------------------------------------------------------------------
// SafetensorsFile

inline SafetensorsFile SafetensorsFile::open(const std::filesystem::path& path) {
  const std::string display = path.string();
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    throw Error(display, ec ? "cannot open: " + ec.message() : std::string("cannot open: not a regular file"));
  const std::uintmax_t size = std::filesystem::file_size(path, ec);
  if (ec) throw Error(display, "cannot open: " + ec.message());
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(display, "cannot open for reading");
  std::vector<std::byte> bytes(static_cast<std::size_t>(size));
  if (size > 0) in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(size));
  if (static_cast<std::uintmax_t>(in.gcount()) != size)
    throw Error(display, "cannot read: expected " + std::to_string(size) + " bytes, got " +
                             std::to_string(in.gcount()));
  return from_bytes(std::move(bytes), display);
}

inline SafetensorsFile SafetensorsFile::from_bytes(std::vector<std::byte> bytes, std::string display_name) {
  SafetensorsFile f;
  f.display_name_ = std::move(display_name);
  f.bytes_ = std::move(bytes);
  f.parse_header();
  return f;
}

inline void SafetensorsFile::throw_format(const std::string& message) const {
  throw FormatError(display_name_, message);
}

inline void SafetensorsFile::throw_mismatch(const TensorInfo& t, const std::string& message) const {
  throw TensorMismatchError(display_name_, t.name, message);
}

inline void SafetensorsFile::parse_header() {
  using nlohmann::json;
  using detail::json_brief;
  using detail::in_quotes;

  if (bytes_.size() < 8)
    throw_format("header length: expected a file of at least 8 bytes (the length field), got " +
                 std::to_string(bytes_.size()) + " bytes");
  std::uint64_t header_len = 0;
  std::memcpy(&header_len, bytes_.data(), 8);
  const std::uint64_t rest = bytes_.size() - 8;
  if (header_len > detail::max_header_bytes)
    throw_format("header length: expected at most " + std::to_string(detail::max_header_bytes) +
                 " (100 MiB), got " + std::to_string(header_len));
  if (header_len > rest)
    throw_format("header length: expected at most " + std::to_string(rest) +
                 " (the bytes after the length field), got " + std::to_string(header_len));
  data_offset_ = 8 + static_cast<std::size_t>(header_len);
  const std::size_t data_size = bytes_.size() - data_offset_;

  const std::string_view text(reinterpret_cast<const char*>(bytes_.data()) + 8,
                              static_cast<std::size_t>(header_len));
  detail::ParsedHeader h = detail::parse_safetensors_header(text, data_size, display_name_);
  tensors_ = std::move(h.tensors);
  metadata_ = std::move(h.metadata);
}

inline bool SafetensorsFile::contains(std::string_view name) const { return tensors_.find(name) != tensors_.end(); }

inline const TensorInfo& SafetensorsFile::info(std::string_view name) const {
  const auto it = tensors_.find(name);
  if (it != tensors_.end()) return it->second;
  std::string message = "expected a tensor of this name, got none among the file's " +
                        std::to_string(tensors_.size()) + " tensors";
  message += detail::close_names_clause(close_names(name));
  throw MissingTensorError(display_name_, std::string(name), message);
}

inline std::vector<std::string> SafetensorsFile::close_names(std::string_view name) const {
  return detail::close_names(tensors_, name);
}

inline std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size());
  for (const auto& [name, t] : tensors_) out.push_back(name);
  return out;  // std::map iterates in sorted order
}

inline std::optional<std::string> SafetensorsFile::metadata(std::string_view key) const {
  const auto it = metadata_.find(key);
  if (it == metadata_.end()) return std::nullopt;
  return it->second;
}

inline std::span<const std::byte> SafetensorsFile::raw(std::string_view name) const {
  const TensorInfo& t = info(name);
  return std::span<const std::byte>(bytes_).subspan(data_offset_ + t.begin, t.nbytes());
}

template <ReadableScalar S>
void SafetensorsFile::convert_into(const TensorInfo& t, S* out, std::size_t first, std::size_t n) const {
  if (n == 0) return;
  if (first > static_cast<std::size_t>(t.numel()) || n > static_cast<std::size_t>(t.numel()) - first)
    throw_mismatch(t, "internal error: elements [" + std::to_string(first) + ", " + std::to_string(first + n) +
                          ") outside the tensor's " + std::to_string(t.numel()));
  const std::byte* src = bytes_.data() + data_offset_ + t.begin + first * dtype_size(t.dtype);
  const auto same = [](auto v) { return static_cast<S>(v); };
  if constexpr (std::is_floating_point_v<S>) {
    switch (t.dtype) {
      case DType::F32:
        if constexpr (std::is_same_v<S, float>)
          std::memcpy(out, src, n * sizeof(float));
        else
          detail::convert_elements<float>(src, out, n, same);
        return;
      case DType::F64:
        if constexpr (std::is_same_v<S, double>)
          std::memcpy(out, src, n * sizeof(double));
        else
          detail::convert_elements<double>(src, out, n, same);
        return;
      case DType::F16:
        detail::convert_elements<std::uint16_t>(src, out, n, [](std::uint16_t h) { return static_cast<S>(f16_to_float(h)); });
        return;
      case DType::BF16:
        detail::convert_elements<std::uint16_t>(src, out, n, [](std::uint16_t b) { return static_cast<S>(bf16_to_float(b)); });
        return;
      default:
        break;
    }
  } else {
    switch (t.dtype) {
      case DType::I64:
        std::memcpy(out, src, n * sizeof(std::int64_t));
        return;
      case DType::I32: detail::convert_elements<std::int32_t>(src, out, n, same); return;
      case DType::I16: detail::convert_elements<std::int16_t>(src, out, n, same); return;
      case DType::I8: detail::convert_elements<std::int8_t>(src, out, n, same); return;
      case DType::U32: detail::convert_elements<std::uint32_t>(src, out, n, same); return;
      case DType::U16: detail::convert_elements<std::uint16_t>(src, out, n, same); return;
      case DType::U8: detail::convert_elements<std::uint8_t>(src, out, n, same); return;
      default:
        break;
    }
  }
  // Callers check the dtype first (before allocating); reaching here is a library bug.
  throw_mismatch(t, "internal error: no conversion from " + std::string(dtype_name(t.dtype)));
}

namespace detail {

template <class S>
void check_dtype_readable(const std::string& file, const TensorInfo& t) {
  if constexpr (std::is_floating_point_v<S>) {
    if (!is_convertible_float(t.dtype))
      throw TensorMismatchError(file, t.name,
                                "expected a floating dtype (F64, F32, F16, BF16) to read as " +
                                    std::string(scalar_name<S>()) + ", got " + std::string(dtype_name(t.dtype)));
  } else {
    if (!is_convertible_integer(t.dtype))
      throw TensorMismatchError(file, t.name,
                                "expected an integer dtype (I64, I32, I16, I8, U32, U16, U8) to read as " +
                                    std::string(scalar_name<S>()) + ", got " + std::string(dtype_name(t.dtype)));
  }
}

}  // namespace detail

template <ReadableScalar S>
std::vector<S> SafetensorsFile::read(std::string_view name) const {
  const TensorInfo& t = info(name);
  detail::check_dtype_readable<S>(display_name_, t);
  std::vector<S> out(static_cast<std::size_t>(t.numel()));
  convert_into(t, out.data());
  return out;
}

inline const TensorInfo& SafetensorsFile::info_of_shape(std::string_view name,
                                                       std::span<const std::int64_t> expected_shape) const {
  const TensorInfo& t = info(name);
  if (!std::equal(t.shape.begin(), t.shape.end(), expected_shape.begin(), expected_shape.end()))
    throw_mismatch(t, "expected shape " + detail::format_shape(expected_shape) + ", got " +
                          detail::format_shape(t.shape));
  return t;
}

template <ReadableScalar S>
std::vector<S> SafetensorsFile::read(std::string_view name, std::span<const std::int64_t> expected_shape) const {
  (void)info_of_shape(name, expected_shape);
  return read<S>(name);
}

template <ReadableScalar S>
std::vector<S> SafetensorsFile::read_leading(std::string_view name, std::span<const std::int64_t> expected_shape,
                                             Index first, Index count) const {
  const TensorInfo& t = info_of_shape(name, expected_shape);
  if (t.shape.empty() || first < 0 || count < 0 || first > t.shape[0] || count > t.shape[0] - first)
    moe::detail::throw_invalid("SafetensorsFile::read_leading()", "entries [first, first + count) of the leading dimension",
                               moe::detail::concat("inside [0, ", t.shape.empty() ? 0 : t.shape[0], ") of '", t.name, "'"),
                               moe::detail::concat("[", first, ", ", first + count, ")"));
  detail::check_dtype_readable<S>(display_name_, t);
  std::size_t inner = 1;
  for (std::size_t i = 1; i < t.shape.size(); ++i) inner *= static_cast<std::size_t>(t.shape[i]);
  std::vector<S> out(static_cast<std::size_t>(count) * inner);
  convert_into(t, out.data(), static_cast<std::size_t>(first) * inner, out.size());
  return out;
}

template <ReadableScalar S>
RowMatrix<S> SafetensorsFile::read_matrix(std::string_view name, Index rows, Index cols) const {
  if (rows < 0 || cols < 0)
    moe::detail::throw_invalid("SafetensorsFile::read_matrix()", "rows and cols", "non-negative",
                               moe::detail::concat(rows, ", ", cols));
  const TensorInfo& t = info(name);
  const std::int64_t want[2] = {rows, cols};
  if (!std::equal(t.shape.begin(), t.shape.end(), std::begin(want), std::end(want)))
    throw_mismatch(t, "expected shape " + detail::format_shape(want) + ", got " + detail::format_shape(t.shape));
  detail::check_dtype_readable<S>(display_name_, t);
  RowMatrix<S> m(rows, cols);
  convert_into(t, m.data());
  return m;
}

template <ReadableScalar S>
Vector<S> SafetensorsFile::read_vector(std::string_view name, Index n) const {
  if (n < 0) moe::detail::throw_invalid("SafetensorsFile::read_vector()", "n", "non-negative", n);
  const TensorInfo& t = info(name);
  const std::int64_t want[1] = {n};
  if (!std::equal(t.shape.begin(), t.shape.end(), std::begin(want), std::end(want)))
    throw_mismatch(t, "expected shape " + detail::format_shape(want) + ", got " + detail::format_shape(t.shape));
  detail::check_dtype_readable<S>(display_name_, t);
  Vector<S> v(n);
  convert_into(t, v.data());
  return v;
}

template <ReadableScalar S>
RowMatrix<S> SafetensorsFile::read_rows(std::string_view name, Index rows, Index cols) const {
  if (rows < -1 || cols < 0)
    moe::detail::throw_invalid("SafetensorsFile::read_rows()", "rows and cols", "rows >= -1 and cols >= 0",
                               moe::detail::concat(rows, ", ", cols));
  const TensorInfo& t = info(name);
  // The header check made every prefix product of the shape fit in an int64.
  std::int64_t leading = 1;
  for (std::size_t i = 0; i + 1 < t.shape.size(); ++i) leading *= t.shape[i];
  if (t.shape.empty() || t.shape.back() != cols || (rows != -1 && leading != rows)) {
    const std::string first = rows == -1 ? std::string("*") : std::to_string(rows);
    throw_mismatch(t, "expected rank >= 1 with last dimension " + std::to_string(cols) +
                          (rows == -1 ? std::string()
                                      : " and leading dimensions multiplying to " + std::to_string(rows)) +
                          " (read as [" + first + ", " + std::to_string(cols) + "]), got shape " +
                          detail::format_shape(t.shape));
  }
  detail::check_dtype_readable<S>(display_name_, t);
  RowMatrix<S> m(static_cast<Index>(leading), cols);
  convert_into(t, m.data());
  return m;
}

// ---------------------------------------------------------------------------------------------
// SafetensorsWriter

inline SafetensorsWriter& SafetensorsWriter::metadata(std::string key, std::string value) {
  // Checked here so the failure points at the call that brought the bad text, not at to_bytes.
  if (detail::find_invalid_utf8(key) || detail::find_invalid_utf8(value))
    moe::detail::throw_invalid("SafetensorsWriter::metadata()", "key and value", "UTF-8 text",
                               "invalid UTF-8 for key '" + key + "'");
  metadata_.insert_or_assign(std::move(key), std::move(value));
  return *this;
}

inline void SafetensorsWriter::check_new(const std::string& name, const std::vector<std::int64_t>& shape,
                                         DType dtype, std::size_t nbytes, std::string_view where) const {
  if (name == "__metadata__")
    moe::detail::throw_invalid(where, "tensor name", "anything but the reserved '__metadata__'", name);
  if (detail::find_invalid_utf8(name)) moe::detail::throw_invalid(where, "tensor name", "UTF-8 text", "invalid UTF-8");
  if (tensors_.find(name) != tensors_.end())
    moe::detail::throw_invalid(where, "tensor name", "a name not added before", "'" + name + "' again");
  std::uint64_t bits = dtype_bits(dtype);
  for (std::int64_t d : shape) {
    if (d < 0)
      moe::detail::throw_invalid(where, "shape", "non-negative dimensions", detail::format_shape(shape));
    if (!detail::checked_mul(bits, static_cast<std::uint64_t>(d), bits))
      moe::detail::throw_invalid(where, "shape", "a byte count below 2^64", detail::format_shape(shape));
  }
  if (bits % 8 != 0 || bits / 8 != nbytes)
    moe::detail::throw_invalid(where, "byte count",
                               moe::detail::concat(bits / 8.0, " (shape ", detail::format_shape(shape), " of ",
                                                   dtype_name(dtype), ")"),
                               nbytes);
}

template <WritableScalar S>
SafetensorsWriter& SafetensorsWriter::add(std::string name, std::vector<std::int64_t> shape, std::span<const S> data) {
  check_new(name, shape, detail::dtype_of<S>(), data.size_bytes(), "SafetensorsWriter::add()");
  std::vector<std::byte> bytes(data.size_bytes());
  if (!bytes.empty()) std::memcpy(bytes.data(), data.data(), bytes.size());
  tensors_.emplace(std::move(name), Entry{detail::dtype_of<S>(), std::move(shape), std::move(bytes)});
  return *this;
}

inline SafetensorsWriter& SafetensorsWriter::add_raw(std::string name, DType dtype, std::vector<std::int64_t> shape,
                                                     std::vector<std::byte> bytes) {
  check_new(name, shape, dtype, bytes.size(), "SafetensorsWriter::add_raw()");
  tensors_.emplace(std::move(name), Entry{dtype, std::move(shape), std::move(bytes)});
  return *this;
}

inline std::vector<std::byte> SafetensorsWriter::to_bytes() const {
  using nlohmann::json;
  std::vector<std::pair<const std::string*, const Entry*>> order;
  for (const auto& [name, e] : tensors_) order.emplace_back(&name, &e);
  std::stable_sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
    return dtype_bits(a.second->dtype) > dtype_bits(b.second->dtype);  // names stay sorted within a size
  });

  json header = json::object();
  std::size_t offset = 0;
  for (const auto& [name, e] : order) {
    header[*name] = {{"dtype", std::string(dtype_name(e->dtype))},
                     {"shape", e->shape},
                     {"data_offsets", {offset, offset + e->bytes.size()}}};
    offset += e->bytes.size();
  }
  if (!metadata_.empty()) {
    json meta = json::object();
    for (const auto& [k, v] : metadata_) meta[k] = v;
    header["__metadata__"] = std::move(meta);
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');

  std::vector<std::byte> out(8 + text.size() + offset);
  const std::uint64_t len = text.size();
  std::memcpy(out.data(), &len, 8);
  std::memcpy(out.data() + 8, text.data(), text.size());
  std::byte* data = out.data() + 8 + text.size();
  for (const auto& [name, e] : order) {
    if (!e->bytes.empty()) std::memcpy(data, e->bytes.data(), e->bytes.size());
    data += e->bytes.size();
  }
  return out;
}

namespace detail {
/// Writes bytes to path, replacing the file; throws Error naming it if it cannot be opened or
/// fully written. Every writer of the library (safetensors, GGUF, the sharded index) ends here.
inline void write_file(const std::filesystem::path& path, const void* data, std::size_t size) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw Error(path.string(), "cannot open for writing");
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
  out.flush();
  if (!out) throw Error(path.string(), "cannot write " + std::to_string(size) + " bytes");
}
}  // namespace detail

inline void SafetensorsWriter::save(const std::filesystem::path& path) const {
  const std::vector<std::byte> bytes = to_bytes();
  detail::write_file(path, bytes.data(), bytes.size());
}

inline std::vector<std::string> SafetensorsWriter::names() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size());
  for (const auto& [name, e] : tensors_) out.push_back(name);
  return out;
}

inline std::uint64_t SafetensorsWriter::data_size() const noexcept {
  std::uint64_t n = 0;
  for (const auto& [name, e] : tensors_) n += e.bytes.size();
  return n;
}

inline SafetensorsWriter& SafetensorsWriter::move_tensor(std::string_view name, SafetensorsWriter& into) {
  const auto it = tensors_.find(name);
  if (it == tensors_.end())
    moe::detail::throw_invalid("SafetensorsWriter::move_tensor()", "tensor name", "a name added before",
                               "'" + std::string(name) + "'");
  if (into.tensors_.find(name) != into.tensors_.end())
    moe::detail::throw_invalid("SafetensorsWriter::move_tensor()", "tensor name", "a name the target lacks",
                               "'" + std::string(name) + "' in both");
  into.tensors_.insert(tensors_.extract(it));  // the node moves: no copy of the bytes
  return *this;
}

}  // namespace moe::io

#endif  // MOE_IO_SAFETENSORS_IMPL_HPP
