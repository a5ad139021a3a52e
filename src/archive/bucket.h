// The archive as laid out in a bucket (<prefix><node>/<yyyy>/<mm>/<dd>/<file>),
// and local mirrors of it for `archive verify s3://` and `archive search
// s3://`: they reuse the directory checks and search unchanged.
#pragma once

#include "archive/s3.h"
#include "archive/verify.h"

#include <map>
#include <optional>
#include <string>
#include <vector>

namespace sightline::archive {

struct BucketObject {
  std::string node, file, key;
  std::vector<s3::ObjectVersion> versions;  // data versions, newest first as S3 lists them
  const s3::ObjectVersion& first() const { return versions.back(); }  // the one the shipper uploaded
};

struct BucketListing {
  std::map<std::string, BucketObject> objects;  // by key
  std::vector<Finding> findings;  // objects outside the layout, delete markers (segment = "<node>/<file>")
  std::uint64_t versions = 0;     // listed, delete markers included
  std::map<std::string, std::vector<const BucketObject*>> by_node() const;
};

// Every version under the client's prefix. Node and date components are
// checked here: nothing listed can name a path outside a mirror directory.
std::optional<BucketListing> list_bucket(s3::Client& client, std::string* error);

// The first version of `o` into DIR/<file> (streamed).
std::optional<std::string> download_first(s3::Client& client, const BucketObject& o, const std::string& dir);

// A client for "s3://bucket[/prefix]": `endpoint` (default
// https://s3.REGION.amazonaws.com), path style unless virtual_host.
std::optional<s3::ClientOptions> client_for_s3_url(const std::string& url, const std::string& endpoint,
                                                   const std::string& region, const std::string& credentials_file,
                                                   const std::string& ca_file, bool virtual_host, std::string* why);

}  // namespace sightline::archive
