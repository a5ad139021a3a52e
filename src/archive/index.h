// Retrieval: a per-segment index sidecar (derived data, never trusted for
// content), the search filters over it, and reading one exchange's records
// back with their digests checked against the segment's signed manifest.
// docs/archive.md, "Search, show and export", describes formats and flags.
#pragma once

#include "archive/format.h"
#include "tls/ossl.h"

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace sightline::archive {

inline constexpr std::string_view kIndexSuffix = ".idx";  // after the sealed name
inline constexpr std::string_view kIndexFormat = "sightline-archive-index/1";

// Where one record of an exchange lies in its segment.
struct IndexedRecord {
  std::string type;
  std::string id;
  std::uint64_t seq = 0;
  std::uint64_t offset = 0;
  std::uint64_t length = 0;  // compressed (the gzip member)
};

// One exchange: its request, response (if any) and metadata records.
struct IndexEntry {
  std::string id;    // the request's WARC-Record-ID: the exchange's id
  std::string time;  // the request's WARC-Date
  std::string user, client, host, method, target;
  std::optional<int> status;  // nullopt: no response record
  std::vector<IndexedRecord> records;
};

struct SegmentIndex {
  std::string segment;  // sealed file name (an open segment is indexed in memory only)
  std::string sha256;   // of the segment file the index was built from
  std::uint64_t size = 0;
  bool open = false;
  std::vector<IndexEntry> entries;
};

SegmentIndex build_index(std::string_view segment, std::string_view bytes);
// JSON lines: a header line, then one line per exchange.
std::string index_text(const SegmentIndex& index);
std::optional<SegmentIndex> parse_index(std::string_view text, std::string* why);

struct LoadedIndex {
  SegmentIndex index;
  bool rebuilt = false;
  std::string warning;  // e.g. the sidecar could not be written (read-only or WORM directory)
};
// DIR/SEGMENT.idx when it describes the file the manifest seals (same sha256
// and size); otherwise the index is rebuilt from the segment and written
// again. `file` is a sealed or an open name (".open": indexed, never written).
std::optional<LoadedIndex> load_index(const std::string& dir, const std::string& file, std::string* error);

// Sealed and open segment files of DIR (file names), by writer and number.
std::optional<std::vector<std::string>> segment_files(const std::string& dir, std::string* error);

// Microseconds since the epoch of an RFC 3339 time (2026-11-27T10:00:00Z,
// fractions and +01:00 offsets allowed) or a date (2026-11-27: its start, or
// with `end_of_day` the start of the next day).
std::optional<std::int64_t> parse_time(std::string_view text, bool end_of_day = false);

struct Filter {
  std::string user;                   // exact
  std::string host;                   // exact or a subdomain of it, case-insensitive
  std::optional<std::int64_t> since;  // inclusive, µs since the epoch
  std::optional<std::int64_t> until;  // exclusive
  std::optional<int> status;
  std::string text;  // in a request or response body, ASCII case-insensitive
};
// The filters the index answers alone (all but text).
bool index_matches(const IndexEntry& e, const Filter& f);
bool host_matches(std::string_view host, std::string_view wanted);

struct Hit {
  std::string file;  // segment file name (".open" for an open segment)
  IndexEntry entry;
};
struct SearchResult {
  std::vector<Hit> hits;              // by time, then id
  std::vector<std::string> warnings;  // rebuilt-but-unsaved indexes, unreadable segments
  std::uint64_t segments = 0;
};
std::optional<SearchResult> search(const std::string& dir, const Filter& f, std::string* error);

// One exchange by id: the full "<urn:uuid:...>", the bare uuid, or a unique
// prefix of it (8 characters at least).
std::optional<Hit> find_exchange(const std::string& dir, std::string_view id, std::string* error);

struct ReadRecord {
  IndexedRecord where;
  std::string compressed;  // the gzip member, byte for byte
  std::string data;        // uncompressed record
  RecordInfo info;
};
struct ReadExchange {
  std::vector<ReadRecord> records;
  // The records' problems: a digest that does not match their content, or
  // (when checked) a digest, seq or chain value that differs from the signed
  // manifest. Empty and checked: every record is the sealed one.
  std::string integrity;
  bool checked = false;  // against a signed manifest
};

// A segment's manifest whose signature verified, with its records by id:
// loaded once per segment, it checks any number of records read back.
struct SealedManifest {
  Manifest manifest;
  std::unordered_map<std::string, std::size_t> by_id;  // index into manifest.records
  // nullopt with *why (the verify finding and its reason) when not trusted.
  static std::optional<SealedManifest> load(const std::string& dir, const std::string& segment, EVP_PKEY* key,
                                            std::string* why);
  const ManifestRecord* find(const std::string& id) const;
};

// Reads the hit's records from its segment and checks each against `sealed`
// (null: only against their own digests).
std::optional<ReadExchange> read_exchange(const std::string& dir, const Hit& hit, const SealedManifest* sealed,
                                          std::string* error);

// True when a body is printable text (UTF-8 without control bytes but tab/CR/LF).
bool printable_text(std::string_view body);

}  // namespace sightline::archive
