// `sightline archive verify s3://bucket/prefix`: every node's shipped
// segments, checked like a local directory (signatures, digests, chains),
// plus what only the bucket can show: a key with more than one version (a
// version uploaded over the archived one), and a version a later manifest
// recorded (Manifest::shipped) that is gone or differs.
#pragma once

#include "archive/s3.h"
#include "archive/verify.h"

#include <optional>
#include <string>
#include <vector>

namespace sightline::archive {

struct S3Report {
  std::vector<Finding> findings;  // segment names are "<node>/<file>"
  std::vector<std::string> nodes;
  std::uint64_t objects = 0;  // object versions listed
  std::uint64_t segments = 0;
  std::uint64_t records = 0;
  std::size_t problems() const;
  bool intact() const { return problems() == 0; }
};

// Downloads the archive's versions into `work_dir` (one directory per node;
// left for the caller to remove) and checks them with `public_key`.
std::optional<S3Report> verify_s3(s3::Client& client, EVP_PKEY* public_key, const std::string& work_dir,
                                  std::string* error);

}  // namespace sightline::archive
