// `sightline archive verify`: checks every signature, digest and chain link
// of an archive directory and names each modified, deleted, reordered or
// inserted record or segment. The signed manifest of a sealed segment is the
// ground truth its records are classified against.
#pragma once

#include "archive/format.h"
#include "tls/ossl.h"

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sightline::archive {

enum class FindingKind {
  modified,          // a record (or the segment file) differs from what was sealed
  deleted,           // a record listed in the manifest is not in the segment
  inserted,          // a record (or bytes) in the segment that the manifest does not list
  reordered,         // a listed record found out of its sealed order
  truncated,         // the segment ends inside a gzip member
  bad_signature,     // manifest signature missing, invalid or by another key
  bad_manifest,      // signed manifest unreadable or inconsistent with itself
  missing_manifest,  // a sealed segment without manifest
  segment_deleted,   // a sealed segment missing from the writer's sequence
  chain_broken,      // records that do not chain (checked without a manifest)
  unsealed,          // an open segment (live or crashed writer): a note, not a problem
  pruned,            // a segment deleted by retention, vouched for by a signed tombstone: a note
};
std::string_view to_string(FindingKind k);

struct Finding {
  FindingKind kind;
  std::string segment;  // file name
  std::optional<std::uint64_t> seq;     // record's writer-wide number
  std::optional<std::uint64_t> offset;  // of its gzip member in the segment
  std::string record_id;
  std::string detail;
  bool problem() const { return kind != FindingKind::unsealed && kind != FindingKind::pruned; }
};
// One line: "modified  SEGMENT record 5 @1234 <urn:uuid:..>: detail"
std::string format_finding(const Finding& f);

struct Report {
  std::vector<Finding> findings;
  std::uint64_t segments = 0;
  std::uint64_t records = 0;
  std::size_t problems() const;
  bool intact() const { return problems() == 0; }
};

// `public_key`: the archive key (public, or private whose public half is used).
// An unreadable directory is reported as an error, not as findings. `path` is
// an archive directory (segments, tombstones and any exports in it), or one
// export file (FILE.warc.gz next to its export manifest).
std::optional<Report> verify_archive(const std::string& path, EVP_PKEY* public_key, std::string* error);

// DIR/SEGMENT's manifest if its signature verifies by `key`; otherwise nullopt,
// with the finding it amounts to (missing_manifest, bad_signature,
// bad_manifest) and why.
std::optional<Manifest> load_trusted_manifest(const std::string& dir, const std::string& segment, EVP_PKEY* key,
                                              FindingKind* kind, std::string* why);

}  // namespace sightline::archive
