// Whether a file opened for reading is still the file that was opened: the check the readers
// that keep a file open (LazySafetensorsFile, GgufFile's mapping) make around every read, so a
// file truncated, rewritten, renamed, removed or replaced meanwhile is an error naming the file
// and the tensor, never stale bytes or a SIGBUS (docs/store.md#faults).
#ifndef MOE_IO_FILE_IDENTITY_HPP
#define MOE_IO_FILE_IDENTITY_HPP

#include <moe/io/error.hpp>

#include <sys/stat.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>
#include <string_view>

namespace moe::io::detail {

/// What fstat said of an open file, and the absolute path it was opened by.
struct FileIdentity {
  std::filesystem::path path;
  std::uint64_t size = 0, device = 0, inode = 0;
  std::int64_t mtime_s = 0, mtime_ns = 0, ctime_s = 0, ctime_ns = 0;

  /// The identity of fd, opened by path; throws Error(display) if fstat fails.
  static FileIdentity of(int fd, const std::filesystem::path& path, const std::string& display) {
    struct stat st {};
    if (::fstat(fd, &st) != 0) throw Error(display, std::string("cannot stat: ") + std::strerror(errno));
    FileIdentity id;
    id.path = std::filesystem::absolute(path);  // still right if the working directory changes
    id.size = static_cast<std::uint64_t>(st.st_size);
    id.device = static_cast<std::uint64_t>(st.st_dev);
    id.inode = static_cast<std::uint64_t>(st.st_ino);
    id.mtime_s = st.st_mtim.tv_sec;
    id.mtime_ns = st.st_mtim.tv_nsec;
    id.ctime_s = st.st_ctim.tv_sec;
    id.ctime_ns = st.st_ctim.tv_nsec;
    return id;
  }

  /// Throws TensorError(display, tensor) unless fd is still this file: at least `required`
  /// bytes ("file truncated"), its path naming the same device and inode ("file renamed or
  /// removed", "file replaced"), and the same size and modification and status change times
  /// ("file rewritten"). A rewrite within one tick of the file system's clock that keeps the
  /// size (and the times) is the one change it cannot see.
  void check(int fd, const std::string& display, std::string_view tensor, std::uint64_t required) const {
    const std::string name(tensor);
    struct stat st {};
    if (::fstat(fd, &st) != 0) throw TensorError(display, name, std::string("cannot stat: ") + std::strerror(errno));
    const auto now = static_cast<std::uint64_t>(st.st_size);
    if (now < required)
      throw TensorError(display, name,
                        "file truncated: expected at least " + std::to_string(required) +
                            " bytes (the header's data section), got " + std::to_string(now));
    // The path first: a rename or an unlink changes the status change time as well.
    struct stat at_path {};
    if (::stat(path.c_str(), &at_path) != 0)
      throw TensorError(display, name,
                        std::string("file renamed or removed since it was opened: expected the path to name it, got ") +
                            std::strerror(errno));
    if (static_cast<std::uint64_t>(at_path.st_dev) != device || static_cast<std::uint64_t>(at_path.st_ino) != inode)
      throw TensorError(display, name,
                        "file replaced since it was opened: expected the path to name inode " + std::to_string(inode) +
                            ", got inode " + std::to_string(at_path.st_ino) + " (reopen the checkpoint)");
    if (now != size || st.st_mtim.tv_sec != mtime_s || st.st_mtim.tv_nsec != mtime_ns || st.st_ctim.tv_sec != ctime_s ||
        st.st_ctim.tv_nsec != ctime_ns)
      throw TensorError(display, name,
                        "file rewritten since it was opened: expected size " + std::to_string(size) +
                            " and modification time " + std::to_string(mtime_s) + "." + std::to_string(mtime_ns) +
                            " (and the status change time it had), got size " + std::to_string(now) + " and " +
                            std::to_string(st.st_mtim.tv_sec) + "." + std::to_string(st.st_mtim.tv_nsec) +
                            " (reopen the checkpoint)");
  }
};

}  // namespace moe::io::detail

#endif  // MOE_IO_FILE_IDENTITY_HPP
