// Exceptions thrown by the safetensors reader and writer.
//
// Every message reads
//   "moe::io: file '<file>': <field or tensor>: expected <what>, got <what came>"
// so a user can fix a checkpoint (or the code asking for it) from the text alone.
#ifndef MOE_IO_ERROR_HPP
#define MOE_IO_ERROR_HPP

#include <stdexcept>
#include <string>
#include <utility>

namespace moe::io {

/// Base of every moe::io exception; catch this to handle any unreadable or unsuitable file.
class Error : public std::runtime_error {
 public:
  Error(std::string file, const std::string& message)
      : std::runtime_error("moe::io: file '" + file + "': " + message), file_(std::move(file)) {}

  /// The file as the caller named it (a path, or the display name given to from_bytes).
  [[nodiscard]] const std::string& file() const noexcept { return file_; }

 private:
  std::string file_;
};

/// The file itself is malformed: header length, JSON, dtype string, shape, offsets, metadata.
class FormatError : public Error {
 public:
  using Error::Error;
};

/// Errors about one named tensor; tensor() gives the name so callers need not parse what().
class TensorError : public Error {
 public:
  TensorError(std::string file, std::string tensor, const std::string& message)
      : Error(std::move(file), "tensor '" + tensor + "': " + message), tensor_(std::move(tensor)) {}

  [[nodiscard]] const std::string& tensor() const noexcept { return tensor_; }

 private:
  std::string tensor_;
};

/// A requested tensor name is absent from the file.
class MissingTensorError : public TensorError {
 public:
  using TensorError::TensorError;
};

/// The tensor is well formed but its dtype or shape does not fit the requested read.
class TensorMismatchError : public TensorError {
 public:
  using TensorError::TensorError;
};

}  // namespace moe::io

#endif  // MOE_IO_ERROR_HPP
