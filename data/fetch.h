// `lockstep data fetch`: download the official files and verify their published MD5 checksums.
// The base URL is overridable (--mirror URL or LOCKSTEP_DATA_MIRROR), e.g. file:///srv/mirror/ or
// http://127.0.0.1:8000/, which is how the tests exercise it without internet.
#pragma once

#include <ostream>
#include <string>
#include <vector>

#include "data/convert.h"

namespace lockstep::data {

struct RemoteFile {
  std::string name;  // file name under the base URL and in the target folder
  std::string md5;   // published checksum (lowercase hex)
};

struct FetchSpec {
  std::string name;
  std::string base_url;            // ends with '/'
  std::vector<RemoteFile> files;
  bool extract = false;            // files are .tar.gz archives to unpack into the target folder
  std::string convert_src_hint;    // the --src to pass to `lockstep data convert` afterwards (relative to DIR)
};

FetchSpec fetch_spec(SourceFormat f);

// Download every file of `spec` into `dir` (created if needed), verify MD5s, unpack archives.
// Files already present with the right checksum are not downloaded again. A file that fails is
// removed. `mirror` (if non-empty) replaces spec.base_url. Returns the paths written.
std::vector<std::string> fetch(const FetchSpec& spec, const std::string& dir, const std::string& mirror,
                               std::ostream* log = nullptr);

// Download one URL to `path` (via `path`.part, renamed on success). DataError on failure.
void download(const std::string& url, const std::string& path);
// Unpack a .tar.gz into `dir`, refusing absolute paths and "..". Returns the files written.
std::vector<std::string> extract_tar(const std::string& archive, const std::string& dir);

}  // namespace lockstep::data
