// Replacing a file whole: what a reader finds at the path is the old file or the new one, never
// a half-written one (a crash, a full disk, an interrupted run).
#pragma once

#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>

#include "blockdiff/core/error.hpp"

namespace blockdiff::io {

//! Calls `write(std::ofstream&)` on a file beside `path`, then renames it over `path`. A failed
//! write or rename leaves `path` as it was, removes the partial file and throws, naming it.
template <class Write>
void replace_file(const std::filesystem::path& path, Write&& write, std::ios::openmode mode = std::ios::out) {
  const std::filesystem::path tmp = path.string() + ".tmp";
  bool ok = false;
  {
    std::ofstream out(tmp, mode | std::ios::trunc);
    require(out.good(), tmp.string(), ": cannot open for writing");
    write(out);
    out.flush();
    ok = out.good();
  }
  std::error_code ec;
  if (!ok) {
    std::filesystem::remove(tmp, ec);
    fail(path.string(), ": write failed (the file there, if any, is unchanged)");
  }
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    const std::string why = ec.message();
    std::filesystem::remove(tmp, ec);
    fail(path.string(), ": cannot replace it with ", tmp.string(), ": ", why);
  }
}

}  // namespace blockdiff::io
